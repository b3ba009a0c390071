"""Band-limited resampling in numpy (espeak-ng speaks at 22,050 Hz; the models hear 16 kHz).

A windowed-sinc interpolator: every output sample is a Kaiser-windowed sinc sum over the input
samples around its position, with the cut-off at the lower Nyquist frequency so that downsampling
does not alias. Plain `np.interp` would fold 8-11 kHz energy into the keyword band.
"""

from __future__ import annotations

import numpy as np

_HALF_WIDTH = 16      # zero crossings of the sinc on each side
_KAISER_BETA = 8.6    # ~ -90 dB side lobes
_ROLLOFF = 0.94       # cut-off as a fraction of the lower Nyquist frequency


def resample(x: np.ndarray, sr_in: int, sr_out: int, *, chunk: int = 4096) -> np.ndarray:
    """Resample a mono signal from `sr_in` to `sr_out` Hz; returns float32.

    Parameters
    ----------
    x : np.ndarray
        Mono samples.
    sr_in, sr_out : int
        Sample rates in Hz (positive).
    chunk : int, default=4096
        Output samples computed per vectorised block (bounds memory).
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if sr_in == sr_out or len(x) == 0:
        return x.astype(np.float32)
    ratio = sr_out / sr_in
    cutoff = _ROLLOFF * min(1.0, ratio)              # in cycles per input sample x2 (normalised)
    half = int(np.ceil(_HALF_WIDTH / cutoff))        # kernel half-length in input samples
    n_out = int(np.floor(len(x) * ratio))
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    offsets = np.arange(-half, half + 1)
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, chunk):
        t = np.arange(start, min(n_out, start + chunk)) / ratio       # positions in input samples
        base = np.floor(t).astype(np.int64)
        taps = base[:, None] + offsets[None, :]                       # input sample indices
        d = t[:, None] - taps                                         # distance to each tap
        arg = np.clip(d / (half + 1), -1.0, 1.0)
        window = np.i0(_KAISER_BETA * np.sqrt(1.0 - arg ** 2)) / np.i0(_KAISER_BETA)
        kernel = cutoff * np.sinc(cutoff * d) * window
        out[start:start + len(t)] = np.sum(padded[taps + half] * kernel, axis=1)
    return out.astype(np.float32)
