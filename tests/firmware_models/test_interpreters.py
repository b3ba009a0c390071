"""LiteRT and TFLite Micro agree on int8 outputs (the parity test TFLM's own runtime_test.py has)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_models.interpreters import TensorInfo, TFLiteModel

MAX_LSB = 3


def _parity(path: Path, n: int = 50) -> int:
    litert = TFLiteModel.from_file(path, backend="litert")
    tflm = TFLiteModel.from_file(path, backend="tflm")
    assert litert.input == tflm.input and litert.output == tflm.output
    rng = np.random.default_rng(123)
    worst = 0
    for _ in range(n):
        q = rng.integers(-128, 128, size=litert.input.shape, dtype=np.int8)
        a, b = litert.invoke(q), tflm.invoke(q)
        assert a.dtype == b.dtype == np.int8 and a.shape == b.shape == litert.output.shape
        worst = max(worst, int(np.max(np.abs(a.astype(np.int32) - b.astype(np.int32)))))
    return worst


def test_litert_and_tflm_agree_on_sine(sine_build) -> None:  # noqa: ANN001
    assert _parity(sine_build.directory / "model.tflite") <= MAX_LSB


def test_litert_and_tflm_agree_on_tiny_cnn(tiny_cnn_tflite: Path) -> None:
    assert _parity(tiny_cnn_tflite) <= MAX_LSB


def test_quantize_rounds_half_away_from_zero_like_tflite() -> None:
    t = TensorInfo((1, 1), np.dtype(np.int8), 1.0, 0)
    assert t.quantize(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 300.0])).tolist() == [1, 2, 3, -1, -3, 127]
    assert t.dequantize(np.array([3], np.int8)).tolist() == [3.0]


def test_predict_matches_float_reference_within_quantization_error(sine_build) -> None:  # noqa: ANN001
    model = TFLiteModel.from_file(sine_build.directory / "model.tflite")
    x = np.linspace(-5, 5, 11, dtype=np.float32)[:, None]
    y = model.predict(x)
    assert y.shape == (11, 1) and y.dtype == np.float32
    # Only a real trained network tracks the mean function 2.55*(2/pi)*cos(x) this closely.
    target = 2.55 * 2 / np.pi * np.cos(x)
    assert float(np.mean((y - target) ** 2)) < 0.5


def test_missing_file_is_named() -> None:
    from firmware_models.exceptions import ModelFileError

    with pytest.raises(ModelFileError, match="nope.tflite: model file not found"):
        TFLiteModel.from_file("nope.tflite")
