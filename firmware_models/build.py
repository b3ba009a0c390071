"""The pipeline every use case reuses: convert -> inspect -> metrics -> export -> card.

A use case trains its Keras model (its own business: data, architecture, epochs), then hands the
float model to `export_artifacts`, which writes the artifact contract of
`firmware_models.usecases.base` into `out_dir/<name>/`:

    model.tflite            whole network, full int8 (flash/arena/MACs are measured on it)
    backbone.tflite         frozen int8 feature extractor (only when there is a backbone)
    head.npz                float32 head initialization w0, b0, w1, b1, ... (weights (in, out))
    card.json               model card (firmware_models.card)
    <name>_model_data.h/.cc C array of model.tflite for firmware

Metrics are measured through the real interpreters on held-out data: Keras for float32, LiteRT
for int8 (bit-exact with tf.lite; TFLM agrees within a few LSB and is ~20x slower).
TensorFlow is only imported by the functions that need it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.c_export import ExportError, write_c_source_pair
from firmware_models.card import head_section, make_card, sha256_file, write_card
from firmware_models.convert import to_full_int8
from firmware_models.exceptions import HeadFileError
from firmware_models.head_format import write_head_npz
from firmware_models.interpreters import TFLiteModel
from firmware_models.tflite_inspect import inspect_tflite
from firmware_models.usecases.base import (
    ARTIFACT_BACKBONE,
    ARTIFACT_BACKBONE_KERAS,
    ARTIFACT_CARD,
    ARTIFACT_HEAD,
    ARTIFACT_MODEL,
    ProgressFn,
)


def prepare_out_dir(out_dir: str | Path, name: str) -> Path:
    """Create `out_dir/<name>/` or fail with one line before any expensive training starts."""
    target = Path(out_dir) / name
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ExportError(f"{target}: exists and is not a directory") from None
    except OSError as exc:
        raise ExportError(f"{target}: cannot create output directory ({exc.strerror})") from None
    if not target.is_dir():
        raise ExportError(f"{target}: not a directory")
    return target


def head_weights_from_dense(layers: Sequence[Any]) -> list[np.ndarray]:
    """[w0, b0, w1, b1, ...] float32 from Keras Dense layers (kernel is already (in, out))."""
    out: list[np.ndarray] = []
    for layer in layers:
        kernel, bias = layer.get_weights()
        out += [np.asarray(kernel, np.float32), np.asarray(bias, np.float32)]
    return out


def save_head(path: str | Path, weights: Sequence[np.ndarray]) -> Path:
    """Check the layer layout, then write the head in the devices' ``head.npz`` format."""
    _check_head(list(weights), str(path))
    return write_head_npz(path, weights)


