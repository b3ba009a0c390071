"""Issue #9: every broker tinyfleet manages is secured by default, and every component works on it.

All against real Mosquitto 2.0 and the real CLI (in-process, or the console script where it must run
alongside the test): batch enrolment (hashes computed in
Python, checked against ``mosquitto_passwd`` and a real login), the simulator enrolling its own
devices, `broker start/status` defaults, `federate run --simulate` refusing anonymous clients while
it runs, and the server-side clients (`federate run --broker`, `registry listen`) with
``--credentials``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from rich.console import Console

from broker.accounts import (
    enroll_device,
    enroll_device_credentials,
    enroll_devices,
    ensure_server_account,
    hash_password,
    list_accounts,
    server_credentials,
)
from broker.files import SERVER_USER, SecurityPaths
from broker.process import MosquittoBroker, read_state
from devices.link.address import BrokerAddress, Credentials
from tests.support.broker import BAD_USER_OR_PASSWORD, NOT_AUTHORIZED, connect
from tests.support.cli import CONFIG_VARIABLES
from tests.support.waiting import wait_until

TINYFLEET = str(Path(sys.executable).with_name("tinyfleet"))
Cli = Callable[..., Result]



def _login(port: int, creds: Credentials | None, client_id: str) -> int | None:
    p = connect(port, client_id=client_id, creds=creds)
    p.client.disconnect()
    p.client.loop_stop()
    return p.connack


# ------------------------------------------------------------------------------------ hashing
@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_hash_password_matches_mosquitto_passwd(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("")
    subprocess.run(["mosquitto_passwd", str(f), "alice"], input="s3cret-pw\ns3cret-pw\n", text=True, check=True,
                   capture_output=True)
    user, reference = f.read_text().strip().split(":", 1)
    _, seven, iterations, salt_b64, _ = reference.split("$")
    assert (user, seven) == ("alice", "7")
    ours = hash_password("s3cret-pw", salt=base64.b64decode(salt_b64), iterations=int(iterations))
    assert ours == reference
    assert hash_password("s3cret-pw", salt=base64.b64decode(salt_b64)) != hash_password("other", salt=b"x" * 12)
    fresh = hash_password("s3cret-pw")
    assert fresh.startswith("$7$101$") and fresh != hash_password("s3cret-pw")  # random salt each time


# ------------------------------------------------------------------------------------ batch enrolment
def test_batch_enrolment_one_reload_each_device_its_own_password(secured: tuple[Path, MosquittoBroker]) -> None:
    d, broker = secured
    port = int(broker.port or 0)
    single = enroll_device(d, "solo-1", fleet="lab")  # the single path writes the same kind of hash
    ids = [f"bulk-{i:04d}" for i in range(300)]
    t0 = time.perf_counter()
    batch = enroll_devices(d, ids, fleet="lab")
    elapsed = time.perf_counter() - t0
    assert [e.name for e in batch] == ids and len({e.password for e in batch}) == len(ids)
    assert elapsed < 10, f"300 enrolments took {elapsed:.2f} s"
    passwd = SecurityPaths(d).passwd.read_text().splitlines()
    assert len(passwd) == 302 and passwd[0].startswith(f"{SERVER_USER}:$7$")  # server kept, nothing duplicated
    assert all(e.password not in "\n".join(passwd) for e in batch[:20])
    # the running broker reloaded once and accepts each device with its own password only
    for e in (batch[0], batch[157], batch[-1], single):
        assert _login(port, e.credentials, e.name) == 0, e.name
    wrong = Credentials(batch[1].name, batch[2].password)
    assert _login(port, wrong, batch[1].name) in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)
    assert _login(port, None, "anon") == NOT_AUTHORIZED
    # the ACL names each device's own topics (no pattern lines a crafted name could escape)
    acl = SecurityPaths(d).acl.read_text()
    assert "user bulk-0299\ntopic write tinyfleet/v1/lab/bulk-0299/" in acl and "pattern" not in acl
    # re-enrolling without rotate is refused and changes nothing; with rotate the old password dies
    from broker.exceptions import SecurityError
    with pytest.raises(SecurityError, match="already enrolled"):
        enroll_devices(d, ["bulk-0000"], fleet="lab")
    assert _login(port, batch[0].credentials, "bulk-0000") == 0
    (rotated,) = enroll_devices(d, ["bulk-0000"], fleet="lab", rotate=True)
    assert _login(port, rotated.credentials, "bulk-0000") == 0
    assert _login(port, batch[0].credentials, "bulk-0000") in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)
    with pytest.raises(SecurityError, match="same account twice"):
        enroll_devices(d, ["a-1", "a-1"])


def test_corrupt_password_file_is_a_one_line_error_and_loses_nothing(secured: tuple[Path, MosquittoBroker]) -> None:
    from broker.exceptions import SecurityError

    d, _ = secured
    passwd = SecurityPaths(d).passwd
    before = passwd.read_text() + "garbage-without-colon\n"
    passwd.write_text(before)
    with pytest.raises(SecurityError, match=r"passwd:2: not a 'user:hash' line"):
        enroll_devices(d, ["x-1"], fleet="lab")
    assert passwd.read_text() == before and "x-1" not in list_accounts(d)


def test_ensure_server_account_reuses_and_separates_accounts(secured: tuple[Path, MosquittoBroker]) -> None:
    d, broker = secured
    a = ensure_server_account(d, "registry-listener")
    assert ensure_server_account(d, "registry-listener") == a  # read back, not rotated
    assert ensure_server_account(d) == server_credentials(d)
    assert list_accounts(d)["registry-listener"]["role"] == "server"
    assert _login(int(broker.port or 0), a, "registry-listener") == 0


# ------------------------------------------------------------------------------------ simulator
def test_simulator_enrols_its_devices_on_a_secured_broker(secured: tuple[Path, MosquittoBroker],
                                                          tmp_path: Path) -> None:
    from devices.link.fleet_client import snapshot
    from devices.simulator import FleetSimulator, simulated_ids

    d, broker = secured
    address = BrokerAddress("127.0.0.1", int(broker.port or 0))
    creds = enroll_device_credentials(d, simulated_ids(4), fleet="lab")
    sim = FleetSimulator(n=4, use_case="sine", address=address, state_root=tmp_path / "dev", fleet="lab",
                         samples_per_device=8, telemetry_s=0.0, device_credentials=creds)
    try:
        assert sim.start(timeout=20) == 4
        accounts = list_accounts(d)
        assert all(accounts[i] == {**accounts[i], "role": "device", "fleet": "lab"} for i in sim.device_ids)
        fc = snapshot(address, fleet="lab", seconds=30, credentials=server_credentials(d), client_id=SERVER_USER,
                      until=lambda c: len(c.online()) == 4)
        assert sorted(fc.presence) == sorted(sim.device_ids) and all(p["online"] for p in fc.presence.values())
    finally:
        sim.stop()
    # a second simulator with the same ids re-enrols them (new passwords) instead of failing
    again = FleetSimulator(n=2, use_case="sine", address=address, state_root=tmp_path / "dev2", fleet="lab",
                           samples_per_device=8, telemetry_s=0.0,
                           device_credentials=enroll_device_credentials(d, simulated_ids(2), fleet="lab"))
    try:
        assert again.start(timeout=20) == 2
    finally:
        again.stop()
    # without enrolment the same devices are refused (the broker really is closed)
    anon = FleetSimulator(n=1, use_case="sine", address=address, state_root=tmp_path / "dev3", fleet="lab",
                          samples_per_device=8, telemetry_s=0.0, id_prefix="anon")
    try:
        assert anon.start(timeout=2) == 0
        assert "refused" in str(anon.hub.links["anon-0000"].last_error)
    finally:
        anon.stop()


# ------------------------------------------------------------------------------------ CLI: broker
def test_broker_start_is_secured_by_default_and_status_says_so(cli: Cli, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # a wide table, as COLUMNS=300 gives a fresh process (the module's Console reads COLUMNS when it is created)
    monkeypatch.setattr("tinyfleet.cli.output.out", Console(width=300))
    d = tmp_path / "mq"
    started = cli("broker", "start", "--dir", str(d), "--json")
    assert started.exit_code == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        cred = d / "security" / "credentials" / f"{SERVER_USER}.json"
        assert info["secure"] is True and info["tls"] is False and info["server_credentials"] == str(cred)
        assert "allow_anonymous false" in (d / "mosquitto.conf").read_text()
        assert _login(info["port"], None, "anon") == NOT_AUTHORIZED
        status = cli("broker", "status", "--dir", str(d), "--json")
        doc = json.loads(status.stdout)
        assert doc["running"] and doc["secure"] is True and doc["server_credentials"] == str(cred)
        human = cli("broker", "status", "--dir", str(d))
        assert "anonymous access refused" in human.stdout and str(cred) in human.stdout
        # the CLI's own read-only account works on the managed broker without extra flags
        sim = cli("devices", "simulate", "--n", "3", "--broker-dir", str(d), "--fleet", "lab", "--duration", "0",
                  "--telemetry", "0", "--samples", "8", "--json")
        assert sim.exit_code == 0, sim.stderr
        s = json.loads(sim.stdout)
        assert s["connected"] == 3 and s["secured"] is True and s["enroll_seconds"] > 0
        assert {"sim-0000", "sim-0001", "sim-0002"} <= set(list_accounts(d))
        # --insecure on a secured directory would open enrolled devices to anyone: refused
    finally:
        assert cli("broker", "stop", "--dir", str(d)).exit_code == 0
    refused = cli("broker", "start", "--dir", str(d), "--insecure")
    assert refused.exit_code == 1 and refused.stdout == "" and read_state(d) is None
    assert refused.stderr.strip().splitlines() == [
        f"error: {d} holds a secured broker (enrolled accounts); --insecure would open it to anyone: use "
        "another --dir for an open debugging broker"]
    both = cli("broker", "start", "--dir", str(tmp_path / "x"), "--tls", "--insecure")
    assert both.exit_code == 2 and "--tls cannot be combined with --insecure" in both.stderr


def test_broker_start_insecure_is_an_explicit_open_broker(cli: Cli, tmp_path: Path) -> None:
    d = tmp_path / "open"
    started = cli("broker", "start", "--dir", str(d), "--insecure", "--json")
    assert started.exit_code == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert info["secure"] is False and "allow_anonymous true" in (d / "mosquitto.conf").read_text()
        assert _login(info["port"], None, "anon") == 0
        assert json.loads(cli("broker", "status", "--dir", str(d), "--json").stdout)["secure"] is False
    finally:
        cli("broker", "stop", "--dir", str(d))


# ------------------------------------------------------------------------------------ CLI: federate
def test_federate_simulate_runs_on_a_broker_that_refuses_anonymous_clients(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    run_dir = out / "sec"
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    # subprocess: the run's private broker is probed from outside while the run is live
    proc = subprocess.Popen([TINYFLEET, "federate", "run", "--task", "sine", "--rounds", "2", "--simulate", "4",
                             "--out", str(out), "--run-id", "sec", "--samples-per-device", "16", "--local-steps",
                             "5", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    probe_code: int | None = None
    try:
        # probe while the run is live: the private broker's state file exists only while it runs
        assert wait_until(lambda: read_state(run_dir / "broker") is not None or proc.poll() is not None, 90)
        state = read_state(run_dir / "broker")
        assert state is not None, "the run ended before its broker could be probed"
        probe_code = _login(state.port, None, "intruder")
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert len(summary["rounds"]) == 2 and all(r["replies"] == 4 for r in summary["rounds"])
    assert probe_code == NOT_AUTHORIZED
    conf = (run_dir / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "password_file" in conf and "acl_file" in conf
    accounts = list_accounts(run_dir / "broker")
    assert {f"sim-000{i}" for i in range(4)} <= set(accounts) and accounts[SERVER_USER]["role"] == "server"


def test_server_clients_take_credentials_files(cli: Cli, secured: tuple[Path, MosquittoBroker],
                                               tmp_path: Path) -> None:
    """`registry listen` and `federate run --broker` on a secured broker: refused without, working with."""
    from devices.simulator import FleetSimulator, simulated_ids

    d, broker = secured
    url = f"mqtt://127.0.0.1:{broker.port}"
    listener_file = SecurityPaths(d).credentials_dir / "registry-listener.json"
    ensure_server_account(d, "registry-listener")
    sim = FleetSimulator(n=3, use_case="sine", address=BrokerAddress("127.0.0.1", int(broker.port or 0)),
                         state_root=tmp_path / "dev", fleet="lab", samples_per_device=16, telemetry_s=0.0,
                         device_credentials=enroll_device_credentials(d, simulated_ids(3), fleet="lab"))
    try:
        assert sim.start(timeout=20) == 3
        anon = cli("registry", "listen", "--broker", url, "--fleet", "lab", "--store", str(tmp_path / "r0"),
                   "--duration", "0.5", "--json")
        assert anon.exit_code == 1 and anon.stdout == "" and "Traceback" not in anon.stderr
        last = anon.stderr.strip().splitlines()[-1]
        assert last.startswith("error: registry listener: broker mqtt://127.0.0.1:") and \
            "refused the connection" in anon.stderr and "--credentials" in anon.stderr
        listened = cli("registry", "listen", "--broker", url, "--fleet", "lab", "--store", str(tmp_path / "reg"),
                       "--credentials", str(listener_file), "--duration", "2", "--json")
        assert listened.exit_code == 0, listened.stderr
        assert json.loads(listened.stdout)["tds_ingested"] == 3

        fed = cli("federate", "run", "--task", "sine", "--rounds", "1", "--broker", url, "--fleet", "lab",
                  "--credentials", str(SecurityPaths(d).credentials_dir / f"{SERVER_USER}.json"), "--quorum", "3",
                  "--out", str(tmp_path / "runs"), "--run-id", "cred", "--local-steps", "5", "--json")
        assert fed.exit_code == 0, fed.stderr[-2000:]
        assert json.loads(fed.stdout)["rounds"][0]["replies"] == 3
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        refused = cli("federate", "run", "--task", "sine", "--rounds", "1", "--broker", url, "--credentials",
                      str(bad), "--out", str(tmp_path / "runs"), "--run-id", "bad")
        assert refused.exit_code == 1 and refused.stderr.strip().splitlines() == [
            f"error: credentials file {bad} needs string fields 'username' and 'password'"]
    finally:
        sim.stop()
