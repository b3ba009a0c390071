"""The on-device online learner (TinyOL): frozen int8 backbone -> dequantized features -> float head.

The backbone runs through `firmware_models.interpreters.TFLiteModel` (LiteRT, else tflite-runtime,
else TFLite Micro) and never changes; only the float head (`devices.learning.head.MLPHead`) learns, one
sample at a time, as a microcontroller with a few KB of RAM would. Three ways to learn:

* `train(x, y, steps)`: k SGD steps over the device's local data (a federated round);
* `adapt(x_shots, y_shots, steps)`: few-shot fine-tuning of a new device from a meta-learned head;
* `stream(samples)`: prequential (predict, then train) learning on an endless stream, the way a
  device follows a drifting world (see `devices.learning.drift`).

No TensorFlow, Keras or Flower here: this runs on a gateway with numpy and a TFLite interpreter.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from devices.exceptions import HeadWeightsError, LearnerInputError
from devices.learning.fit import FLOAT_BYTES, MemoryReport, account, check_fits, measure_backbone_arena, sample_nbytes
from devices.learning.head import MLPHead
from devices.wire.keys import MetricKey
from firmware_models.exceptions import ModelFileError
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases.base import ARTIFACT_BACKBONE, ARTIFACT_CARD, ARTIFACT_HEAD

_CACHE_ENTRIES = 8  # feature arrays kept per learner (local train set, eval set, shots, ...)


def _arena_from_card(card_path: Path) -> int | None:
    """The backbone's TFLM arena stated by ``card.json`` (None when the card does not say).

    Accepted, most specific first: ``card["backbone"]["arena_bytes"]``, ``card["backbone_arena_bytes"]``.
    A top-level ``arena_bytes`` describes ``model.tflite`` (backbone + int8 head), not the backbone,
    so it is not used.
    """
    if not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{card_path}: not a readable JSON model card ({exc})") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{card_path}: a model card must be a JSON object")
    backbone = card.get("backbone")
    for value in ((backbone or {}).get("arena_bytes") if isinstance(backbone, dict) else None,
                  card.get("backbone_arena_bytes")):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelFileError(f"{card_path}: backbone arena_bytes must be a non-negative integer; got {value!r}")
            return value
    return None


class OnlineLearner:
    """Frozen int8 backbone + float head trained with batch size 1.

    Parameters
    ----------
    head : MLPHead
        The trainable head; the learner updates it in place.
    backbone : TFLiteModel, optional
        Frozen int8 feature extractor; None means the raw input is the head's input (sine).
    lr : float, default=0.01
        Default SGD learning rate.
    seed : int, default=0
        Seeds the order in which `train` visits local samples.
    arena_bytes : int, optional
        The backbone's TFLM arena if known (``card.json``); otherwise `memory_report` measures it.
    clip_norm : float or None, default=10.0
        Per-layer gradient-norm clip passed to `MLPHead.sgd_step`: batch-1 SGD on sine targets of
        amplitude 1 or 5 diverged in 2 of 3 seeds at lr=0.02 without it, never with a clip of 5 or 20.

    Attributes
    ----------
    samples_seen_ : int
        SGD steps taken so far (all modes), for telemetry.
    last_loss_ : float or None
        Loss of the most recent step.
    """

    def __init__(self, head: MLPHead, backbone: TFLiteModel | None = None, *, lr: float = 0.01, seed: int = 0,
                 arena_bytes: int | None = None, clip_norm: float | None = 10.0) -> None:
        self.head = head
        self.backbone = backbone
        self.lr = self._check_lr(lr)
        self.rng = np.random.default_rng(seed)
        self.clip_norm = clip_norm
        self._arena = 0 if backbone is None else arena_bytes
        self._cache: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self.samples_seen_ = 0
        self.last_loss_: float | None = None
        if backbone is not None:
            n_feat = math.prod(backbone.output.shape[1:])
            if n_feat != head.layer_sizes[0]:
                raise HeadWeightsError(f"head takes {head.layer_sizes[0]} inputs but the backbone "
                                       f"({backbone.source}) outputs {n_feat} features")

    @classmethod
    def from_artifacts(cls, model_dir: Path, *, kind: str, lr: float = 0.01, seed: int = 0) -> OnlineLearner:
        """Load ``backbone.tflite`` (optional), ``head.npz`` and the arena from ``card.json`` of a model folder."""
        d = Path(model_dir)
        if not d.is_dir():
            raise ModelFileError(f"{d}: model folder not found")
        head = MLPHead.from_npz(d / ARTIFACT_HEAD, kind=kind)
        backbone_path = d / ARTIFACT_BACKBONE
        backbone = TFLiteModel.from_file(backbone_path) if backbone_path.is_file() else None
        arena = _arena_from_card(d / ARTIFACT_CARD) if backbone is not None else 0
        return cls(head, backbone, lr=lr, seed=seed, arena_bytes=arena)

    @staticmethod
    def _check_lr(lr: float | None) -> float:
        if lr is None or isinstance(lr, bool) or not (np.isfinite(lr) and lr > 0):
            raise LearnerInputError(f"learning rate must be a positive number; got {lr!r}")
        return float(lr)

    # ------------------------------------------------------------------------------ features
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one raw sample (no batch axis)."""
        if self.backbone is None:
            return (self.head.layer_sizes[0],)
        return tuple(self.backbone.input.shape[1:])

    def features(self, x: np.ndarray) -> np.ndarray:
        """Raw samples (n, *input_shape) -> head inputs (n, n_features), float32.

        With a backbone: quantize to int8, run the interpreter, dequantize, flatten. Without:
        flatten. The backbone is frozen, so features of the same array are cached (by content
        hash): a federated round re-uses the local data's features instead of re-running it.
        """
        arr = np.asarray(x, dtype=np.float32)
        shape = self.input_shape
        if arr.ndim == 1 and shape == (1,):
            arr = arr[:, None]
        if arr.ndim < 1 or arr.size != len(arr) * math.prod(shape):
            raise LearnerInputError(f"samples must have shape (n, {', '.join(map(str, shape))}); got {np.shape(x)}")
        arr = arr.reshape((len(arr), *shape))
        if not np.all(np.isfinite(arr)):
            raise LearnerInputError("samples contain NaN or inf")
        if self.backbone is None:
            return arr.reshape(len(arr), -1)
        key = (arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).digest())
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        feats = self.backbone.predict(arr).reshape(len(arr), -1).astype(np.float32)
        if len(arr) > 1:
            self._cache[key] = feats
            if len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return feats

    def _pairs(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = self.features(x)
        y_arr = np.asarray(y)
        if len(y_arr) != len(feats):
            raise LearnerInputError(f"{len(feats)} samples but {len(y_arr)} targets")
        if len(feats) == 0:
            raise LearnerInputError("no samples")
        self.head._targets(y_arr, len(feats))  # validate once, with a clear message, before any step
        return feats, y_arr

    # ------------------------------------------------------------------------------ learning
    def train(self, x: np.ndarray, y: np.ndarray, steps: int, *, lr: float | None = None,
              layers: set[int] | None = None, proximal_mu: float = 0.0) -> dict[str, float]:
        """`steps` SGD steps of one sample each, visiting the local data in shuffled passes.

        Returns the wire protocol's train metrics (`devices.wire.keys.MetricKey`, one vocabulary for
        the learner, every device and the server): ``{"train-loss": mean prequential loss over the
        steps, "num-examples": steps, "train-loss-last": mean over the last pass (min(steps, n)
        steps), "train-seconds": wall time}``. `layers` restricts the update to those head layers
        (0-based); None trains all.
        `proximal_mu` > 0 adds FedProx's proximal term μ/2·‖w − w_start‖² to every step's loss,
        where w_start is the head at the start of this call (the round's global model); the
        reported losses stay the data loss, as in Flower's FedProx clients.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise LearnerInputError(f"steps must be a positive integer; got {steps!r}")
        rate = self._check_lr(self.lr if lr is None else lr)
        feats, y_arr = self._pairs(x, y)
        t0 = time.perf_counter()
        order = np.concatenate([self.rng.permutation(len(feats)) for _ in range(-(-int(steps) // len(feats)))])
        # one call for all steps: inputs validated and finiteness checked once (a diverged call
        # leaves the head as it was before it), not per step, which is what makes 50,000 steps cheap
        losses = self.head.sgd_steps(feats, y_arr, order[:int(steps)], rate, trainable=layers,
                                     clip_norm=self.clip_norm, proximal_mu=proximal_mu)
        self.samples_seen_ += int(steps)
        self.last_loss_ = float(losses[-1])
        tail = losses[-min(len(feats), int(steps)):]
        return {MetricKey.TRAIN_LOSS: float(losses.mean()), MetricKey.NUM_EXAMPLES: int(steps),
                MetricKey.TRAIN_LOSS_LAST: float(tail.mean()), MetricKey.TRAIN_SECONDS: time.perf_counter() - t0}

    def adapt(self, x_shots: np.ndarray, y_shots: np.ndarray, steps: int, *, lr: float | None = None,
              layers: set[int] | None = None) -> dict[str, float]:
        """Few-shot fine-tuning of a new device: `train` on the shots, reporting their loss before and after.

        Returns `train`'s metrics with ``num-examples`` = the number of shots, plus ``shots``,
        ``loss-before`` and ``loss-after`` (mean loss on the shots).
        """
        before = self.evaluate(x_shots, y_shots)[MetricKey.LOSS]
        out = self.train(x_shots, y_shots, steps, lr=lr, layers=layers)
        after = self.evaluate(x_shots, y_shots)[MetricKey.LOSS]
        shots = int(len(np.asarray(y_shots)))
        out.update({MetricKey.NUM_EXAMPLES: shots, MetricKey.SHOTS: shots, MetricKey.LOSS_BEFORE: before,
                    MetricKey.LOSS_AFTER: after})
        return out

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``{"loss", "mse" or "accuracy", "num-examples"}`` on the given samples (no update)."""
        feats, y_arr = self._pairs(x, y)
        out: dict[str, float] = dict(self.head.evaluate(feats, y_arr))
        out[MetricKey.NUM_EXAMPLES] = int(len(feats))
        return out

    def stream(self, samples: Iterable[tuple[np.ndarray, Any]], *, lr: float | None = None,
               layers: set[int] | None = None) -> Iterator[float]:
        """Prequential learning: for each (x, y), predict and score it, then train on it; yields the loss.

        `x` is one raw sample (no batch axis). The yielded loss is measured before the sample is
        learnt, so it is an honest estimate of the error on unseen data, which is how drift shows.
        """
        rate = self._check_lr(self.lr if lr is None else lr)
        for x, y in samples:
            feat = self.features(np.asarray(x, dtype=np.float32)[None])[0]
            loss = self.head.sgd_step(feat, y, rate, trainable=layers, clip_norm=self.clip_norm)
            self.samples_seen_ += 1
            self.last_loss_ = loss
            yield loss

    # -------------------------------------------------------------------------------- memory
    def arena_bytes(self) -> int:
        """Backbone TFLM arena: from the card, or measured once with TFLite Micro (seconds)."""
        if self._arena is None:
            assert self.backbone is not None
            self._arena = measure_backbone_arena(self.backbone.model_bytes)
        return self._arena

    def memory(self, buffer_samples: int = 1, *, layers: set[int] | None = None) -> MemoryReport:
        """The full `MemoryReport` (RAM and flash parts); see `devices.learning.fit` for the formulas."""
        if self.backbone is None:
            sample = sample_nbytes(self.input_shape, FLOAT_BYTES)
            flash_backbone = 0
        else:
            sample = sample_nbytes(self.input_shape, self.backbone.input.dtype.itemsize)
            flash_backbone = len(self.backbone.model_bytes)
        return account(layer_sizes=self.head.layer_sizes, gradient_floats=self.head.error_floats(layers),
                       arena=self.arena_bytes(), backbone_bytes=flash_backbone, sample_bytes=sample,
                       buffer_samples=buffer_samples)

    def memory_report(self, buffer_samples: int = 1, *, layers: set[int] | None = None) -> dict[str, int]:
        """Bytes: ``arena, head_weights, gradients, activations, buffer, total`` (RAM) and ``flash``.

        ``total = arena + head_weights + gradients + activations + buffer``;
        ``flash = backbone .tflite bytes + 4 * head params`` (see `devices.learning.fit`).
        """
        return self.memory(buffer_samples, layers=layers).as_dict()

    def check_fits(self, ram_bytes: int, flash_bytes: int, *, buffer_samples: int = 1,
                   layers: set[int] | None = None) -> None:
        """Raise `ModelDoesNotFitError` if this learner needs more RAM or flash than the device declares."""
        what = f"model ({self.backbone.source})" if self.backbone is not None else "model"
        check_fits(self.memory(buffer_samples, layers=layers), ram_bytes=ram_bytes, flash_bytes=flash_bytes,
                   what=what)
