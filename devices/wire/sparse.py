"""Top-P% selective communication (TinyMetaFed): send only the largest changes of a model update.

A device that trained its head sends ``delta = new - old`` as the ``ceil(p * size)`` entries of
largest magnitude (flat uint32 indices in ascending order + their float32 values) instead of the
dense array; the receiver rebuilds a dense array with zeros elsewhere. Devices and the federation
server both use these two functions, so the selection rule exists once.

Ties in magnitude are broken by the lower flat index, so the selection is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from devices.exceptions import SparseEncodingError

_MAX_SIZE = 2**32  # indices travel as uint32


def top_p_encode(delta: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Select the ``ceil(p * delta.size)`` largest-magnitude entries of `delta`.

    Parameters
    ----------
    delta : np.ndarray
        Any-shaped finite float array (e.g. one head layer's weight change).
    p : float
        Fraction to keep, in (0, 1]; p=1 keeps every entry (lossless).

    Returns
    -------
    indices : np.ndarray of uint32
        Flat (C-order) indices of the kept entries, ascending.
    values : np.ndarray of float32
        ``delta.flat[indices]``.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0 < float(p) <= 1:
        raise SparseEncodingError(f"top-p fraction must be a number in (0, 1]; got {p!r}")
    d = np.asarray(delta)
    if d.dtype.kind not in "fiu":
        raise SparseEncodingError(f"top-p delta must be numeric; got dtype {d.dtype}")
    if d.size == 0:
        raise SparseEncodingError("top-p delta is empty")
    if d.size >= _MAX_SIZE:
        raise SparseEncodingError(f"top-p delta has {d.size} entries; uint32 indices allow < {_MAX_SIZE}")
    flat = d.astype(np.float32, copy=False).reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise SparseEncodingError("top-p delta contains NaN or inf")
    # round first so that 0.3 * 10 = 3.0000000000000004 keeps 3 entries, not 4
    k = min(flat.size, max(1, math.ceil(round(float(p) * flat.size, 6))))
    if k == flat.size:
        idx = np.arange(flat.size, dtype=np.uint32)
    else:
        order = np.argsort(-np.abs(flat), kind="stable")  # stable: equal magnitudes -> lower index first
        idx = np.sort(order[:k]).astype(np.uint32)
    return idx, flat[idx].astype(np.float32)


def top_p_decode(indices: np.ndarray, values: np.ndarray, shape: Sequence[int] | int) -> np.ndarray:
    """Rebuild the dense float32 array of `shape` from a Top-P update (zeros where nothing was sent).

    Validates what came over the wire: integer 1-D indices, as many finite values, every index
    inside the shape and none repeated. Errors say which rule was broken.
    """
    shp = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shp):
        raise SparseEncodingError(f"sparse update shape must be non-negative; got {shp}")
    size = math.prod(shp)
    idx = np.asarray(indices)
    val = np.asarray(values)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise SparseEncodingError(f"sparse indices must be a 1-D integer array; "
                                  f"got shape {idx.shape} dtype {idx.dtype}")
    if val.ndim != 1 or (val.size and val.dtype.kind not in "fiu"):
        raise SparseEncodingError(f"sparse values must be a 1-D numeric array; got shape {val.shape} dtype {val.dtype}")
    if idx.size != val.size:
        raise SparseEncodingError(f"sparse update has {idx.size} indices but {val.size} values")
    if idx.size > size:
        raise SparseEncodingError(f"sparse update has {idx.size} entries for an array of {size}")
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise SparseEncodingError(f"sparse index {bad} is outside an array of shape {shp} ({size} entries)")
        if np.unique(idx).size != idx.size:
            uniq, counts = np.unique(idx, return_counts=True)
            raise SparseEncodingError(f"sparse index {int(uniq[counts > 1][0])} appears more than once")
    vals = val.astype(np.float32)
    if not np.all(np.isfinite(vals)):
        raise SparseEncodingError("sparse values contain NaN or inf")
    out = np.zeros(size, dtype=np.float32)
    out[idx.astype(np.int64)] = vals
    return out.reshape(shp)


def top_p_encode_all(deltas: Sequence[np.ndarray], p: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """`top_p_encode` each array (e.g. every head layer) with the same fraction."""
    return [top_p_encode(d, p) for d in deltas]


def top_p_decode_all(encoded: Sequence[tuple[np.ndarray, np.ndarray]],
                     shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Inverse of `top_p_encode_all`; the number of arrays must match the expected shapes."""
    if len(encoded) != len(shapes):
        raise SparseEncodingError(f"sparse update has {len(encoded)} arrays; expected {len(shapes)}")
    return [top_p_decode(i, v, s) for (i, v), s in zip(encoded, shapes, strict=True)]
