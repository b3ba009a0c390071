"""One training run of `benchmarks.fedmeta`: a method, a seed, a use case → the head and what it cost.

Runs in a worker process (`train_run` takes and returns plain, picklable values); the training
itself is `federation.compare.train_method` (the demo's too): federated methods in-process over
the production path, joint training on the uploaded data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from federation.compare import FEDERATED, METHODS, Budget, train_method
from federation.session import initial_parameters
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import DeviceData

__all__ = ["FEDERATED", "METHODS", "RunSpec", "TaskProtocol", "train_run", "training_devices"]


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
    tmf_readout_lambda: float | None = None
    tmf_local_steps: int | None = None
    tinyreptile_epsilon: float | None = None

    @property
    def budget(self) -> int:
        """Device sample-gradients every federated method spends (and joint training on the server)."""
        return self.rounds * self.per_round * self.local_steps

    def training_budget(self) -> Budget:
        return Budget(rounds=self.rounds, per_round=self.per_round, local_steps=self.local_steps, lr=self.lr,
                      top_p=self.top_p, tmf_readout_lambda=self.tmf_readout_lambda,
                      tmf_local_steps=self.tmf_local_steps)


@dataclass(frozen=True)
class RunSpec:
    """One training run: protocol, method, seed, models folder, optional ε0 / TinyMetaFed overrides."""

    protocol: TaskProtocol
    method: str
    seed: int
    models_dir: str | None = None
    epsilon: float | None = None
    tmf_local_steps: int | None = None
    tmf_top_p: float | None = None


_DATA: dict[tuple[Any, ...], list[DeviceData]] = {}


def training_devices(p: TaskProtocol, seed: int) -> list[DeviceData]:
    """The training fleet's data (memoized per process: generating rooms, glyphs or speech costs seconds)."""
    key = (p.task, p.fleet, p.samples_per_device, seed if p.vary_data else 0)
    if key not in _DATA:
        _DATA[key] = get_use_case(p.task).devices("train", p.fleet, samples_per_device=p.samples_per_device,
                                                  seed=key[-1])
    return _DATA[key]


def train_run(spec: RunSpec) -> dict[str, Any]:
    """Train one (method, seed); returns the final head and the run's costs."""
    t0, c0 = time.perf_counter(), time.process_time()
    p = spec.protocol
    models = Path(spec.models_dir) if spec.models_dir else None
    initial = initial_parameters(p.task, models_dir=models, seed=spec.seed)
    budget = p.training_budget()
    if spec.tmf_local_steps is not None:
        budget = replace(budget, tmf_local_steps=spec.tmf_local_steps)
    if spec.tmf_top_p is not None:
        budget = replace(budget, top_p=spec.tmf_top_p)
    epsilon = spec.epsilon if spec.epsilon is not None else p.tinyreptile_epsilon
    run = train_method(p.task, spec.method, training_devices(p, spec.seed), initial, budget,
                       models_dir=models, seed=spec.seed, epsilon=epsilon)
    return {**run.costs(), "seed": spec.seed, "epsilon": epsilon if spec.method == "tinyreptile" else None,
            "top_p": budget.top_p if spec.method == "tinymetafed" else None,
            "local_steps": budget.tmf_steps_and_rounds()[0] if spec.method == "tinymetafed" else p.local_steps,
            "head": run.head,
            "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}
