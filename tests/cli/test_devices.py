"""`tinyfleet devices run|simulate|list|show` as a user runs them (in-process CLI, real Mosquitto)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from broker.process import BrokerInfo
from tests.support.cli import CONFIG_VARIABLES

Cli = Callable[..., Result]
CLI = [sys.executable, "-c", "from tinyfleet.cli.main import main; main()"]


@pytest.fixture(autouse=True)
def _own_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No default broker directory or state of the user's leaks in."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def test_simulate_then_list_and_show(cli: Cli, mosquitto: BrokerInfo, tmp_path: Path) -> None:
    """Every step waits for a condition: the fleet runs until the test stops it (SIGINT), `list` is retried
    until all five are online, `show` returns once the device's TD and presence arrived (issue #12, 10b:
    a fixed `--duration 4` ran out under load before `show` looked)."""
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    # subprocess: the simulated fleet keeps running while the CLI calls below look at it, then is stopped with
    # Ctrl-C (SIGINT) as a user stops it (a fixed --duration raced the calls on a busy machine)
    sim = subprocess.Popen([*CLI, "devices", "simulate", "--n", "5", "--task", "sine", "--boards", "nano33ble:4,uno:1",
                            "--broker", url, "--fleet", "clisim", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        listed: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sim.poll() is None:
            out = cli("devices", "list", "--broker", url, "--fleet", "clisim", "--wait", "1", "--json")
            assert out.exit_code == 0, out.stderr
            listed = json.loads(out.stdout)
            if sum(d["online"] for d in listed["devices"]) == 5:
                break
        assert sorted(d["device"] for d in listed["devices"]) == [f"sim-000{i}" for i in range(5)]
        assert all(d["online"] for d in listed["devices"]), listed
        assert {d["board"] for d in listed["devices"]} == {"nano33ble", "uno"}
        shown = cli("devices", "show", "sim-0001", "--broker", url, "--fleet", "clisim", "--wait", "30", "--json")
        assert shown.exit_code == 0, shown.stderr
        doc = json.loads(shown.stdout)
        assert doc["td"]["id"] == "urn:tinyfleet:device:sim-0001" and doc["presence"]["online"] is True
        sim.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, then the summary
        out, errtext = sim.communicate(timeout=120)
    finally:
        if sim.poll() is None:
            sim.kill()
    assert sim.returncode == 0, errtext
    summary = json.loads(out)
    assert summary["connected"] == 5 and summary["unfit_devices"] == 1
    after = cli("devices", "list", "--broker", url, "--fleet", "clisim", "--wait", "1", "--json")
    assert after.exit_code == 0, after.stderr
    assert not any(d["online"] for d in json.loads(after.stdout)["devices"])  # clean stop said offline


def test_bad_arguments_give_one_line_errors(cli: Cli, mosquitto: BrokerInfo) -> None:
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    cases = [
        (["devices", "run", "--id", "a/b", "--broker", url, "--duration", "0"], "invalid device id 'a/b'", 2),
        (["devices", "run", "--id", "ok", "--board", "pdp11", "--broker", url], "unknown board 'pdp11'", 2),
        (["devices", "list", "--broker", "http://x:1"], "must look like mqtt://host:port", 2),
        (["devices", "show", "ghost", "--broker", url, "--fleet", "nobody", "--wait", "0.2"],
         "device 'ghost' is not known", 1),
        (["devices", "simulate", "--n", "2", "--task", "nope", "--broker", url], "unknown use case 'nope'", 2),
    ]
    for args, message, code in cases:
        r = cli(*args)
        assert r.exit_code == code, (args, r.exit_code, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""


def test_run_one_agent_for_a_moment(cli: Cli, mosquitto: BrokerInfo, tmp_path: Path) -> None:
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    r = cli("devices", "run", "--id", "solo-1", "--task", "sine", "--broker", url, "--duration", "0.5",
            "--state-dir", str(tmp_path / "st"), "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["device"] == "solo-1"
