"""`federate resume` re-creates a Flower strategy from run.json and restores its server-side state.

FedAdam keeps moments (m_t, v_t) and FedAvgM a momentum vector between rounds; a run interrupted
after round 2 and resumed must end with exactly the parameters of an uninterrupted run. The
control case drops the saved state from the checkpoint and must end elsewhere, so the test can
fail. Devices are the deterministic `QuadraticDevice`s over the in-process transport (real codec,
real Grid, real Flower strategies; no broker needed for a checkpoint question).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation.checkpoint import load_checkpoint, load_extra_arrays, save_checkpoint
from federation.coordinator import CHECKPOINT_FILE, Coordinator, RunConfig
from federation.grid import FleetGrid
from federation.inprocess_transport import InProcessTransport
from federation.strategies.registry import build_strategy
from federation.wire import ProtocolCodec
from tests.support.federation import QuadraticDevice, initial_head

DEVICES = ["dev-0", "dev-1", "dev-2", "dev-3"]
CASES = {"flwr:FedAdam": {"eta": 0.05}, "flwr:FedAvgM": {"server_learning_rate": 0.5, "server_momentum": 0.9}}


class Interrupted(Exception):
    """Stands for a kill right after round 2's checkpoint was written."""


def make_config(spec: str) -> RunConfig:
    return RunConfig(run_id=f"resume-{spec}", task="sine", strategy=spec, rounds=3, quorum=4, seed=7, local_steps=2,
                     lr=0.1, round_timeout=5.0, quorum_timeout=5.0, strategy_params=dict(CASES[spec]))


def coordinator(config: RunConfig, run_dir: Path, **kw: Any) -> Coordinator:
    transport = InProcessTransport({d: QuadraticDevice(d) for d in DEVICES})
    grid = FleetGrid(transport, ProtocolCodec({"local-steps": 2, "lr": 0.1}), run_id=config.run_id)
    return Coordinator(config, grid, run_dir, **kw)


def interrupted_after_round_2(spec: str, run_dir: Path) -> None:
    def stop(record: dict[str, Any]) -> None:
        if record["round"] == 2:
            raise Interrupted

    c = coordinator(make_config(spec), run_dir, on_round=stop)
    with pytest.raises(Interrupted):
        c.start(initial_head())
    c.grid.close()


def resumed(run_dir: Path) -> str:
    c = coordinator(RunConfig.load(run_dir), run_dir)
    try:
        return str(c.resume()["final_sha256"])
    finally:
        c.grid.close()


@pytest.mark.parametrize("spec", list(CASES))
def test_resume_continues_the_strategy_state_exactly(spec: str, tmp_path: Path) -> None:
    ref = coordinator(make_config(spec), tmp_path / "ref")
    reference = str(ref.start(initial_head())["final_sha256"])
    ref.grid.close()

    interrupted_after_round_2(spec, tmp_path / "cut")
    state = load_extra_arrays(tmp_path / "cut" / CHECKPOINT_FILE)
    assert state and all(np.all(np.isfinite(v)) for v in state.values())  # moments / momentum were saved
    assert resumed(tmp_path / "cut") == reference

    # control: the same interruption, but the checkpoint forgets the strategy's state
    interrupted_after_round_2(spec, tmp_path / "amnesia")
    path = tmp_path / "amnesia" / CHECKPOINT_FILE
    arrays, meta = load_checkpoint(path)
    kept = {k: v for k, v in meta.items() if k not in ("format", "keys", "extra_keys", "strategy_state")}
    save_checkpoint(path, arrays=arrays, state=kept)
    assert resumed(tmp_path / "amnesia") != reference


def test_run_json_recreates_a_wrapped_strategy() -> None:
    s = build_strategy("flwr:DifferentialPrivacyServerSideAdaptiveClipping",
                       {"strategy": "flwr:FedMedian", "noise_multiplier": 0.0, "num_sampled_clients": 4},
                       num_rounds=3)
    inner = s.strategy  # type: ignore[attr-defined]
    assert type(inner).__name__ == "FedMedian"
    assert (inner.min_train_nodes, inner.min_available_nodes) == (1, 1)  # the coordinator's sampling settings
