"""Read and write PCM WAV files with the standard library (Speech Commands clips, espeak output).

Errors are `DatasetError`s that name the file, because a user pointing tinyfleet at a folder of
recordings must learn which file is broken, not see a traceback from `wave`.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from firmware_models.exceptions import DatasetError

_DTYPES = {1: np.uint8, 2: np.int16, 4: np.int32}


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a PCM WAV file.

    Multi-channel files are averaged to mono. 8-, 16- and 32-bit integer PCM are accepted.
    """
    p = Path(path)
    try:
        with wave.open(str(p), "rb") as w:
            width, channels, rate, n = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise DatasetError(f"{p}: wav file not found") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise DatasetError(f"{p}: not a readable PCM wav file ({exc})") from None
    if width not in _DTYPES:
        raise DatasetError(f"{p}: unsupported sample width {8 * width} bits (use 8/16/32-bit PCM)")
    data = np.frombuffer(raw, dtype=_DTYPES[width])
    if len(data) % channels:
        raise DatasetError(f"{p}: truncated wav data")
    x = data.reshape(-1, channels).astype(np.float32)
    if width == 1:
        x = (x - 128.0) / 128.0
    else:
        x /= float(2 ** (8 * width - 1))
    return x.mean(axis=1), int(rate)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM (clipped)."""
    q = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(q.tobytes())
