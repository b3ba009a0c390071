"""Federated rounds without a broker: real strategies, the real Grid and codec, real device agents.

Experiments need thousands of rounds for several methods, seeds and use cases; over MQTT the
broker and the coordinator's per-round checkpoint (fsync) dominate. Here everything else is the
production path: the Flower strategy's ``configure_train``/``aggregate_train``, `FleetGrid`
(reply checks, byte ledger), `ProtocolCodec` (every task and reply is encoded to and decoded
from the exact bytes MQTT would carry, so the byte counts are wire bytes) and `DeviceAgent.answer`
(the device's own task handling: `devices.train_task`). Only the transport is a function call
(`InProcessTransport` with ``workers=0``). `benchmarks.fedmeta` checks the bytes against a run
over Mosquitto.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from devices.agent import AgentConfig, DeviceAgent
from devices.boards import BOARDS
from devices.link.address import parse_broker_url
from devices.simulator import LearnerFactory, simulated_ids
from devices.wire.protocol import ConfigKey, MetricKey
from federation import flower_compat
from federation.grid import FleetGrid
from federation.inprocess_transport import InProcessTransport
from federation.wire import ProtocolCodec
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import DeviceData

ROOMY_BOARD = BOARDS["rpi4"]
"""In-process devices run on a board every model fits (fit checks are not what is measured here)."""


def inprocess_fleet(task: str, datasets: list[DeviceData], *, models_dir: Path | None, seed: int,
                    state_root: Path, id_prefix: str = "mem", eval_fraction: float = 0.0) -> list[DeviceAgent]:
    """One `DeviceAgent` per data set, with the learner `devices.simulator` would give it.

    `eval_fraction` defaults to 0 here: in experiments a training device learns from all its
    samples (new devices are judged separately).
    """
    uc = get_use_case(task)
    factory = LearnerFactory(uc, models_dir, seed=seed)
    address = parse_broker_url("mqtt://127.0.0.1:1")  # never connected: only named in the Thing Description
    agents = []
    for i, (device_id, data) in enumerate(zip(simulated_ids(len(datasets), id_prefix), datasets, strict=True)):
        cfg = AgentConfig(device_id=device_id, board=ROOMY_BOARD, state_dir=Path(state_root) / device_id, fleet="mem",
                          use_case=uc.name, sensors=tuple(uc.sensors), telemetry_s=0.0, eval_fraction=eval_fraction,
                          seed=seed + i)
        agents.append(DeviceAgent(cfg, factory(i, data), data, address=address))
    return agents


@dataclass
class RoundRecord:
    """What one in-process round did (the train phase: bytes both ways are exact frame lengths)."""

    round: int
    sent: int
    replies: int
    failures: int
    bytes_down: int
    bytes_up: int
    num_examples: int
    reasons: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def inprocess_grid(agents: list[DeviceAgent], *, run_id: str, local_steps: int, lr: float) -> Iterator[FleetGrid]:
    """A `FleetGrid` whose transport calls each agent's `answer` directly (synchronously)."""
    transport = InProcessTransport({a.client_id: a.answer for a in agents}, workers=0)
    grid = FleetGrid(transport, ProtocolCodec({ConfigKey.LOCAL_STEPS: local_steps, ConfigKey.LR: lr}), run_id=run_id)
    try:
        yield grid
    finally:
        transport.close()


def train_rounds(strategy: FedAvg, grid: FleetGrid, initial: Mapping[str, np.ndarray], rounds: int, *,
                 local_steps: int, lr: float, seed: int = 0,
                 on_round: Callable[[RoundRecord, Callable[[], dict[str, np.ndarray]]], None] | None = None,
                 first_round: int = 1) -> dict[str, np.ndarray]:
    """Rounds `first_round` … `rounds` of `strategy` (train phase only); returns the final parameters.

    Sampling is seeded per round from (`seed`, round) as the coordinator seeds it, so a method
    sees the same draws in every repetition. `on_round` gets the ledger of the round and a function
    that returns the new parameters as numpy arrays (converting Flower's arrays costs time, so only
    when asked).
    """
    flower_compat.init_task_identity(grid.run.run_id)  # what the coordinator does before its first round
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v, np.float32)) for k, v in initial.items()})
    for rnd in range(first_round, rounds + 1):
        cfg = ConfigRecord({ConfigKey.LOCAL_STEPS: int(local_steps), ConfigKey.LR: float(lr), ConfigKey.SEED: seed})
        saved = random.getstate()
        random.seed(int(np.random.default_rng([seed, rnd]).integers(2**63)))
        try:
            msgs = list(strategy.configure_train(rnd, arrays, cfg, grid))
        finally:
            random.setstate(saved)
        replies = sorted(grid.send_and_receive(msgs, timeout=600.0), key=lambda m: m.metadata.src_node_id)
        new, _ = strategy.aggregate_train(rnd, replies)
        if new is not None:
            arrays = new
        st = grid.ledger.phase(rnd, "train")
        n_ex = 0
        for r in replies:
            if not r.has_error():
                n_ex += int(next(iter(r.content.metric_records.values()))[MetricKey.NUM_EXAMPLES])  # type: ignore[arg-type]
        if on_round is not None:
            on_round(RoundRecord(rnd, st.sent, st.replies, st.failures, st.bytes_down, st.bytes_up, n_ex,
                                 dict(st.reasons)), _numpy_of(arrays))
    return {k: v.numpy() for k, v in arrays.items()}


def _numpy_of(arrays: ArrayRecord) -> Callable[[], dict[str, np.ndarray]]:
    """A function returning `arrays` as numpy arrays (converted only if called)."""
    return lambda: {k: v.numpy() for k, v in arrays.items()}


def temporary_state_root() -> contextlib.AbstractContextManager[str]:
    """A scratch folder for the agents' (unused) deploy state."""
    return tempfile.TemporaryDirectory(prefix="tinyfleet-inprocess-")


__all__ = ["ROOMY_BOARD", "RoundRecord", "inprocess_fleet", "inprocess_grid", "temporary_state_root",
           "train_rounds"]
