"""Few-shot evaluation of new devices: how good is an initialization after k online steps on K shots?

The point of federated meta-learning is a head that a device never seen in training adapts
quickly. This harness takes held-out devices of a use case (separate seeded stream, never used in
training), gives each the candidate head, lets it take k = 0 … `max_steps` online SGD steps
(batch 1, the device learner's own code) on its first K samples, and measures loss on the rest.
Every k starts again from the candidate head, so the curve reads "quality after k steps".
It runs in-process: it evaluates initializations, it does not exercise the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devices.head import MLPHead
from devices.learner import OnlineLearner
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_BACKBONE


def _weights(head: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(head, Mapping):
        n = len(head)
        names = [f"{'w' if i % 2 == 0 else 'b'}{i // 2}" for i in range(n)]
        return [np.asarray(head[k], np.float32) for k in names]
    return [np.asarray(w, np.float32) for w in head]


def fewshot_curve(head: Mapping[str, np.ndarray] | Sequence[np.ndarray], *, task: str, shots: int = 10,
                  max_steps: int = 10, lr: float = 0.01, n_devices: int = 20, eval_samples: int = 100,
                  seed: int = 0, models_dir: Path | None = None) -> dict[str, Any]:
    """Mean (and std) held-out loss over `n_devices` new devices after k = 0 … `max_steps` steps.

    Parameters
    ----------
    head : mapping (w0, b0, ...) or sequence of arrays
        The initialization to judge (e.g. ``final.npz`` of a run).
    task : str
        Use case; its held-out split provides the devices.
    shots : int
        K: samples a new device may train on.
    max_steps : int
        Largest k.
    lr : float
        Device learning rate for adaptation.
    n_devices, eval_samples : int
        How many new devices, and how many samples each keeps for measuring.
    seed : int
        Seeds the held-out devices and their sample order.
    models_dir : Path, optional
        Built model folder with ``backbone.tflite`` (use cases that have a backbone).

    Returns
    -------
    dict
        ``steps``, ``loss_mean``, ``loss_std`` (lists over k), plus the settings.
    """
    uc = get_use_case(task)
    weights = _weights(head)
    backbone = None
    if models_dir is not None:
        d = Path(models_dir)
        d = d / task if (d / task).is_dir() else d
        if (d / ARTIFACT_BACKBONE).is_file():
            backbone = TFLiteModel.from_file(d / ARTIFACT_BACKBONE)
    devices = uc.devices("heldout", n_devices, samples_per_device=shots + eval_samples, seed=seed)
    losses = np.zeros((len(devices), max_steps + 1))
    for i, dev in enumerate(devices):
        xs, ys = dev.x[:shots], dev.y[:shots]
        xe, ye = dev.x[shots:], dev.y[shots:]
        for k in range(max_steps + 1):
            learner = OnlineLearner(MLPHead([w.copy() for w in weights], kind=uc.kind), backbone, lr=lr,
                                    seed=seed * 100003 + i)
            if k:
                learner.adapt(xs, ys, k)
            losses[i, k] = learner.evaluate(xe, ye)["loss"]
    return {"task": task, "shots": shots, "lr": lr, "n_devices": len(devices), "steps": list(range(max_steps + 1)),
            "loss_mean": [float(v) for v in losses.mean(axis=0)], "loss_std": [float(v) for v in losses.std(axis=0)]}


def scratch_head(task: str, *, sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """A fresh, seeded head of `sizes`: the from-scratch baseline every meta-learned head must beat."""
    uc = get_use_case(task)
    return MLPHead.init(list(sizes), kind=uc.kind, seed=seed).get_weights()


def head_sizes(head: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[int]:
    """Layer sizes [in, h1, ..., out] of a head."""
    ws = _weights(head)
    return [int(ws[0].shape[0])] + [int(w.shape[1]) for w in ws[0::2]]


__all__ = ["fewshot_curve", "head_sizes", "scratch_head"]
