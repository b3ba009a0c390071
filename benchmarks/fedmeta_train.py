"""One training run of `benchmarks.fedmeta`: a method, a seed, a use case → the head and what it cost.

Runs in a worker process (`train_run` takes and returns plain, picklable values). The federated
methods run in-process over the production path (`federation.inprocess_run`: Flower strategy,
`FleetGrid`, `ProtocolCodec`, `DeviceAgent`), so bytes are exact frame lengths and device work is
the agents' own `devices.train_task`. ``joint`` is pooled SGD on the uploaded training data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvg

from devices.learning.head import MLPHead
from devices.simulator import LearnerFactory
from devices.wire.protocol import encode_result
from federation.inprocess_run import RoundRecord, inprocess_fleet, inprocess_grid, temporary_state_root, train_rounds
from federation.session import initial_parameters
from federation.strategies import Reptile, TinyMetaFed, TinyReptile
from federation.strategies.reptile import TINYREPTILE_EPSILON
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import DeviceData

METHODS = ("tinyreptile", "reptile", "tinymetafed", "fedavg", "joint", "scratch")
FEDERATED = ("tinyreptile", "reptile", "tinymetafed", "fedavg")


@dataclass(frozen=True)
class TaskProtocol:
    """The experiment's settings for one use case (recorded with the results)."""

    task: str
    shots: int
    queries: int
    fleet: int
    rounds: int
    per_round: int = 8
    local_steps: int = 50
    lr: float = 0.02
    samples_per_device: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    test_devices: int = 100
    val_devices: int = 50
    vary_data: bool = True
    max_adapt_steps: int = 10
    curve_steps: int = 32
    top_p: float = 0.05
    tmf_readout_lambda: float = 1.0

    @property
    def budget(self) -> int:
        """Device sample-gradients every federated method spends (and joint training on the server)."""
        return self.rounds * self.per_round * self.local_steps


@dataclass(frozen=True)
class RunSpec:
    """One training run: the protocol, a method, a seed, the models folder, an optional ε0 override."""

    protocol: TaskProtocol
    method: str
    seed: int
    models_dir: str | None = None
    epsilon: float | None = None


_DATA: dict[tuple[Any, ...], list[DeviceData]] = {}


def training_devices(p: TaskProtocol, seed: int) -> list[DeviceData]:
    """The training fleet's data (memoized per process: generating rooms, glyphs or speech costs seconds)."""
    key = (p.task, p.fleet, p.samples_per_device, seed if p.vary_data else 0)
    if key not in _DATA:
        _DATA[key] = get_use_case(p.task).devices("train", p.fleet, samples_per_device=p.samples_per_device,
                                                  seed=key[-1])
    return _DATA[key]


def strategy_for(spec: RunSpec) -> tuple[FedAvg, int]:
    """The Flower strategy of a federated method and its number of rounds."""
    p = spec.protocol
    common: dict[str, Any] = {"min_train_nodes": 1, "min_available_nodes": 1, "fraction_evaluate": 0.0}
    batched = {"fraction_train": p.per_round / p.fleet, "min_train_nodes": p.per_round}
    inner = {"local_steps": p.local_steps, "local_lr": p.lr}
    if spec.method == "fedavg":
        return FedAvg(**{**common, **batched}), p.rounds
    if spec.method == "reptile":
        return Reptile(num_rounds=p.rounds, **inner, **{**common, **batched}), p.rounds
    if spec.method == "tinyreptile":
        eps = TINYREPTILE_EPSILON if spec.epsilon is None else spec.epsilon
        return TinyReptile(num_rounds=p.rounds * p.per_round, epsilon=eps, **inner, **common), p.rounds * p.per_round
    if spec.method == "tinymetafed":
        return TinyMetaFed(num_rounds=p.rounds, top_p=p.top_p, readout_lambda=p.tmf_readout_lambda, **inner,
                           **{**common, **batched}), p.rounds
    raise ValueError(f"not a federated method: {spec.method!r}")


def train_run(spec: RunSpec) -> dict[str, Any]:
    """Train one (method, seed); returns the final head and the run's costs."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    t0, c0 = time.perf_counter(), time.process_time()
    p = spec.protocol
    models = Path(spec.models_dir) if spec.models_dir else None
    data = training_devices(p, spec.seed)
    initial = initial_parameters(p.task, models_dir=models, seed=spec.seed)
    out: dict[str, Any] = {"method": spec.method, "seed": spec.seed, "epsilon": spec.epsilon}
    if spec.method == "joint":
        out.update(_joint(p, data, initial, models, spec.seed))
    else:
        strategy, rounds = strategy_for(spec)
        tot = {"bytes_up": 0, "bytes_down": 0, "device_steps": 0, "failures": 0, "replies": 0}
        reasons: dict[str, int] = {}

        def on_round(rec: RoundRecord, _: Any) -> None:
            tot["bytes_up"] += rec.bytes_up
            tot["bytes_down"] += rec.bytes_down
            tot["device_steps"] += rec.num_examples
            tot["failures"] += rec.failures
            tot["replies"] += rec.replies
            for k, v in rec.reasons.items():
                reasons[k] = reasons.get(k, 0) + v

        with temporary_state_root() as tmp:
            agents = inprocess_fleet(p.task, data, models_dir=models, seed=spec.seed, state_root=Path(tmp))
            with inprocess_grid(agents, run_id=f"fedmeta-{p.task}-{spec.method}-{spec.seed}", local_steps=p.local_steps,
                                lr=p.lr) as grid:
                head = train_rounds(strategy, grid, initial, rounds, local_steps=p.local_steps, lr=p.lr,
                                    seed=spec.seed, on_round=on_round)
        out.update({"head": head, "rounds": rounds, **tot, "reasons": reasons})
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["cpu_seconds"] = round(time.process_time() - c0, 2)
    return out


def _joint(p: TaskProtocol, data: list[DeviceData], initial: dict[str, np.ndarray], models: Path | None,
           seed: int) -> dict[str, Any]:
    """Pooled SGD on every training device's samples: the budget's sample-gradients, lr annealed linearly to 0.

    The devices would have to upload their data: the bytes are the exact frames that carry each
    device's samples (inputs float32, targets) once.
    """
    uc = get_use_case(p.task)
    factory = LearnerFactory(uc, models, seed=seed)
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
    chunk = 1000
    losses = []
    for start in range(0, p.budget, chunk):
        n = min(chunk, p.budget - start)
        lr = p.lr * (1.0 - start / p.budget)
        losses.append(float(head.sgd_steps(f, y, rng.integers(0, len(f), n), lr, clip_norm=10.0).mean()))
    names = list(initial)
    return {"head": dict(zip(names, head.get_weights(), strict=True)), "rounds": 0, "device_steps": p.budget,
            "bytes_up": up, "bytes_down": 0, "failures": 0, "replies": 0, "reasons": {},
            "pooled_loss": losses[:: max(1, len(losses) // 20)] + [losses[-1]]}
