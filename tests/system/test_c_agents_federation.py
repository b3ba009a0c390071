"""Four C devices (``tf-agent`` on libmosquitto) and two Python devices in a real `tinyfleet federate run`.

Everything is the real thing: `tinyfleet broker start` (secured: passwords, ACL), every device
enrolled with its own password (the C devices read theirs from a 0600 file outside their folder),
`tinyfleet devices simulate` for the Python devices and `tinyfleet federate run` with the server
account. A C device must be accepted in every round: every round's train and evaluate phases get
one valid reply per device, no failures, nothing missing. The run is TinyMetaFed, the strategy that
asks most of a device: Top-P sparse deltas, local (personal) layers and their reconstruction steps.
A fifth C device, in a fleet of its own on the same broker, is judged by `tinyfleet devices
conformance` (docs/protocol.md §13): every check, required and recommended, must pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.accounts import enroll_devices, ensure_server_account
from devices.c.fleet import CDevice, c_device_ids, prepare_c_devices, start_c_devices, stop_c_devices, wait_started
from devices.link.address import parse_broker_url
from devices.link.fleet_client import FleetClient
from tests.conftest import require_c_tools
from tests.support.cli import clean_environment, invoke
from tests.support.models import TINYFLEET
from tests.support.waiting import wait_until

FLEET = "cfleet"
N_C, N_PY, SAMPLES = 4, 2, 64
CONF_FLEET, CONF_ID = "cconf", "c-conf"
CONFORMANCE_CHECKS = 17


@dataclass
class MixedFleet:
    url: str
    broker_dir: Path
    server_credentials: Path
    c_devices: list[CDevice]
    python_devices: subprocess.Popen[str]
    conformance_device: CDevice
    device_credentials: dict[str, Path]


@pytest.fixture(scope="module")
def mixed_fleet(tmp_path_factory: pytest.TempPathFactory, c_build_dir: Path) -> Iterator[MixedFleet]:
    require_c_tools("gcc", "libmosquitto")
    root = tmp_path_factory.mktemp("cfleet")
    broker_dir = root / "mq"
    with clean_environment(tmp_path_factory.mktemp("cwd")):
        proc = invoke("broker", "start", "--dir", str(broker_dir), "--json")
    assert proc.exit_code == 0, proc.stderr
    info = json.loads(proc.stdout)
    url = info["url"]
    c_devs: list[CDevice] = []
    sim: subprocess.Popen[str] | None = None
    try:
        creds_dir = root / "credentials"  # outside the devices' folders, one 0600 file each
        creds_dir.mkdir(mode=0o700)
        paths = {}
        enrolled = [*enroll_devices(broker_dir, c_device_ids(N_C), fleet=FLEET),
                    *enroll_devices(broker_dir, [CONF_ID], fleet=CONF_FLEET)]
        for e in enrolled:
            p = creds_dir / f"{e.name}.json"
            p.write_text(json.dumps(e.to_json()))
            p.chmod(0o600)
            paths[e.name] = p
        c_devs, layout = prepare_c_devices(N_C, use_case="sine", broker_url=url, fleet=FLEET, root=root / "c",
                                           credentials=paths, samples_per_device=SAMPLES, seed=100)
        conf, _ = prepare_c_devices(1, use_case="sine", broker_url=url, fleet=CONF_FLEET, root=root / "c",
                                    credentials=paths, samples_per_device=SAMPLES, seed=7, telemetry_s=1.0,
                                    ids=[CONF_ID])  # its TD offers telemetry, so it sends some
        c_devs += conf
        start_c_devices(c_devs, layout, samples=SAMPLES, build_dir=c_build_dir)
        wait_started(c_devs)
        # subprocess: the Python devices run alongside the test and are stopped with Ctrl-C (SIGINT) below
        sim = subprocess.Popen([TINYFLEET, "devices", "simulate", "--n", str(N_PY), "--task", "sine", "--broker-dir",
                                str(broker_dir), "--fleet", FLEET, "--telemetry", "0", "--samples", str(SAMPLES)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        yield MixedFleet(url, broker_dir, Path(info["server_credentials"]), c_devs[:N_C], sim, c_devs[N_C], paths)
    finally:
        if sim is not None and sim.poll() is None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(20)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
        stop_c_devices(c_devs)
        invoke("broker", "stop", "--dir", str(broker_dir))


def _federate(fleet: MixedFleet, out: Path, strategy: str, *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    proc = invoke("federate", "run", "--task", "sine", "--strategy", strategy, "--rounds", "3", "--broker", fleet.url,
                  "--credentials", str(fleet.server_credentials), "--fleet", FLEET, "--quorum", str(N_C + N_PY),
                  "--quorum-timeout", "60", "--round-timeout", "60", "--local-steps", "20", "--out", str(out),
                  "--run-id", f"mixed-{strategy}", "--json", *extra)
    assert proc.exit_code == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    lines = (out / f"mixed-{strategy}" / "metrics.jsonl").read_text().splitlines()
    return summary, [json.loads(ln) for ln in lines]


def _assert_every_device_accepted(rounds: list[dict[str, Any]]) -> None:
    n = N_C + N_PY
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert (r["sampled"], r["replies"], r["failures"], r["missing"]) == (n, n, 0, 0), r
        assert (r["eval_replies"], r["eval_failures"]) == (n, 0), r
        assert not r["reasons"], r


def test_four_c_devices_are_accepted_in_every_round(mixed_fleet: MixedFleet, tmp_path: Path) -> None:
    address = parse_broker_url(mixed_fleet.url)
    from broker.accounts import server_credentials

    with FleetClient(address, fleet=FLEET, client_id="c-test-watch",
                     credentials=server_credentials(mixed_fleet.broker_dir)) as watch:
        assert wait_until(lambda: len(watch.online()) == N_C + N_PY, 60), watch.online()
        tds = dict(watch.tds)
    assert all(d.alive() for d in mixed_fleet.c_devices), [d.log_text() for d in mixed_fleet.c_devices]
    assert {d.device_id for d in mixed_fleet.c_devices} <= set(tds)  # the C devices published their TDs

    summary, rounds = _federate(mixed_fleet, tmp_path, "tinymetafed", "--top-p", "0.2", "--reconstruct-steps", "5",
                                "--downlink", "dense")  # the C agent does not implement delta-q8 (yet)
    _assert_every_device_accepted(rounds)
    assert summary["rounds"][-1]["round"] == 3
    dense_up = (N_C + N_PY) * 4 * (32 + 32 + 32 * 32 + 32)  # layers 0-1 as dense float32 (layer 2 stays local)
    assert rounds[-1]["bytes_up_train"] < dense_up  # the Top-P deltas really travelled sparse

    for d in mixed_fleet.c_devices:  # no device logged a refused task
        assert "warning" not in d.log_text(), d.log_text()[-2000:]


def test_c_device_stops_cleanly_and_says_offline(mixed_fleet: MixedFleet) -> None:
    victim = mixed_fleet.c_devices[-1]
    from broker.accounts import server_credentials
    from broker.process import read_state

    with FleetClient(parse_broker_url(mixed_fleet.url), fleet=FLEET, client_id="c-test-bye",
                     credentials=server_credentials(mixed_fleet.broker_dir)) as watch:
        assert wait_until(lambda: victim.device_id in watch.online(), 30)
        broker = read_state(mixed_fleet.broker_dir)
        assert broker is not None and victim.process is not None
        # A second SIGTERM while the device waits for the PUBACK of its offline message must not kill it mid-goodbye
        # (glibc's System V signal() once reset the handler after the first: exit -15). Pausing the broker holds the
        # PUBACK back until both signals were sent, so the second one surely lands during the goodbye.
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            victim.process.send_signal(signal.SIGTERM)
            assert wait_until(lambda: "stopping: saying offline" in victim.log_text(), 15), victim.log_text()
            assert victim.alive()  # waiting for the PUBACK the paused broker holds back (up to 5 s)
            victim.process.send_signal(signal.SIGTERM)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert victim.stop(15, signalled=True) == 0, victim.log_text()
        assert "stopped (" in victim.log_text()
        assert wait_until(lambda: watch.presence.get(victim.device_id, {}).get("reason") == "shutdown", 15)
        assert watch.presence[victim.device_id]["online"] is False


def test_a_c_device_passes_every_conformance_check(mixed_fleet: MixedFleet, tmp_path: Path) -> None:
    """`tinyfleet devices conformance` (in-process) against a C device on the secured broker: all 17 checks pass."""
    server = ensure_server_account(mixed_fleet.broker_dir, "c-conformance")  # its own account: no session clash
    server_file = tmp_path / "server.json"
    server_file.write_text(json.dumps({"username": server.username, "password": server.password}))
    dev = mixed_fleet.conformance_device
    with FleetClient(parse_broker_url(mixed_fleet.url), fleet=CONF_FLEET, client_id="c-conf-watch",
                     credentials=ensure_server_account(mixed_fleet.broker_dir, "c-conf-watch")) as watch:
        assert wait_until(lambda: CONF_ID in watch.online() and CONF_ID in watch.tds, 30), dev.log_text()
    with clean_environment(tmp_path):  # no TINYFLEET_* settings or tinyfleet.toml from the shell
        r = invoke("devices", "conformance", "--device", CONF_ID, "--fleet", CONF_FLEET, "--broker", mixed_fleet.url,
                   "--credentials", str(server_file), "--device-credentials",
                   str(mixed_fleet.device_credentials[CONF_ID]), "--json")
    report = json.loads(r.stdout)
    outcome = {c["name"]: (c["status"], c["detail"]) for c in report["checks"]}
    assert r.exit_code == 0 and report["ok"] is True, (outcome, r.stderr, dev.log_text()[-2000:])
    assert len(outcome) == CONFORMANCE_CHECKS
    assert {k: v for k, v in outcome.items() if v[0] != "pass"} == {}, dev.log_text()[-2000:]
    assert dev.alive(), dev.log_text()[-2000:]  # the Last Will check dropped it; it reconnected and kept running
