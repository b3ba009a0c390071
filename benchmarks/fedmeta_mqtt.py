"""The in-process experiments' bytes, checked over MQTT: a few rounds of every federated method, both ways.

`benchmarks.fedmeta` trains in-process (`federation.inprocess_run`); this runs the same strategy,
settings and fleet through `tinyfleet federate run --simulate`'s path (private secured Mosquitto,
`FleetSimulator`, `Coordinator`) and compares the train-phase bytes per device-round (uplink +
downlink, the Grid's ledger of MQTT payload lengths). Frames differ only in numbers printed into
their JSON headers (timestamps, losses), so the two agree to a fraction of a percent.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.fedmeta_train import FEDERATED, RunSpec, TaskProtocol, train_run
from federation.coordinator import Coordinator, RunConfig
from federation.session import fleet_grid, initial_parameters

CHECK = TaskProtocol(task="sine", shots=10, queries=20, fleet=12, rounds=4, per_round=4, local_steps=20)


def _params(spec: RunSpec) -> tuple[str, dict[str, Any]]:
    """Strategy name and parameters for `RunConfig`, equal to `benchmarks.fedmeta_train.strategy_for`."""
    p = spec.protocol
    sampling: dict[str, Any] = {"fraction_evaluate": 0.0}
    if spec.method != "tinyreptile":
        sampling.update(fraction_train=p.per_round / p.fleet, min_train_nodes=p.per_round)
    params = {"fedavg": {}, "reptile": {}, "tinyreptile": {},
              "tinymetafed": {"top_p": p.top_p, "readout_lambda": p.tmf_readout_lambda}}[spec.method]
    return spec.method, {**sampling, **params}


def mqtt_check(protocol: TaskProtocol = CHECK, **_: Any) -> dict[str, dict[str, Any]]:
    """Per federated method: bytes per device-round in-process and over Mosquitto, and their relative difference."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out: dict[str, dict[str, Any]] = {}
    for method in FEDERATED:
        p = protocol
        spec = RunSpec(p, method, 0)
        mem = train_run(spec)
        inproc = (mem["bytes_up"] + mem["bytes_down"]) / max(mem["replies"], 1)
        name, params = _params(spec)
        rounds = mem["rounds"]
        with tempfile.TemporaryDirectory(prefix="fedmeta-mqtt-") as tmp:
            cfg = RunConfig(run_id=f"fedmeta-{p.task}-{method}-0", task=p.task, strategy=name, rounds=rounds, seed=0,
                            local_steps=p.local_steps, lr=p.lr, strategy_params=params, round_timeout=60.0,
                            quorum=p.fleet, quorum_timeout=60.0, fleet="fmcheck", simulate=p.fleet,
                            samples_per_device=p.samples_per_device)
            rows: list[dict[str, Any]] = []
            with fleet_grid(cfg, Path(tmp) / "run") as grid:
                Coordinator(cfg, grid, Path(tmp) / "run", on_round=rows.append).start(
                    initial_parameters(p.task, seed=0))
        replies = sum(r["replies"] for r in rows)
        over = sum(r["bytes_up_train"] + r["bytes_down_train"] for r in rows) / max(replies, 1)
        out[method] = {"rounds": rounds, "replies": replies, "failures": sum(r["failures"] for r in rows),
                       "inprocess": inproc, "mqtt": over, "relative": (over - inproc) / inproc}
    return out
