"""Hierarchical federation on Flower's real deployment runtime (SuperLink, SuperNodes, ``flwr run``).

Every test here starts real processes: Mosquitto site brokers, ``tinyfleet devices simulate``
groups, ``flower-superlink`` and ``flower-supernode`` (which start Flower's own SuperExec,
ServerApp and per-message ClientApp processes). Each test also checks that every process it
caused is gone afterwards, by PID.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from broker.accounts import server_credentials
from federation.checkpoint import load_checkpoint, save_checkpoint
from federation.coordinator import Coordinator, RunConfig
from federation.exceptions import FederationError
from federation.hierarchy.deployment import DeviceGroup, LocalDeployment
from federation.hierarchy.processes import marked_pids
from federation.hierarchy.server import INITIAL_FILE
from federation.hierarchy.settings import HierarchyConfig
from federation.session import fleet_grid, initial_parameters
from tinyfleet.cli.main import app

pytestmark = pytest.mark.slow


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except OSError:
        return True
    return state == "Z"


def _assert_all_gone(deployment_dir: Path, pids: list[int]) -> None:
    assert marked_pids(str(deployment_dir.resolve())) == []
    assert pids and all(_dead(p) for p in pids), [p for p in pids if not _dead(p)]


def test_one_gateway_equals_flat_and_runs_async(tmp_path: Path) -> None:
    """Same devices, same seed: flat Reptile and a 1-gateway hierarchy end with the same head (|Δθ| <= 1e-6).

    The same deployment then takes a second Flower run in ``async`` mode: the gateway answers after
    a buffer of its devices, the top level aggregates FedBuff-style on Flower's Grid.
    """
    cfg = RunConfig(run_id="h", task="sine", strategy="reptile", rounds=2, seed=3, local_steps=10, lr=0.02,
                    strategy_params={"epsilon": 0.8, "epsilon_floor": 0.2}, simulate=6, quorum=6,
                    round_timeout=300.0, quorum_timeout=300.0)  # upper bounds: a busy machine is slow
    initial = initial_parameters("sine", seed=3)
    with LocalDeployment(tmp_path / "dep", gateways=1, devices=6, group=DeviceGroup(seed=3)) as deployment:
        # the flat coordinator talks to the same six devices directly, through the site broker
        site = deployment.sites[0]
        flat_cfg = RunConfig(**{**cfg.__dict__, "run_id": "flat", "broker": site.config.broker, "simulate": 0,
                                "fleet": site.config.fleet})
        with fleet_grid(flat_cfg, tmp_path / "flat", credentials=server_credentials(site.broker_dir)) as grid:
            flat = Coordinator(flat_cfg, grid, tmp_path / "flat").start(initial)
        hier = _submit(deployment, HierarchyConfig(run=cfg, gateways=1), tmp_path / "hier", initial)
        async_cfg = RunConfig(**{**cfg.__dict__, "run_id": "h-async", "rounds": 2})
        buffered = _submit(deployment, HierarchyConfig(run=async_cfg, gateways=1, mode="async", buffer=3),
                           tmp_path / "async", initial)
    stopped = sorted(set(deployment.procs.stopped_pids) | set(deployment.broker_pids))

    hier_final, _ = load_checkpoint(tmp_path / "hier" / "final.npz")
    assert set(hier_final) == set(flat["final"])
    delta = max(float(np.max(np.abs(hier_final[k] - flat["final"][k]))) for k in hier_final)
    assert delta <= 1e-6, delta
    assert any(float(np.max(np.abs(hier_final[k] - initial[k]))) > 1e-3 for k in initial)  # it did learn
    # both levels are accounted for: 6 devices through one gateway, bytes at the device level and at the top
    for rec_h, rec_f in zip(hier, flat["rounds"], strict=True):
        assert rec_h["gateway_replies"] == 1 and rec_h["replies"] == rec_f["replies"] == 6, (rec_h, rec_f)
        assert rec_h["bytes_up"] > 0 and rec_h["top_bytes_up"] > 0 and rec_h["top_bytes_down"] > 0, rec_h
        assert rec_h["eval_loss"] == pytest.approx(rec_f["eval_loss"], rel=1e-5), (rec_h, rec_f)
    # async: two aggregations, each of one gateway answer built from >= 3 device replies
    assert [r["round"] for r in buffered] == [1, 2], buffered
    assert all(r["replies"] == 1 and r["site_replies"] >= 3 and "skipped" not in r for r in buffered), buffered
    async_final, _ = load_checkpoint(tmp_path / "async" / "final.npz")
    assert any(float(np.max(np.abs(async_final[k] - initial[k]))) > 1e-3 for k in initial)
    _assert_all_gone(tmp_path / "dep", stopped)


def _submit(deployment: LocalDeployment, settings: HierarchyConfig, run_dir: Path,
            initial: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / INITIAL_FILE, arrays=initial, state={"round": 0})
    deployment.submit(settings, run_dir)
    deployment.wait(run_dir, timeout=600)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_federate_run_gateways_end_to_end(tmp_path: Path) -> None:
    """`tinyfleet federate run --gateways 2 --simulate 40`: 2 sites of 20 devices, nothing left running."""
    r = CliRunner().invoke(app, ["federate", "run", "--task", "sine", "--rounds", "1", "--simulate", "40",
                                 "--gateways", "2", "--local-steps", "10", "--out", str(tmp_path), "--run-id", "e2e",
                                 # upper bounds only (a gateway is a fresh process per message: slow on a busy machine)
                                 "--round-timeout", "300", "--quorum-timeout", "300", "--json"])
    assert r.exit_code == 0, r.stderr or r.output
    summary = json.loads(r.stdout)
    assert summary["gateways"] == 2 and summary["mode"] == "sync"
    (rnd,) = summary["rounds"]
    assert rnd["gateway_replies"] == 2 and rnd["replies"] == 40 and rnd["eval_replies"] == 40
    assert rnd["missing"] == 0 and rnd["failures"] == 0
    sites = summary["deployment"]["sites"]
    assert [s["devices"] for s in sites] == [20, 20] and {s["id_prefix"] for s in sites} == {"g0", "g1"}
    final, _ = load_checkpoint(tmp_path / "e2e" / "final.npz")
    assert summary["final_sha256"] == rnd["params_sha256"] and final
    _assert_all_gone(tmp_path / "e2e" / "deployment", summary["deployment"]["stopped_pids"])


def test_failed_start_leaves_no_process(tmp_path: Path) -> None:
    """A device group that cannot start fails the deployment with its log, and every process is stopped."""
    deployment = LocalDeployment(tmp_path / "dep", gateways=2, devices=4, group=DeviceGroup(task="no-such-task"),
                                 ready_timeout=120)
    with pytest.raises(FederationError, match="devices-site0 exited"), deployment:
        pass
    started = [p.pid for p in deployment.procs.processes]
    assert {p.name for p in deployment.procs.processes} >= {"superlink", "supernode-site0", "supernode-site1"}
    _assert_all_gone(tmp_path / "dep", started + deployment.broker_pids)
    assert not os.path.exists(tmp_path / "dep" / "sites" / "site0" / "broker" / "broker.json")


def test_sigterm_to_the_cli_stops_every_process(tmp_path: Path) -> None:
    """`kill <pid>` of a running `federate run --gateways` leaves nothing behind (the process boundary is the point)."""
    import signal
    import subprocess
    import sys

    from tests.support.waiting import wait_until

    cli = subprocess.Popen([sys.executable, "-m", "tinyfleet.cli.main", "federate", "run", "--task", "sine",
                            "--rounds", "50", "--simulate", "2", "--gateways", "1", "--local-steps", "5",
                            "--out", str(tmp_path), "--run-id", "term", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    deployment = tmp_path / "term" / "deployment"
    try:
        assert wait_until(lambda: "SuperNode ID" in _read(deployment / "logs" / "supernode-site0.log"), timeout=240,
                          step=0.2), _read(deployment / "logs" / "superlink.log")[-2000:]
        assert marked_pids(str(deployment.resolve()))
        broker_pid = json.loads((deployment / "sites" / "site0" / "broker" / "broker.json").read_text())["pid"]
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode != 0 and "Traceback" not in err.decode()
    assert wait_until(lambda: marked_pids(str(deployment.resolve())) == [], timeout=30)
    assert _dead(broker_pid) and not (deployment / "sites" / "site0" / "broker" / "broker.json").exists()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
