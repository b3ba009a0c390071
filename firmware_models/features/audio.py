"""Log-mel spectrogram of a 1 s, 16 kHz clip, in numpy only.

Why numpy: devices run this on the gateway or port it to C (CMSIS-DSP has the same pieces: a
Hann window, a real FFT, a mel matrix, a log), so the feature definition must not hide inside a
TensorFlow graph. Training calls the very same functions, which is what makes the features a device
computes identical to the features the backbone was trained on.

Frames of 30 ms every 20 ms (the micro_speech layout): 49 frames x 40 mel bands per second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE          # one second
FRAME_LENGTH = 480                  # 30 ms
HOP_LENGTH = 320                    # 20 ms
N_FFT = 512
N_MELS = 40
F_MIN = 20.0
F_MAX = 7_600.0
LOG_FLOOR = 1e-6                    # keeps log() finite on digital silence
N_FRAMES = 1 + (CLIP_SAMPLES - FRAME_LENGTH) // HOP_LENGTH  # 49


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> np.ndarray:
    """Triangular HTK-mel filters, shape (n_fft // 2 + 1, n_mels), float32.

    Same construction as `tf.signal.linear_to_mel_weight_matrix` (triangles on the mel scale,
    peak 1, no area normalisation), so a reader can check it against TensorFlow; the DC bin is
    left out as TensorFlow does.
    """
    n_bins = n_fft // 2 + 1
    freqs = np.linspace(0.0, sample_rate / 2.0, n_bins)[1:]
    mel = _hz_to_mel(freqs)[:, None]
    edges = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (mel - lower) / (center - lower)
    down = (upper - mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    out = np.zeros((n_bins, n_mels), dtype=np.float32)
    out[1:] = weights
    out.setflags(write=False)
    return out


@lru_cache(maxsize=2)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (the one STFT implementations use)."""
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


def fit_clip(wave: np.ndarray, n: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad or centre-crop a mono waveform to exactly `n` samples (float32)."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if len(wave) >= n:
        start = (len(wave) - n) // 2
        return wave[start:start + n].copy()
    out = np.zeros(n, dtype=np.float32)
    start = (n - len(wave)) // 2
    out[start:start + len(wave)] = wave
    return out


def log_mel_batch(waves: np.ndarray) -> np.ndarray:
    """Log-mel features of clips (m, CLIP_SAMPLES) -> (m, N_FRAMES, N_MELS) float32.

    Power spectrum of Hann-windowed 30 ms frames, mel-weighted, natural log with a 1e-6 floor.
    Samples are floats in [-1, 1] (PCM16 / 32768).
    """
    waves = np.asarray(waves, dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != CLIP_SAMPLES:
        raise ValueError(f"expected clips of shape (m, {CLIP_SAMPLES}), got {waves.shape}")
    idx = np.arange(FRAME_LENGTH)[None, :] + HOP_LENGTH * np.arange(N_FRAMES)[:, None]
    frames = waves[:, idx] * _hann(FRAME_LENGTH)                      # (m, frames, 480)
    spectrum = np.fft.rfft(frames, n=N_FFT, axis=-1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
    mel = power @ mel_filterbank()
    return np.log(mel + LOG_FLOOR).astype(np.float32)


def log_mel(wave: np.ndarray) -> np.ndarray:
    """Log-mel features of one clip of any length (fitted to 1 s first): (N_FRAMES, N_MELS)."""
    return log_mel_batch(fit_clip(wave)[None])[0]
