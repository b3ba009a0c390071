"""Delta-coded downlink (``downlink: delta-q8``): a train task sends int8 changes to what the device holds.

Why: a dense float32 head goes down to every sampled device every round; TinyMetaFed's sparse
uplink alone leaves the downlink as most of its bytes. The server knows exactly which shared
weights each device last received (its *base*), so it sends ``q = round(d / s)`` (int8, one byte
per entry) with one float32 scale ``s = max|d| / 127`` per tensor, where ``d = θ - base``. Both
sides then compute the device's new weights with the same float32 arithmetic::

    new = base + float32(q) * s          (multiply, then add; no fused multiply-add)

so the server's record of the device's weights stays bit-exact, and the quantization error of one
round is part of the next round's ``d`` (it is never lost, only delayed). The task carries
``base-crc``, the CRC-32 of the base the server assumes (float32 little-endian bytes of the
tensors, in tensor order); a device whose base differs (restarted, missed a task) answers
``stale-base`` and the server sends it dense weights next time.

Rounding is numpy's `rint` (round half to even, IEEE default), clipped to [-127, 127].
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from devices.exceptions import SparseEncodingError

Q8_MAX = 127


def q8_encode(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """``(q, scale)``: int8 codes and the float32 scale of a finite float `delta` (scale 0 for all-zero)."""
    d = np.asarray(delta, np.float32)
    if not np.all(np.isfinite(d)):
        raise SparseEncodingError("delta contains NaN or inf")
    peak = float(np.max(np.abs(d))) if d.size else 0.0
    scale = np.float32(peak / Q8_MAX)
    if scale == 0:
        return np.zeros(d.shape, np.int8), 0.0
    q = np.clip(np.rint(d / scale), -Q8_MAX, Q8_MAX).astype(np.int8)
    return q, float(scale)


def q8_apply(base: np.ndarray, q: np.ndarray, scale: float) -> np.ndarray:
    """``base + float32(q) * scale`` in float32: the device's new weights, as the server computes them too."""
    b = np.asarray(base, np.float32)
    codes = np.asarray(q)
    if codes.shape != b.shape:
        raise SparseEncodingError(f"delta of shape {codes.shape} for a base of shape {b.shape}")
    if codes.dtype != np.int8:
        raise SparseEncodingError(f"delta codes must be int8; got {codes.dtype}")
    s = np.float32(scale)
    if not (np.isfinite(s) and s >= 0):
        raise SparseEncodingError(f"delta scale must be a finite number >= 0; got {scale!r}")
    return (b + codes.astype(np.float32) * s).astype(np.float32)


def arrays_crc32(arrays: Sequence[np.ndarray]) -> int:
    """CRC-32 of the float32 little-endian bytes of `arrays`, concatenated in order."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a, dtype="<f4").tobytes(), crc)
    return crc & 0xFFFFFFFF


__all__ = ["Q8_MAX", "arrays_crc32", "q8_apply", "q8_encode"]
