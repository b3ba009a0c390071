"""Window features for presence detection, in numpy only (devices compute them on the gateway).

Raw building sensors differ in units, drift and dropouts. A window of `WINDOW` one-minute
readings becomes a (WINDOW, 6) float32 array: the five channels scaled to roughly unit range,
gaps filled by carrying the last reading forward (then backward), and a sixth channel that says
whether the motion sensor reported at all, so that "no motion sensor" never looks like "nobody
moved".
"""

from __future__ import annotations

import numpy as np

WINDOW = 30
N_FEATURES = 6
# (offset, scale) per channel: co2 ppm, temperature °C, humidity %RH; light and motion are log-scaled
_CO2 = (600.0, 400.0)
_TEMP = (21.0, 3.0)
_RH = (35.0, 15.0)


def _fill(column: np.ndarray) -> np.ndarray:
    """Forward-fill, then backward-fill NaNs of one channel; all-NaN stays NaN."""
    col = column.astype(np.float32).copy()
    valid = ~np.isnan(col)
    if not valid.any():
        return col
    idx = np.where(valid, np.arange(len(col)), 0)
    np.maximum.accumulate(idx, out=idx)
    col = col[idx]
    first = int(np.argmax(valid))
    col[:first] = col[first]
    return col


def window_features(values: np.ndarray) -> np.ndarray:
    """(WINDOW, 5) raw readings (NaN = missing) -> (WINDOW, 6) model input."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != 5:
        raise ValueError(f"expected (window, 5) readings, got {values.shape}")
    cols = [_fill(values[:, c]) for c in range(5)]
    motion_ok = (~np.isnan(values[:, 4])).astype(np.float32)
    out = np.stack([
        (cols[0] - _CO2[0]) / _CO2[1],
        (cols[1] - _TEMP[0]) / _TEMP[1],
        (cols[2] - _RH[0]) / _RH[1],
        np.log1p(np.maximum(cols[3], 0.0)) / 3.0 - 1.0,
        np.log1p(np.maximum(cols[4], 0.0)) / 1.5,
        motion_ok,
    ], axis=1)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def windows_from_log(values: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Features of the windows ending at (inclusive) each index in `ends` -> (len(ends), WINDOW, 6)."""
    return np.stack([window_features(values[e - WINDOW + 1:e + 1]) for e in ends]) if len(ends) else \
        np.zeros((0, WINDOW, N_FEATURES), np.float32)
