"""The numpy audio front end: correct, TensorFlow-free, and identical for devices and training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_models.exceptions import DatasetError
from firmware_models.features import (
    CLIP_SAMPLES,
    N_FRAMES,
    N_MELS,
    SAMPLE_RATE,
    log_mel,
    log_mel_batch,
    mel_filterbank,
    read_wav,
    resample,
    write_wav,
)
from firmware_models.features.sensors import WINDOW, window_features


def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


def test_log_mel_shape_and_tone_lands_in_its_mel_band() -> None:
    feats = log_mel(0.5 * _tone(1000.0, SAMPLE_RATE))
    assert feats.shape == (N_FRAMES, N_MELS) == (49, 40)
    assert feats.dtype == np.float32
    band = int(np.argmax(mel_filterbank()[np.argmin(np.abs(np.fft.rfftfreq(512, 1 / SAMPLE_RATE) - 1000.0))]))
    assert set(np.argmax(feats, axis=1)) <= {band - 1, band, band + 1}


def test_mel_filterbank_matches_tensorflow() -> None:
    import tensorflow as tf

    ours = mel_filterbank()
    theirs = tf.signal.linear_to_mel_weight_matrix(N_MELS, 257, SAMPLE_RATE, 20.0, 7600.0).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_device_path_features_equal_training_path_bitwise() -> None:
    waves = (np.random.default_rng(0).normal(size=(5, CLIP_SAMPLES)) * 0.1).astype(np.float32)
    np.testing.assert_array_equal(log_mel_batch(waves), np.stack([log_mel(w) for w in waves]))


def test_resample_keeps_in_band_tone_and_removes_alias() -> None:
    kept = resample(_tone(1000.0, 22050), 22050, SAMPLE_RATE)
    assert len(kept) == SAMPLE_RATE
    np.testing.assert_allclose(kept[200:-200], _tone(1000.0, SAMPLE_RATE)[200:-200], atol=1e-3)
    alias = resample(_tone(9000.0, 22050), 22050, SAMPLE_RATE)   # above the 8 kHz Nyquist of 16 kHz
    assert np.max(np.abs(alias[200:-200])) < 1e-3


def test_wav_roundtrip_and_errors_name_the_file(tmp_path: Path) -> None:
    x = 0.25 * _tone(440.0, 8000, 0.1)
    write_wav(tmp_path / "a.wav", x, 8000)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000
    np.testing.assert_allclose(y, x, atol=1 / 16384)
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    with pytest.raises(DatasetError, match=r"bad\.wav: not a readable PCM wav"):
        read_wav(tmp_path / "bad.wav")
    with pytest.raises(DatasetError, match=r"missing\.wav: wav file not found"):
        read_wav(tmp_path / "missing.wav")


def test_presence_window_features_fill_gaps_and_flag_missing_motion() -> None:
    raw = np.tile(np.array([[800.0, 22.0, 40.0, 300.0, 2.0]], np.float32), (WINDOW, 1))
    raw[5:9, 0] = np.nan
    raw[:, 4] = np.nan
    feats = window_features(raw)
    assert feats.shape == (WINDOW, 6) and np.isfinite(feats).all()
    assert np.allclose(feats[:, 0], (800 - 600) / 400)          # gap carried forward
    assert (feats[:, 4] == 0).all() and (feats[:, 5] == 0).all()  # no motion sensor != "nobody moved"


def test_front_ends_and_generators_import_without_tensorflow() -> None:
    code = ("import sys; import firmware_models.features, firmware_models.features.sensors, "
            "firmware_models.datasets.speech, firmware_models.datasets.building, firmware_models.datasets.glyphs, "
            "firmware_models.usecases.characters, firmware_models.usecases.keywords, "
            "firmware_models.usecases.presence; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
