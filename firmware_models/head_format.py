"""The ``head.npz`` format: the trainable head's weights as named float32 arrays ``w0, b0, w1, b1, ...``.

One definition for every side: builds write it, devices load and save it (`MLPHead.from_npz` /
`to_npz`), federated runs name their parameters the same way on the wire (``w0`` is layer 0's
``(in, out)`` kernel, ``b0`` its bias). Writes are atomic (temp file + rename), so a crash never
leaves half a head. Files written by ``np.savez(*arrays)`` (``arr_0, arr_1, ...``) are read too.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from firmware_models.exceptions import HeadFileError


def weight_names(n: int) -> list[str]:
    """Names of a head's `n` parameter arrays in order: ``w0, b0, w1, b1, ...``."""
    return [f"{'w' if i % 2 == 0 else 'b'}{i // 2}" for i in range(n)]


def read_head_npz(path: str | Path) -> list[np.ndarray]:
    """The arrays of a ``head.npz`` in ``[w0, b0, w1, b1, ...]`` order (float32); errors name the file.

    Only the container is checked here (names complete, float arrays); the layer layout is checked
    by whoever builds a head from it (`devices.learning.head.MLPHead`).
    """
    p = Path(path)
    if not p.is_file():
        raise HeadFileError(f"{p}: head file not found")
    try:
        if not zipfile.is_zipfile(p):  # np.load would call other bytes "pickled data"
            raise HeadFileError(f"{p}: not a head.npz (not a zip archive)")
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: np.array(npz[k]) for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise HeadFileError(f"{p}: not a head.npz ({exc})") from None
    n = len(arrays)
    names = weight_names(n)
    if n and all(k in arrays for k in names):
        ordered = [arrays[k] for k in names]
    elif n and all(f"arr_{i}" in arrays for i in range(n)):
        ordered = [arrays[f"arr_{i}"] for i in range(n)]
    else:
        raise HeadFileError(f"{p}: expected arrays named w0, b0, w1, b1, ...; found {sorted(arrays)}")
    for name, arr in zip(names, ordered, strict=True):
        if arr.dtype.kind != "f":
            raise HeadFileError(f"{p}: {name} must be a float array; got {arr.dtype}")
    return [a.astype(np.float32) for a in ordered]


def write_head_npz(path: str | Path, weights: Sequence[np.ndarray]) -> Path:
    """Write ``[w0, b0, w1, b1, ...]`` as float32 ``w0, b0, ...`` atomically; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    named = {k: np.asarray(w, np.float32) for k, w in zip(weight_names(len(weights)), weights, strict=True)}
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:  # np.savez on a path would append ".npz" to other names
            np.savez(fh, allow_pickle=False, **named)  # float32 only: nothing here may need a pickle
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
