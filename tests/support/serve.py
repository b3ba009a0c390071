"""A demo-like fleet for the `tinyfleet serve` tests: registry content and a federated run directory.

Everything goes through the real writers: device TDs from `devices.wire.thing_description` for real
board profiles (via `add_device`, as MQTT ingestion does), a model via `add_model_report`, its
federated successor with PROV lineage via `record_lineage`, and a run directory laid out exactly as
`federation.coordinator` writes it (`run.json`, one `metrics.jsonl` line per round, `final.npz`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.boards import BOARDS
from devices.wire.thing_description import thing_description
from registry.ingest_device import add_device, set_presence
from registry.ingest_model import add_model_report
from registry.lineage import record_lineage
from registry.store import RegistryStore
from tests.support.registry import report

BASE_SHA = "a" * 64
FEDERATED_SHA = "b" * 64
MIX = ("nano33ble", "esp32", "stm32f429", "uno", "esp32cam")


@dataclass
class DemoFleet:
    devices: list[str]
    eligible: list[str]
    run_id: str
    run_dir: Path
    rounds: int


def write_run(run_dir: Path, run_id: str, rounds: int, *, finished: bool = True, devices: int = 4) -> None:
    """A run directory as the coordinator leaves it: settings, per-round metrics, final checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "task": "sine", "strategy": "reptile",
                                                  "rounds": rounds, "seed": 0, "fleet": "demo"}, indent=2))
    lines = []
    for r in range(1, rounds + 1):
        loss = 0.5 * math.exp(-r / 4) + 0.02
        lines.append(json.dumps({"round": r, "train_loss": loss * 1.1, "eval_loss": loss, "loss": loss,
                                 "replies": devices, "sampled": devices, "bytes_up": 3_000 * devices + 17 * r,
                                 "bytes_down": 2_500 * devices, "seconds": 0.2, "params_sha256": f"{r:064x}"}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run_dir / "final.npz").write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: the run has ended


def build_demo_fleet(store: RegistryStore, runs_root: Path, *, n_devices: int = 12, rounds: int = 8,
                     boards: Sequence[str] = MIX, online_every: int = 2) -> DemoFleet:
    """Register `n_devices` devices of mixed boards, a model, its federated version and the run."""
    ids = [f"dev-{i:04d}" for i in range(n_devices)]
    for i, dev in enumerate(ids):
        board = BOARDS[boards[i % len(boards)]]
        td = thing_description(device_id=dev, fleet="demo", board=board, use_case="sine", host="127.0.0.1",
                               port=1883, sensors=("scalar-signal",), model_sha256=BASE_SHA)
        add_device(store, td)
        set_presence(store, dev, online=i % online_every == 0)
    card = {"name": "sine", "task": "sine", "sensors": []}
    add_model_report(store, report(BASE_SHA, arena=4_000, flash=20_000), card)
    add_model_report(store, report(FEDERATED_SHA, arena=4_000, flash=20_000),
                     {**card, "name": "sine-federated", "version": "2"})
    eligible = [d for i, d in enumerate(ids) if boards[i % len(boards)] != "uno"][:6]
    run_id = "demo-sine-reptile-test"
    record_lineage(store, FEDERATED_SHA, run_id, rounds, eligible, "tinyreptile", "2026-01-01T00:00:00+00:00",
                   "2026-01-01T00:01:00+00:00", parent_model=BASE_SHA)
    run_dir = runs_root / run_id
    write_run(run_dir, run_id, rounds, devices=len(eligible))
    return DemoFleet(ids, eligible, run_id, run_dir, rounds)
