"""A federated head fused with the float backbone becomes one int8 model that predicts like float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_models.exceptions import ModelFileError
from firmware_models.head_export import fused_model_int8
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases.base import ARTIFACT_BACKBONE, ARTIFACT_BACKBONE_KERAS


def _head(rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    ws: list[np.ndarray] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        ws += [rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32), rng.normal(0, 0.1, b).astype(np.float32)]
    return ws


def _float_head(ws: list[np.ndarray], f: np.ndarray) -> np.ndarray:
    for i in range(0, len(ws), 2):
        f = f @ ws[i] + ws[i + 1]
        if i < len(ws) - 2:
            f = np.maximum(f, 0)
    return f


def test_backbone_plus_head_int8_tracks_float(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    backbone = keras.Sequential([keras.Input((6, 3)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu")])
    backbone.save(tmp_path / ARTIFACT_BACKBONE_KERAS)
    (tmp_path / ARTIFACT_BACKBONE).write_bytes(b"placeholder: only its presence marks a backbone use case")
    head = _head(rng, [8, 5, 2])
    x = rng.normal(size=(300, 6, 3)).astype(np.float32)

    model = TFLiteModel.from_bytes(fused_model_int8(tmp_path, head, x))

    assert model.input.dtype == np.int8 and model.input.shape == (1, 6, 3)
    want = _float_head(head, np.asarray(backbone.predict(x[:50], verbose=0)))
    got = model.predict(x[:50])
    span = float(want.max() - want.min())
    assert np.max(np.abs(got - want)) < 0.08 * span  # int8 error is a few quantization steps of the output
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_bare_head_is_the_whole_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    head = _head(rng, [1, 16, 1])
    x = rng.uniform(-5, 5, (200, 1)).astype(np.float32)
    model = TFLiteModel.from_bytes(fused_model_int8(tmp_path, head, x))
    want = _float_head(head, x[:50])
    assert np.max(np.abs(model.predict(x[:50]) - want)) < 0.05 * float(want.max() - want.min())


def test_backbone_tflite_without_keras_copy_is_reported(tmp_path: Path) -> None:
    (tmp_path / ARTIFACT_BACKBONE).write_bytes(b"x")
    with pytest.raises(ModelFileError, match="no backbone.keras"):
        fused_model_int8(tmp_path, _head(np.random.default_rng(0), [4, 2]), np.zeros((4, 4), np.float32))
