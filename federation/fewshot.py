"""Few-shot evaluation of new devices: how good is an initialization after k steps on K shots?

The point of federated meta-learning is a head that a device never seen in training adapts
quickly. This harness takes held-out devices of a use case (separate seeded stream, never used in
training), gives each the candidate head, lets it take k = 0 … `max_steps` SGD steps on its first
K samples, and measures loss on the rest. It runs in-process: it judges initializations, it does
not exercise the network.

What one "step" is matters (an issue's "10 shots, 5 SGD steps" is meaningless without it):

* ``step="batch"`` (default): one gradient step on the mean loss over all K shots — the reading
  of the MAML/Reptile sine benchmark (Finn et al. 2017; Nichol et al. 2018). The gradient is the
  mean of the head's own per-sample gradients (`MLPHead.loss_and_grads`, the one backward pass);
  a device can do the same by accumulating K sample gradients (one extra copy of the head).
* ``step="sample"``: one batch-1 online step on one shot (`OnlineLearner.train`), i.e. what a
  device does in a federated round; k such steps see only k of the K shots when k < K.

Both apply the same per-layer gradient-norm clip as the device learner (`clip_norm`), and every
baseline a benchmark compares is adapted with the same definition, `lr` and `clip_norm`.

TinyMetaFed (partial local reconstruction) never meta-learns its local layers: the server's copy
of them is the untrained initial one, and a device always re-fits its own before it uses the
shared ones. Judging such a head fairly means doing what the device does: with
``reconstruct_layers`` and ``reconstruct_steps = R``, each new device first takes R steps of the
same kind on its K shots that change only the local layers (the shared ones frozen), and only then
the k = 0 … `max_steps` adaptation steps on all layers. So a TinyMetaFed curve point k has seen
R + k steps on the shots, R of which update only the local layers (for the 1-32-32-1 sine head
the last layer: 33 of 1,153 parameters, and a backward pass through one layer); Reptile's and
FedAvg's points k have seen k steps. The benchmark reports R with the curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.wire.protocol import weight_names
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_BACKBONE

StepKind = Literal["batch", "sample"]
DEFAULT_ADAPT_LR = 0.05
"""Adaptation learning rate of a full-batch step on the shots (measured best of 0.02/0.05/0.1 on sine)."""
DEFAULT_CLIP_NORM = 10.0
"""Per-layer gradient-norm clip, the device learner's default."""
NEW_DEVICE_RECONSTRUCT_STEPS = 50
"""R for judging TinyMetaFed heads: full-batch steps a new device spends re-fitting its local layers.

A new device starts from the server's never-trained copy of them (a device in training starts from
its own previous copy, hence the strategy's much smaller per-round ``reconstruct_steps``). Measured
in-process on sine (1,000 rounds, 100 held-out devices, last layer local): held-out MSE 3.5 with
no reconstruction, 1.6 after 5 steps, 0.75 after 20, 0.50–0.53 after 50."""


