"""`federate run` scale-out options: combinations that cannot work are one-line usage errors, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from federation.checkpoint import save_checkpoint
from tinyfleet.cli.main import app


@pytest.mark.parametrize(("args", "message"), [
    (["--simulate", "4", "--bridge-to", "central"], "--bridge-to joins site brokers"),
    (["--simulate", "2", "--gateways", "3"], "cannot fill 3 sites"),
    (["--gateways", "2", "--broker", "mqtt://127.0.0.1:1"], "--gateways N starts its own sites"),
    (["--simulate", "4", "--gateways", "2", "--strategy", "tinymetafed"], "--gateways supports"),
    (["--simulate", "4", "--gateways", "2", "--strategy", "flwr:FedMedian"], "a median of medians"),
    (["--simulate", "4", "--mode", "async", "--strategy", "tinymetafed"], "--mode async supports"),
    (["--simulate", "4", "--gateways", "2", "--aggregate", "median"], "a robust --aggregate"),
    (["--simulate", "4", "--intermittent", "0.3", "--online", "5", "--period", "5"], "must be > 0 and < --period"),
    (["--intermittent", "0.3", "--broker", "mqtt://127.0.0.1:1"], "applies to simulated devices"),
    (["--simulate", "2", "--mode", "async", "--buffer", "50"], "--buffer 50 is more than the --simulate 2"),
    (["--simulate", "4", "--mode", "async", "--serial"], "no --serial form"),
    (["--simulate", "4", "--mode", "async", "--fraction", "0.5"], "--fraction does not apply"),
    (["--simulate", "2", "--intermittent", "0.5", "--online", "nan"], "--online must be a finite number; got nan"),
    (["--simulate", "2", "--mode", "async", "--staleness-alpha", "nan"], "--staleness-alpha must be a finite"),
    (["--simulate", "2", "--lr", "inf"], "--lr must be a finite number; got inf"),
    (["--simulate", "2", "--broker-timeout", "nan"], "--broker-timeout must be a finite"),
])
def test_impossible_combinations_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, ["federate", "run", "--task", "sine", "--out", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")  # one line
    assert not any(tmp_path.iterdir())  # nothing was started or written


def test_hierarchical_and_async_runs_refuse_resume(tmp_path: Path) -> None:
    from federation.coordinator import RunConfig

    for name, marker in (("hier", "status"), ("async", "checkpoint")):
        run_dir = tmp_path / name
        RunConfig(run_id=name, task="sine", strategy="reptile", rounds=2).save(run_dir)
        if marker == "status":
            (run_dir / "status.json").write_text(json.dumps({"state": "failed"}))
        else:
            save_checkpoint(run_dir / "checkpoint.npz", arrays={"w0": np.zeros(2, np.float32)},
                            state={"run_id": name, "round": 1, "mode": "async"})
        r = CliRunner().invoke(app, ["federate", "resume", str(run_dir)])
        assert r.exit_code == 2, r.output
        assert "cannot be resumed" in r.stderr


def test_resume_refuses_a_non_finite_broker_timeout(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["federate", "resume", str(tmp_path), "--broker-timeout", "nan"])
    assert r.exit_code == 2 and r.stderr == "error: --broker-timeout must be a finite number; got nan\n", r.output
