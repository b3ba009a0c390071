"""Train every meta-learning method at one budget and judge them on new devices (benchmark and demo).

The methods (`METHODS`):

* ``tinyreptile`` — serial Reptile, one device per round, online batch-1 (`TinyReptile`);
* ``reptile`` — batched Reptile, `per_round` devices per round, ε 1 → 0;
* ``tinymetafed`` — `TinyMetaFed` (readout-reconstructed last layer, Top-P + error feedback,
  delta-q8 downlink);
* ``fedavg`` — FedAvg with the same local steps;
* ``joint`` — pooled SGD on the devices' uploaded data, same number of sample-gradients;
* ``scratch`` — a fresh head.

`train_method` runs the federated ones over the production path in-process
(`federation.inprocess_run`: real strategy, Grid, codec and device agents; bytes are exact frame
lengths); `judge` picks each method's adaptation procedure on validation devices and measures it
on test devices (`federation.fewshot`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvg

from devices.learning.adapt import AdaptConfig
from devices.learning.head import MLPHead
from devices.simulator import LearnerFactory
from devices.wire.protocol import encode_result
from federation.fewshot import Episode, curves, head_sizes, mean_ci, procedure_grid, scratch_head, select_procedure
from federation.inprocess_run import RoundRecord, inprocess_fleet, inprocess_grid, temporary_state_root, train_rounds
from federation.strategies import Reptile, TinyMetaFed, TinyReptile
from federation.strategies.reptile import TINYREPTILE_EPSILON
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import DeviceData

METHODS = ("tinyreptile", "reptile", "tinymetafed", "fedavg", "joint", "scratch")
FEDERATED = ("tinyreptile", "reptile", "tinymetafed", "fedavg")
META = ("tinyreptile", "reptile", "tinymetafed")
ADAPT_LRS = {"regression": (0.003, 0.01, 0.03, 0.1), "classification": (0.01, 0.03, 0.1, 0.3)}
ADAPT_LAMBDAS = (None, 0.3, 3.0)
TASK_SHOTS = {"sine": 10, "characters": 25, "keywords": 10, "presence": 6}
"""K of each use case's few-shot protocol (characters: 5-way 5-shot; presence: 3 shots per class)."""
RECOMMENDED = {"sine": "fedavg", "characters": "tinymetafed", "keywords": "tinyreptile", "presence": "reptile"}
"""The federated method with the best test mean in ``docs/results/fedmeta_summary.json``, per use case
(FedAvg included: on sine it beat the meta-learning methods; keywords and presence are ties within
their 95 % intervals): what `tinyfleet demo` trains over MQTT and deploys by default."""