def _weights(head: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(head, Mapping):
        return [np.asarray(head[k], np.float32) for k in weight_names(len(head))]
    return [np.asarray(w, np.float32) for w in head]


def batch_sgd_step(head: MLPHead, feats: np.ndarray, targets: np.ndarray, lr: float, *,
                   clip_norm: float | None = DEFAULT_CLIP_NORM, layers: set[int] | None = None) -> float:
    """One SGD step on the mean loss of a batch (the K shots); returns the mean loss before it.

    The gradient is the mean of `MLPHead.loss_and_grads` over the batch, so the head's backward
    pass stays the only one. Each layer's (dW, db) is scaled down to at most `clip_norm`, the
    same rule `MLPHead.sgd_step` applies to a single sample; without it a 5-step adaptation at
    a useful rate blows up on amplitude-5 sines now and then (measured). A step that would make
    the head non-finite leaves it unchanged.
    """
    losses = []
    total: list[np.ndarray] | None = None
    for f, t in zip(feats, targets, strict=True):
        loss, grads = head.loss_and_grads(f, t, layers=layers)
        losses.append(loss)
        total = grads if total is None else [a + g for a, g in zip(total, grads, strict=True)]
    assert total is not None, "batch_sgd_step needs at least one sample"
    n = len(losses)
    new = []
    for layer in range(head.n_layers):
        gw, gb = total[2 * layer] / n, total[2 * layer + 1] / n
        scale = float(lr)
        if clip_norm is not None:
            norm = float(np.sqrt(np.sum(gw * gw) + np.sum(gb * gb)))
            if norm > clip_norm:
                scale *= clip_norm / norm
        new += [head.weights_[2 * layer] - scale * gw, head.weights_[2 * layer + 1] - scale * gb]
    if all(np.all(np.isfinite(w)) for w in new):
        head.set_weights(new)
    return float(np.mean(losses))


def reconstruct_local(head: MLPHead, learner: OnlineLearner, shots: tuple[np.ndarray, np.ndarray], *,
                      layers: set[int], steps: int, lr: float, step: StepKind = "batch",
                      clip_norm: float | None = DEFAULT_CLIP_NORM) -> None:
    """TinyMetaFed's partial local reconstruction on a new device: `steps` steps on the shots, `layers` only.

    The shared layers stay frozen (the agent does the same before each round's training, with
    ``reconstruct-steps`` batch-1 steps); `step` is the same kind as the adaptation steps after it.
    """
    if steps <= 0 or not layers:
        return
    xs, ys = shots
    if step == "batch":
        feats = learner.features(xs)
        for _ in range(steps):
            batch_sgd_step(head, feats, ys, lr, clip_norm=clip_norm, layers=set(layers))
        return
    learner.clip_norm = clip_norm
    learner.train(xs, ys, steps, lr=lr, layers=set(layers))


def adaptation_curve(head: MLPHead, learner: OnlineLearner, shots: tuple[np.ndarray, np.ndarray],
                     evaluation: tuple[np.ndarray, np.ndarray], *, max_steps: int, lr: float,
                     step: StepKind = "batch", clip_norm: float | None = DEFAULT_CLIP_NORM,
                     reconstruct_layers: set[int] | None = None, reconstruct_steps: int = 0) -> list[dict[str, float]]:
    """Held-out metrics of one device after k = 0 … `max_steps` adaptation steps of kind `step`.

    `learner` must wrap `head` (it provides features and the batch-1 path); the head is changed.
    Batch steps are deterministic, so the curve is built incrementally; sample steps restart from
    the initial head for every k (the learner reshuffles per call), as a device would. With
    `reconstruct_layers`, `reconstruct_local` runs first and k counts the steps after it.
    """
    xs, ys = shots
    xe, ye = evaluation
    reconstruct_local(head, learner, shots, layers=set(reconstruct_layers or ()), steps=reconstruct_steps, lr=lr,
                      step=step, clip_norm=clip_norm)
    start = head.get_weights()
    out = [learner.evaluate(xe, ye)]
    if step == "batch":
        feats = learner.features(xs)
        for _ in range(max_steps):
            batch_sgd_step(head, feats, ys, lr, clip_norm=clip_norm)
            out.append(learner.evaluate(xe, ye))
        return out
    seed_state = learner.rng.bit_generator.state
    for k in range(1, max_steps + 1):
        head.set_weights(start)
        learner.rng.bit_generator.state = seed_state
        learner.clip_norm = clip_norm
        learner.train(xs, ys, k, lr=lr)
        out.append(learner.evaluate(xe, ye))
    return out


def fewshot_curve(head: Mapping[str, np.ndarray] | Sequence[np.ndarray], *, task: str, shots: int = 10,
                  max_steps: int = 10, lr: float = DEFAULT_ADAPT_LR, n_devices: int = 20, eval_samples: int = 100,
                  seed: int = 0, models_dir: Path | None = None, step: StepKind = "batch",
                  clip_norm: float | None = DEFAULT_CLIP_NORM, reconstruct_layers: Sequence[int] | None = None,
                  reconstruct_steps: int = 0) -> dict[str, Any]:
    """Mean (and std) held-out loss over `n_devices` new devices after k = 0 … `max_steps` steps.

    Parameters
    ----------
    head : mapping (w0, b0, ...) or sequence of arrays
        The initialization to judge (e.g. ``final.npz`` of a run).
    task : str
        Use case; its held-out split provides the devices.
    shots : int, default=10
        K: samples a new device may train on.
    max_steps : int, default=10
        Largest k.
    lr : float, default=DEFAULT_ADAPT_LR
        Adaptation learning rate.
    n_devices, eval_samples : int
        How many new devices, and how many samples each keeps for measuring.
    seed : int, default=0
        Seeds the held-out devices and their sample order.
    models_dir : Path, optional
        Built model folder with ``backbone.tflite`` (use cases that have a backbone).
    step : {"batch", "sample"}, default="batch"
        What one adaptation step is (see the module docstring).
    clip_norm : float or None, default=DEFAULT_CLIP_NORM
        Per-layer gradient-norm clip during adaptation.
    reconstruct_layers : sequence of int, optional
        TinyMetaFed's local layers (negative counts from the end); each new device first re-fits
        them on its shots for `reconstruct_steps` steps (see the module docstring).
    reconstruct_steps : int, default=0
        R, the reconstruction steps before the adaptation curve starts.

    Returns
    -------
    dict
        ``steps``, ``loss_mean``, ``loss_std`` (lists over k), ``metric_mean`` (MSE or accuracy),
        ``per_device_final`` (loss after `max_steps` per device), plus the settings.
    """
    if step not in ("batch", "sample"):
        raise ValueError(f"step must be 'batch' or 'sample'; got {step!r}")
    if isinstance(reconstruct_steps, bool) or not isinstance(reconstruct_steps, int) or reconstruct_steps < 0:
        raise ValueError(f"reconstruct_steps must be an integer >= 0; got {reconstruct_steps!r}")
    uc = get_use_case(task)
    weights = _weights(head)
    n_layers = len(weights) // 2
    local = {int(i) % n_layers for i in (reconstruct_layers or ()) if -n_layers <= int(i) < n_layers}
    if len(local) != len(set(reconstruct_layers or ())) or (local and len(local) >= n_layers):
        raise ValueError(f"reconstruct_layers must name distinct layers of the {n_layers}-layer head and leave one "
                         f"shared; got {reconstruct_layers!r}")
    backbone = None
    if models_dir is not None:
        d = Path(models_dir)
        d = d / task if (d / task).is_dir() else d
        if (d / ARTIFACT_BACKBONE).is_file():
            backbone = TFLiteModel.from_file(d / ARTIFACT_BACKBONE)
    devices = uc.devices("heldout", n_devices, samples_per_device=shots + eval_samples, seed=seed)
    metric = "mse" if uc.kind == "regression" else "accuracy"
    losses = np.zeros((len(devices), max_steps + 1))
    metrics = np.zeros_like(losses)
    for i, dev in enumerate(devices):
        h = MLPHead([w.copy() for w in weights], kind=uc.kind)
        learner = OnlineLearner(h, backbone, lr=lr, seed=seed * 100003 + i, clip_norm=clip_norm)
        curve = adaptation_curve(h, learner, (dev.x[:shots], dev.y[:shots]), (dev.x[shots:], dev.y[shots:]),
                                 max_steps=max_steps, lr=lr, step=step, clip_norm=clip_norm,
                                 reconstruct_layers=local, reconstruct_steps=reconstruct_steps)
        losses[i] = [c["loss"] for c in curve]
        metrics[i] = [c[metric] for c in curve]
    return {"task": task, "shots": shots, "lr": lr, "step": step, "clip_norm": clip_norm, "n_devices": len(devices),
            "reconstruct_layers": sorted(local), "reconstruct_steps": reconstruct_steps if local else 0,
            "metric": metric, "steps": list(range(max_steps + 1)),
            "loss_mean": [float(v) for v in losses.mean(axis=0)], "loss_std": [float(v) for v in losses.std(axis=0)],
            "metric_mean": [float(v) for v in metrics.mean(axis=0)],
            "per_device_final": [float(v) for v in losses[:, -1]]}


def scratch_head(task: str, *, sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """A fresh, seeded head of `sizes`: the from-scratch baseline every meta-learned head must beat."""
    uc = get_use_case(task)
    return MLPHead.init(list(sizes), kind=uc.kind, seed=seed).get_weights()


def head_sizes(head: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[int]:
    """Layer sizes [in, h1, ..., out] of a head."""
    ws = _weights(head)
    return [int(ws[0].shape[0])] + [int(w.shape[1]) for w in ws[0::2]]


__all__ = ["DEFAULT_ADAPT_LR", "NEW_DEVICE_RECONSTRUCT_STEPS", "adaptation_curve", "batch_sgd_step", "fewshot_curve",
           "head_sizes", "reconstruct_local", "scratch_head"]
