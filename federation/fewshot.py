"""Few-shot evaluation of new devices: one protocol for every method (issue 13).

A meta-learned head is only as good as what a device that never took part in training makes
of it. The protocol:

* **Episodes.** A new device is a held-out device of the use case (its own seeded stream, never
  used in training) with K labelled shots and query samples (`UseCase.split_shots`). Validation
  episodes, on which hyper-parameters are chosen, are held-out devices that are never test
  devices (`episodes(..., first=N_test)`).
* **Adaptation = the device's procedure.** Each episode adapts a copy of the head with
  `devices.learning.adapt.adapt` — the function the agent's ``task.adapt`` runs — and the query
  loss/metric is read after the readout (k = 0) and after every step k = 1 … max_steps. The
  frozen backbone's features are computed once per episode with the device learner's own
  `OnlineLearner.features` (the backbone never changes, so this is the same computation).
* **Choosing the procedure** (`select_procedure`): per method, the (step kind, lr, readout
  lambda) and the number of steps k ≤ `max_steps` with the best mean validation metric.
* **Statistics**: means with 95 % confidence intervals over (seed, device) episodes
  (`mean_ci`), and paired differences between two methods on the same episodes (`paired_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.learning.adapt import AdaptConfig, adapt
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.wire.protocol import weight_names
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_BACKBONE

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Episode:
    """One new device: backbone features and targets of its shots and of its queries."""

    device_id: str
    shots_x: np.ndarray
    shots_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    query_raw: np.ndarray | None = None  # the raw query samples, when asked for (reference baselines)


def load_backbone(task: str, models_dir: Path | None) -> TFLiteModel | None:
    """The frozen backbone a device of `task` runs (None for a backbone-free use case or no models)."""
    if models_dir is None:
        return None
    d = Path(models_dir)
    d = d / task if (d / task).is_dir() else d
    return TFLiteModel.from_file(d / ARTIFACT_BACKBONE) if (d / ARTIFACT_BACKBONE).is_file() else None


def episodes(task: str, n: int, *, shots: int, queries: int, seed: int, first: int = 0,
             backbone: TFLiteModel | None = None, n_features: int | None = None,
             keep_raw: bool = False) -> list[Episode]:
    """Held-out devices ``first … first + n − 1`` of data seed `seed`, as few-shot episodes.

    Parameters
    ----------
    shots, queries : int
        K and the query samples per device (`UseCase.split_shots` may use a different layout).
    backbone : TFLiteModel, optional
        Features go through it with `OnlineLearner.features`; `n_features` is its output width.
    """
    uc = get_use_case(task)
    devs = uc.devices("heldout", first + n, samples_per_device=shots + queries, seed=seed)[first:]
    probe = None
    if backbone is not None:
        width = int(n_features or math.prod(backbone.output.shape[1:]))
        probe = OnlineLearner(MLPHead.init([width, 1], kind="regression", seed=0), backbone, arena_bytes=0)
    out = []
    for d in devs:
        s, q = uc.split_shots(d, shots)
        if probe is not None:
            sx, qx = probe.features(s.x), probe.features(q.x)
        else:
            sx, qx = s.x.reshape(len(s.x), -1).astype(np.float32), q.x.reshape(len(q.x), -1).astype(np.float32)
        out.append(Episode(d.device_id, sx, s.y, qx, q.y, q.x if keep_raw else None))
    return out


@dataclass
class Curves:
    """Query loss and metric per episode (rows) after k = 0 … max_steps steps (columns)."""

    config: AdaptConfig
    metric: str
    loss: np.ndarray
    value: np.ndarray
    diverged: int

    def mean(self, k: int) -> float:
        return float(self.value[:, k].mean())


def _weights(head: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(head, Mapping):
        return [np.asarray(head[k], np.float32) for k in weight_names(len(head))]
    return [np.asarray(w, np.float32) for w in head]


def curves(head: Mapping[str, np.ndarray] | Sequence[np.ndarray], eps: Sequence[Episode], *, kind: str,
           config: AdaptConfig, seed: int = 0) -> Curves:
    """Adapt a copy of `head` on every episode with `config` and read the queries after each step."""
    weights = _weights(head)
    steps = int(config.steps)
    loss = np.zeros((len(eps), steps + 1))
    value = np.zeros_like(loss)
    metric = "mse" if kind == "regression" else "accuracy"
    diverged = 0
    for i, e in enumerate(eps):
        h = MLPHead(weights, kind=kind)
        learner = OnlineLearner(h, None, lr=config.lr, seed=int(np.random.default_rng([seed, i]).integers(2**31)))

        def record(k: int, i: int = i, h: MLPHead = h, e: Episode = e) -> None:
            ev = h.evaluate(e.query_x, e.query_y)
            loss[i, k], value[i, k] = ev["loss"], ev[metric]

        diverged += adapt(learner, e.shots_x, e.shots_y, config, on_step=record).diverged
    return Curves(config, metric, loss, value, diverged)


def procedure_grid(*, lrs: Iterable[float], lambdas: Iterable[float | None], steps: int,
                   kinds: Iterable[str] = ("batch", "sample")) -> list[AdaptConfig]:
    """Every (step kind, lr, readout lambda) combination, each run for `steps` steps."""
    return [AdaptConfig(steps=steps, lr=lr, step=kind, readout_lambda=lam)  # type: ignore[arg-type]
            for kind in kinds for lr in lrs for lam in lambdas]


def select_procedure(head: Mapping[str, np.ndarray] | Sequence[np.ndarray], val: Sequence[Episode], *, kind: str,
                     grid: Sequence[AdaptConfig], max_steps: int, seed: int = 0,
                     require_readout: bool = False) -> tuple[AdaptConfig, list[dict[str, Any]]]:
    """The procedure (and its number of steps k ≤ `max_steps`) with the best mean validation metric.

    MSE is minimised, accuracy maximised (ties: fewer steps, then the grid's order). With
    `require_readout`, only procedures that re-fit the last layer qualify (TinyMetaFed: its last
    layer is never meta-learned, so a device must reconstruct it). Returns the choice and one row
    per grid point (its best k and value), for the record.
    """
    best: tuple[float, int, int] | None = None
    choice: AdaptConfig | None = None
    table = []
    for gi, cfg in enumerate(grid):
        if require_readout and cfg.readout_lambda is None:
            continue
        c = curves(head, val, kind=kind, config=replace(cfg, steps=max_steps), seed=seed)
        means = c.value.mean(axis=0)
        sign = 1.0 if c.metric == "mse" else -1.0
        k = int(np.argmin(sign * means))
        table.append({**cfg.as_dict(), "steps": k, "value": float(means[k]), "diverged": c.diverged})
        key = (sign * float(means[k]), k, gi)
        if best is None or key < best:
            best, choice = key, replace(cfg, steps=k)
    if choice is None:
        raise ValueError("no procedure in the grid qualifies")
    return choice, table


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, tuple[float, float]]:
    """Mean and normal-approximation 95 % interval (1.96 standard errors) of independent observations."""
    v = np.asarray(values, np.float64).reshape(-1)
    m = float(v.mean())
    half = Z95 * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return m, (m - half, m + half)


def paired_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, tuple[float, float]]:
    """Mean and 95 % interval of a − b over the same episodes (a paired comparison)."""
    return mean_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def scratch_head(task: str, *, sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """A fresh, seeded head of `sizes`: the from-scratch baseline every meta-learned head must beat."""
    uc = get_use_case(task)
    return MLPHead.init(list(sizes), kind=uc.kind, seed=seed).get_weights()


def head_sizes(head: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[int]:
    """Layer sizes [in, h1, ..., out] of a head."""
    ws = _weights(head)
    return [int(ws[0].shape[0])] + [int(w.shape[1]) for w in ws[0::2]]


__all__ = ["Curves", "Episode", "curves", "episodes", "head_sizes", "load_backbone", "mean_ci", "paired_ci",
           "procedure_grid", "scratch_head", "select_procedure"]