@dataclass(frozen=True)
class Budget:
    """One training budget: `rounds` × `per_round` devices × `local_steps` batch-1 steps at `lr`.

    TinyReptile spends it as ``rounds × per_round`` rounds of one device; joint training as as many
    pooled sample-gradients.
    """

    rounds: int
    per_round: int = 8
    local_steps: int = 50
    lr: float = 0.02
    top_p: float = 0.05
    tmf_readout_lambda: float | None = None
    tmf_local_steps: int | None = None

    @property
    def sample_gradients(self) -> int:
        return self.rounds * self.per_round * self.local_steps

    def tmf_steps_and_rounds(self) -> tuple[int, int]:
        """TinyMetaFed's local steps (`tmf_local_steps`, default `local_steps`) and the rounds that keep the budget."""
        steps = self.tmf_local_steps or self.local_steps
        return steps, max(1, self.sample_gradients // (self.per_round * steps))


@dataclass
class MethodRun:
    """A trained head and what it cost (bytes: exact frame lengths of the training phase, both ways)."""

    method: str
    head: dict[str, np.ndarray]
    rounds: int
    device_steps: int
    bytes_up: int
    bytes_down: int
    failures: int = 0
    replies: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def costs(self) -> dict[str, Any]:
        """Everything but the head (plain values for reports)."""
        return {"method": self.method, "rounds": self.rounds, "device_steps": self.device_steps,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "failures": self.failures,
                "replies": self.replies, "reasons": dict(self.reasons), "seconds": round(self.seconds, 2),
                **self.extra}


def strategy_for(method: str, fleet: int, b: Budget, *, epsilon: float | None = None) -> tuple[FedAvg, int]:
    """The Flower strategy of a federated method and its number of rounds at budget `b`."""
    common: dict[str, Any] = {"min_train_nodes": 1, "min_available_nodes": 1, "fraction_evaluate": 0.0}
    batched = {"fraction_train": min(1.0, b.per_round / fleet), "min_train_nodes": min(b.per_round, fleet)}
    inner: dict[str, Any] = {"local_steps": b.local_steps, "local_lr": b.lr}
    if method == "fedavg":
        return FedAvg(**{**common, **batched}), b.rounds
    if method == "reptile":
        return Reptile(num_rounds=b.rounds, **inner, **{**common, **batched}), b.rounds
    if method == "tinyreptile":
        eps = TINYREPTILE_EPSILON if epsilon is None else epsilon
        return TinyReptile(num_rounds=b.rounds * b.per_round, epsilon=eps, **inner, **common), b.rounds * b.per_round
    if method == "tinymetafed":  # more local steps per round = fewer rounds (and bytes) for the same budget
        steps, rounds = b.tmf_steps_and_rounds()
        return TinyMetaFed(num_rounds=rounds, top_p=b.top_p, readout_lambda=b.tmf_readout_lambda,
                           **{**inner, "local_steps": steps}, **{**common, **batched}), rounds
    raise ValueError(f"not a federated method: {method!r}")


def train_method(task: str, method: str, data: list[DeviceData], initial: Mapping[str, np.ndarray], b: Budget, *,
                 models_dir: Path | None = None, seed: int = 0, epsilon: float | None = None) -> MethodRun:
    """Train one method on the fleet `data` from `initial` (``scratch``: a fresh head, no training)."""
    logging.getLogger("flwr").setLevel(logging.ERROR)  # FedAvg warns that evaluation is off, once per run
    t0 = time.perf_counter()
    if method == "scratch":
        head = dict(zip(initial, scratch_head(task, sizes=head_sizes(initial), seed=1000 + seed), strict=True))
        return MethodRun(method, head, 0, 0, 0, 0)
    if method == "joint":
        run = _joint(task, data, initial, b, models_dir, seed)
        run.seconds = time.perf_counter() - t0
        return run
    strategy, rounds = strategy_for(method, len(data), b, epsilon=epsilon)
    run = MethodRun(method, {}, rounds, 0, 0, 0, extra={"epsilon": epsilon} if method == "tinyreptile" else {})

    def on_round(rec: RoundRecord, _: object) -> None:
        run.bytes_up += rec.bytes_up
        run.bytes_down += rec.bytes_down
        run.device_steps += rec.num_examples
        run.failures += rec.failures
        run.replies += rec.replies
        for k, v in rec.reasons.items():
            run.reasons[k] = run.reasons.get(k, 0) + v

    with temporary_state_root() as tmp:
        agents = inprocess_fleet(task, data, models_dir=models_dir, seed=seed, state_root=Path(tmp))
        with inprocess_grid(agents, run_id=f"fedmeta-{task}-{method}-{seed}", local_steps=b.local_steps,
                            lr=b.lr) as grid:
            run.head = train_rounds(strategy, grid, initial, rounds, local_steps=b.local_steps, lr=b.lr, seed=seed,
                                    on_round=on_round)
    run.seconds = time.perf_counter() - t0
    return run


def _joint(task: str, data: list[DeviceData], initial: Mapping[str, np.ndarray], b: Budget, models_dir: Path | None,
           seed: int) -> MethodRun:
    """Pooled SGD on every device's samples: the budget's sample-gradients, lr annealed linearly to 0.

    The devices would have to upload their data: the bytes are the exact frames that carry each
    device's samples (inputs float32, targets) once.
    """
    uc = get_use_case(task)
    factory = LearnerFactory(uc, models_dir, seed=seed)
    feats, ys, up = [], [], 0
    for i, d in enumerate(data):
        feats.append(factory(i, d).features(d.x))
        ys.append(d.y)
        up += len(encode_result({"id": f"upload-{i}", "type": "task.train"}, device=f"dev-{i:04d}",
                                metrics={"num-examples": len(d)},
                                tensors=[("x", np.asarray(d.x, np.float32)), ("y", np.asarray(d.y))]))
    f, y = np.concatenate(feats), np.concatenate(ys)
    head = MLPHead([initial[k] for k in initial], kind=uc.kind)
    rng = np.random.default_rng([seed, 77])
    chunk, total, losses = 1000, b.sample_gradients, []
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        losses.append(float(head.sgd_steps(f, y, rng.integers(0, len(f), n), b.lr * (1.0 - start / total),
                                           clip_norm=10.0).mean()))
    return MethodRun("joint", dict(zip(initial, head.get_weights(), strict=True)), 0, total, up, 0,
                     extra={"pooled_loss": losses[:: max(1, len(losses) // 20)] + losses[-1:]})


@dataclass
class Judgement:
    """Each method's chosen procedure and its test curves (rows: episodes, columns: k = 0 … steps)."""

    kind: str
    chosen: dict[str, AdaptConfig]
    values: dict[str, np.ndarray]
    validation: dict[str, list[dict[str, Any]]]

    def at_chosen(self, method: str) -> np.ndarray:
        return self.values[method][:, self.chosen[method].steps]

    def summary(self, method: str) -> dict[str, Any]:
        mean, (lo, hi) = mean_ci(self.at_chosen(method))
        return {"mean": mean, "ci95": [lo, hi], "procedure": self.chosen[method].as_dict()}

    def best(self, among: Sequence[str] = METHODS) -> str:
        cands = [m for m in among if m in self.values]
        sign = 1.0 if self.kind == "regression" else -1.0
        return min(cands, key=lambda m: sign * float(self.at_chosen(m).mean()))


def judge(heads: Mapping[str, Mapping[str, np.ndarray]], val: Sequence[Episode], test: Sequence[Episode], *,
          kind: str, max_steps: int = 10, curve_steps: int = 32, lrs: Sequence[float] | None = None,
          lambdas: Sequence[float | None] = ADAPT_LAMBDAS, kinds: Sequence[str] = ("batch", "sample"),
          seed: int = 0) -> Judgement:
    """Choose every method's procedure on `val`, then measure it on `test` up to `curve_steps` steps."""
    grid = procedure_grid(lrs=lrs or ADAPT_LRS[kind], lambdas=lambdas, steps=max_steps, kinds=kinds)
    chosen, values, tables = {}, {}, {}
    for m, head in heads.items():
        cfg, tables[m] = select_procedure(head, val, kind=kind, grid=grid, max_steps=max_steps, seed=seed,
                                          require_readout=m == "tinymetafed")
        chosen[m] = cfg
        values[m] = curves(head, test, kind=kind, config=replace(cfg, steps=curve_steps), seed=seed).value
    return Judgement(kind, chosen, values, tables)


__all__ = ["ADAPT_LAMBDAS", "ADAPT_LRS", "FEDERATED", "META", "METHODS", "RECOMMENDED", "TASK_SHOTS", "Budget",
           "Judgement", "MethodRun", "judge", "strategy_for", "train_method"]