def _check_head(weights: list[np.ndarray], source: str) -> None:
    if not weights or len(weights) % 2:
        raise HeadFileError(f"{source}: head needs pairs of weights and biases, got {len(weights)} arrays")
    prev = None
    for i in range(0, len(weights), 2):
        w, b = np.asarray(weights[i]), np.asarray(weights[i + 1])
        if w.ndim != 2 or b.shape != (w.shape[1],) or (prev is not None and w.shape[0] != prev):
            raise HeadFileError(f"{source}: layer {i // 2} has inconsistent shapes w{w.shape} b{b.shape}")
        prev = w.shape[1]


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """MSE and MAE over all outputs."""
    err = np.asarray(pred, np.float64).reshape(len(y), -1) - np.asarray(y, np.float64).reshape(len(y), -1)
    return {"mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err)))}


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy from logits (or probabilities) and integer labels."""
    pred = np.argmax(np.asarray(logits).reshape(len(y), -1), axis=1)
    return {"accuracy": float(np.mean(pred == np.asarray(y).reshape(-1)))}


def score(pred: np.ndarray, y: np.ndarray, kind: str) -> dict[str, float]:
    """Metrics for a use-case kind ("regression" -> MSE/MAE, "classification" -> accuracy)."""
    return regression_metrics(pred, y) if kind == "regression" else classification_metrics(pred, y)


def float_vs_int8(keras_model: Any, tflite_model: bytes, x: np.ndarray, y: np.ndarray, kind: str) -> dict[str, Any]:
    """The same held-out samples through Keras (float32) and LiteRT (int8): quantization's cost."""
    pred_float = np.asarray(keras_model.predict(np.asarray(x, np.float32), verbose=0, batch_size=256))
    pred_int8 = TFLiteModel.from_bytes(tflite_model, backend="litert").predict(x)
    return {"float": score(pred_float, y, kind), "int8": score(pred_int8, y, kind), "samples": int(len(x)),
            "int8_backend": "litert"}


def export_artifacts(out_dir: str | Path, name: str, keras_model: Any, representative_x: np.ndarray, *,
                     task: str, kind: str, head_weights: Sequence[np.ndarray], provenance: dict[str, Any],
                     eval_x: np.ndarray | None = None, eval_y: np.ndarray | None = None,
                     metrics: dict[str, Any] | None = None, backbone_model: Any = None,
                     description: str = "", sensors: tuple[str, ...] = (),
                     progress: ProgressFn | None = None) -> dict[str, Any]:
    """Convert, measure and export a trained model; return its card (also written to card.json).

    Parameters
    ----------
    out_dir : str or Path
        Parent directory; artifacts go to `out_dir/<name>/` (created).
    name : str
        Artifact name (also the C identifier prefix).
    keras_model : keras.Model
        The trained float32 network, backbone + head, input = raw sample.
    representative_x : np.ndarray
        Calibration samples for int8 quantization (raw inputs).
    task, kind : str
        Use-case name and "regression"/"classification".
    head_weights : sequence of np.ndarray
        Initial head [w0, b0, w1, b1, ...] float32, what devices train online.
    provenance : dict
        Data origin for the card (generator, seeds, device counts).
    eval_x, eval_y : np.ndarray or None
        Held-out data; when given, float vs int8 metrics are measured and put in the card.
    metrics : dict or None
        Extra measured metrics merged into the card's "metrics".
    backbone_model : keras.Model or None
        Frozen feature extractor, exported as backbone.tflite and measured too.
    progress : callable or None
        `progress(stage, fraction)` for a progress bar.
    """
    def step(stage: str, frac: float) -> None:
        if progress is not None:
            progress(stage, frac)

    target = prepare_out_dir(out_dir, name)
    t0 = time.perf_counter()
    step("int8 conversion", 0.0)
    model_bytes = to_full_int8(keras_model, representative_x)
    model_path = target / ARTIFACT_MODEL
    model_path.write_bytes(model_bytes)
    backbone_report = None
    if backbone_model is not None:
        step("int8 conversion (backbone)", 0.15)
        backbone_bytes = to_full_int8(backbone_model, representative_x)
        backbone_model.save(target / ARTIFACT_BACKBONE_KERAS)
        (target / ARTIFACT_BACKBONE).write_bytes(backbone_bytes)
    t_convert = time.perf_counter() - t0
    head_path = save_head(target / ARTIFACT_HEAD, head_weights)

    step("inspect + TFLM arena", 0.3)
    t1 = time.perf_counter()
    report = inspect_tflite(model_path)
    if backbone_model is not None:
        backbone_report = inspect_tflite(target / ARTIFACT_BACKBONE)
    t_inspect = time.perf_counter() - t1

    step("float vs int8 metrics", 0.6)
    all_metrics: dict[str, Any] = {}
    if eval_x is not None and eval_y is not None:
        all_metrics.update(float_vs_int8(keras_model, model_bytes, eval_x, eval_y, kind))
    if metrics:
        all_metrics.update(metrics)

    step("C export + card", 0.85)
    write_c_source_pair(model_bytes, target, name)
    # a device buffers one raw sample: int8 when a backbone quantizes it, float32 into a bare head
    sample_bytes = int(np.prod(np.shape(representative_x)[1:])) * (1 if backbone_model is not None else 4)
    head = head_section(list(head_weights), ARTIFACT_HEAD, sha256_file(head_path), sample_bytes=sample_bytes)
    card = make_card(name=name, task=task, kind=kind, description=description, model=report,
                     model_file=ARTIFACT_MODEL, head=head, metrics=all_metrics, provenance=provenance,
                     backbone=backbone_report, backbone_file=ARTIFACT_BACKBONE if backbone_model is not None else None,
                     sensors=sensors,
                     extra={"timings_s": {"convert": round(t_convert, 3), "inspect_arena": round(t_inspect, 3)}})
    write_card(card, target / ARTIFACT_CARD)
    step("done", 1.0)
    return card
