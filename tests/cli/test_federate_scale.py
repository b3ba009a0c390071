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
    (["--simulate", "4", "--mode", "async", "--registry", "reg"], "select devices in synchronous flat runs only"),
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


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_async_run_killed_by_sigkill_resumes_from_its_last_aggregation(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from broker.process import read_state
    from federation.checkpoint import load_checkpoint
    from tests.support.waiting import wait_until

    out = tmp_path / "runs"
    run_dir = out / "async-kill"
    tinyfleet = str(Path(sys.executable).with_name("tinyfleet"))
    proc = subprocess.Popen([tinyfleet, "federate", "run", "--task", "sine", "--mode", "async", "--simulate", "4",
                             "--buffer", "2", "--rounds", "150", "--local-steps", "5", "--samples-per-device", "16",
                             "--out", str(out), "--run-id", "async-kill", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # kill it once two aggregations are on disk (a condition, not a guess at how long they take); 150 versions take
    # seconds, so a test process that stalls for a while still finds the run going
    try:
        assert wait_until(lambda: (run_dir / "metrics.jsonl").is_file() and len(_metrics(run_dir)) >= 2
                          or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run_dir / "final.npz").exists()
    _, meta = load_checkpoint(run_dir / "checkpoint.npz")
    kept = _metrics(run_dir)[: meta["progress"]["records"]]  # a line written after the last checkpoint goes
    assert json.loads((run_dir / "scale.json").read_text())["mode"] == "async"

    r = CliRunner().invoke(app, ["federate", "resume", str(run_dir), "--json"])
    assert r.exit_code == 0, r.stderr[-2000:]
    rounds = json.loads(r.stdout)["rounds"]
    lines = _metrics(run_dir)
    assert lines[: len(kept)] == kept and rounds == lines  # what the checkpoint held stays, then the run goes on
    assert [x["round"] for x in lines if "skipped" not in x] == list(range(1, 151))  # every version once, in order
    pairs = list(zip(lines, lines[1:], strict=False))
    assert all(b["elapsed"] >= a["elapsed"] for a, b in pairs)  # the clock goes on, not from 0
    for key in ("dispatched", "bytes_up_total", "bytes_down_total"):  # counts and bytes go on too
        assert all(b[key] >= a[key] for a, b in pairs), key
    assert lines[-1]["bytes_up_total"] > kept[-1]["bytes_up_total"] > 0
    final, _ = load_checkpoint(run_dir / "final.npz")
    ckpt, _ = load_checkpoint(run_dir / "checkpoint.npz")
    assert all(np.array_equal(final[k], ckpt[k]) for k in final)
    assert read_state(run_dir / "broker") is None  # the private broker of the killed run was stopped, not orphaned


def test_resume_refuses_unreadable_scale_options_in_one_line(tmp_path: Path) -> None:
    from federation.coordinator import RunConfig

    run_dir = tmp_path / "bad"
    RunConfig(run_id="bad", task="sine", strategy="reptile", rounds=2).save(run_dir)
    for text in ("{not json", '{"mode": "async", "buffer": "two"}', '{"staleness_alpha": NaN}', "[1, 2]"):
        (run_dir / "scale.json").write_text(text)
        r = CliRunner().invoke(app, ["federate", "resume", str(run_dir)])
        assert r.exit_code != 0 and "Traceback" not in r.stderr, r.output
        assert r.stderr.startswith(f"error: {run_dir / 'scale.json'}: unreadable scale-out options")
        assert r.stderr.strip().count("\n") == 0


def test_resume_refuses_a_mismatched_or_tampered_async_checkpoint_before_starting_anything(tmp_path: Path) -> None:
    from federation.coordinator import RunConfig
    from tinyfleet.cli.federate_scale import ScaleOptions

    run_dir = tmp_path / "t"
    RunConfig(run_id="t", task="sine", strategy="reptile", rounds=5, simulate=2).save(run_dir)
    progress = {"version": 2, "records": 1, "counts": dict.fromkeys(("discarded_stale", "failures", "expired",
                                                                     "dispatched"), 0),
                "reasons": {}, "norms": [], "elapsed": 1.0, "bytes_total": [10, 20]}
    cases = [("sync", {}, "says --mode sync, but the checkpoint is of a --mode async run"),
             ("async", {"version": 0}, "unreadable progress of the asynchronous run"),
             ("async", {"elapsed": float("nan")}, "unreadable progress of the asynchronous run"),
             ("async", {"bytes_total": [1]}, "unreadable progress of the asynchronous run")]
    for mode, change, message in cases:
        ScaleOptions(mode=mode, buffer=1).save(run_dir)
        save_checkpoint(run_dir / "checkpoint.npz", arrays={"w0": np.zeros(2, np.float32)},
                        state={"run_id": "t", "round": 1, "mode": "async", "progress": {**progress, **change}})
        r = CliRunner().invoke(app, ["federate", "resume", str(run_dir)])
        assert r.exit_code == 1 and "Traceback" not in r.stderr, r.output
        assert message in r.stderr and r.stderr.strip().count("\n") == 0, (change, r.stderr)
        assert not (run_dir / "broker").exists()  # refused before any broker or device started


def test_a_failed_start_leaves_no_options_for_the_next_run_of_the_same_id(tmp_path: Path) -> None:
    """An async start that failed before run.json left scale.json; a plain run with that id must not inherit it."""
    from tinyfleet.cli.federate_scale import ScaleOptions

    run_dir = tmp_path / "runs" / "same"
    ScaleOptions(mode="async", buffer=1).save(run_dir)  # what the failed start left behind
    r = CliRunner().invoke(app, ["federate", "run", "--task", "sine", "--simulate", "2", "--rounds", "1",
                                 "--local-steps", "2", "--samples-per-device", "8", "--out", str(tmp_path / "runs"),
                                 "--run-id", "same", "--json"])
    assert r.exit_code == 0, r.stderr[-2000:]
    assert not (run_dir / "scale.json").exists() and (run_dir / "final.npz").is_file()
