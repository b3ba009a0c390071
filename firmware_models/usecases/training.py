"""Training helpers shared by the characters, keywords and presence use cases.

Why here: the three use cases pretrain a backbone the same way (a classifier on training devices
only, seeded and deterministic, with a progress bar) and report few-shot quality the same way.
Conversion, inspection and export live in `firmware_models.build`; this module only trains and
measures. TensorFlow is imported inside functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from firmware_models.quiet import quiet_tensorflow_env
from firmware_models.usecases.base import ProgressFn


def seed_everything(seed: int) -> Any:
    """Seed Python, numpy and TensorFlow and make TF ops deterministic; returns the keras module."""
    quiet_tensorflow_env()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()
    return keras


def fit_classifier(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                   learning_rate: float, progress: ProgressFn | None = None, stage: str = "train",
                   span: tuple[float, float] = (0.0, 1.0)) -> float:
    """Train `model` (logits out) with Adam + sparse cross-entropy; returns seconds spent.

    The learning rate decays with a cosine schedule to 5% of its start, which on these small data
    sets gives a few points of accuracy over a constant rate at no extra epochs.
    """
    import keras

    steps = int(np.ceil(len(x) / batch_size)) * int(epochs)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps), alpha=0.05)
    model.compile(keras.optimizers.Adam(schedule),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if progress is not None:
                acc = (logs or {}).get("accuracy", float("nan"))
                frac = span[0] + (span[1] - span[0]) * (epoch + 1) / epochs
                progress(f"{stage}: epoch {epoch + 1}/{epochs} acc {acc:.3f}", frac)

    t0 = time.perf_counter()
    model.fit(x, y, epochs=int(epochs), batch_size=int(batch_size), shuffle=True, verbose=0,
              callbacks=[_Progress()])
    return time.perf_counter() - t0


def keras_features(backbone: Any, x: np.ndarray) -> np.ndarray:
    """Float32 backbone features, batched."""
    return np.asarray(backbone.predict(np.asarray(x, np.float32), verbose=0, batch_size=256), np.float32)


def tflite_features(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Dequantized int8 backbone features through LiteRT (what a device computes)."""
    from firmware_models.interpreters import TFLiteModel

    return TFLiteModel.from_bytes(model_bytes, backend="litert").predict(x)


def nearest_centroid_accuracy(support: np.ndarray, support_y: np.ndarray, query: np.ndarray,
                              query_y: np.ndarray) -> float:
    """Accuracy of classifying `query` by the nearest class mean of `support` (prototypes).

    A parameter-free few-shot probe of how good the frozen features are: no head training, so the
    float-vs-int8 comparison measures the backbone alone. Features are L2-normalised first.
    """
    def norm(a: np.ndarray) -> np.ndarray:
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)

    s, q = norm(np.asarray(support, np.float64)), norm(np.asarray(query, np.float64))
    classes = np.unique(support_y)
    protos = np.stack([s[support_y == c].mean(axis=0) for c in classes])
    dist = ((q[:, None, :] - protos[None]) ** 2).sum(-1)
    return float(np.mean(classes[np.argmin(dist, axis=1)] == query_y))


def episode_accuracy(features: Callable[[np.ndarray], np.ndarray],
                     episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean and 95% interval of nearest-centroid accuracy over (support_x, support_y, query_x, query_y) episodes.

    All images go through `features` in one batch (one interpreter/Keras call, not one per episode).
    """
    if not episodes:
        raise ValueError("no episodes")
    parts = [a for sx, _, qx, _ in episodes for a in (sx, qx)]
    feats = features(np.concatenate(parts))
    bounds = np.cumsum([0] + [len(a) for a in parts])
    accs = []
    for e, (_, sy, _, qy) in enumerate(episodes):
        fs = feats[bounds[2 * e]:bounds[2 * e + 1]]
        fq = feats[bounds[2 * e + 1]:bounds[2 * e + 2]]
        accs.append(nearest_centroid_accuracy(fs, sy, fq, qy))
    a = np.asarray(accs)
    return {"accuracy": float(a.mean()), "ci95": float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0,
            "episodes": len(a)}


def glorot_head(widths: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """A fresh head [w0, b0, w1, b1, ...] with Glorot-uniform weights and zero biases."""
    rng = np.random.default_rng([seed, 3571])
    out: list[np.ndarray] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        out += [rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32), np.zeros(fan_out, np.float32)]
    return out
