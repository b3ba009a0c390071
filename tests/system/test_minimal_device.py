"""examples/minimal_device.py — the document's sample device — joins real runs on a secured broker.

The device is the file a firmware engineer copies (numpy + paho only), started as its own process
with the JSON `tinyfleet devices enroll --json` printed; the coordinator is a real `tinyfleet
federate run` (in-process through Typer) with Reptile, FedAvg and TinyMetaFed, alone and mixed with
simulated devices enrolled through `--broker-dir`. docs/protocol.md includes the file verbatim.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from broker.accounts import ensure_server_account
from broker.process import MosquittoBroker
from devices.link.address import BrokerAddress
from devices.link.fleet_client import FleetClient
from tests.support.waiting import wait_until
from tinyfleet.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "minimal_device.py"
DOC = ROOT / "docs" / "protocol.md"
FLEET = "example"


def test_the_document_includes_the_example_verbatim() -> None:
    """docs/protocol.md quotes examples/minimal_device.py between markers; the two cannot drift."""
    text = DOC.read_text(encoding="utf-8")
    begin = "<!-- BEGIN examples/minimal_device.py -->\n```python\n"
    end = "```\n<!-- END examples/minimal_device.py -->"
    assert text.count(begin) == 1 and text.count(end) == 1, "the markers around the included example are missing"
    quoted = text[text.index(begin) + len(begin):text.index(end)]
    assert quoted == EXAMPLE.read_text(encoding="utf-8")


def test_the_example_imports_only_the_standard_library_numpy_and_paho() -> None:
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    tops |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert tops - sys.stdlib_module_names == {"numpy", "paho"}


class Running:
    """The example device as its own process (stopped with SIGTERM: it says offline, then disconnects)."""

    def __init__(self, credentials: Path, *, seed: int = 0) -> None:
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--credentials", str(credentials),
                                      "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=20)
        return out


def enroll(directory: Path, device_id: str, out: Path) -> Path:
    r = CliRunner().invoke(app, ["devices", "enroll", device_id, "--dir", str(directory), "--fleet", FLEET, "--json"])
    assert r.exit_code == 0, r.stderr
    out.write_text(r.stdout)
    assert json.loads(r.stdout)["broker"].startswith("mqtt://127.0.0.1:")
    return out


def federate(directory: Path, tmp_path: Path, *args: str) -> dict:
    r = CliRunner().invoke(app, ["federate", "run", "--task", "sine", "--broker-dir", str(directory), "--fleet", FLEET,
                                 "--out", str(tmp_path / "runs"), "--round-timeout", "20", "--quorum-timeout", "20",
                                 "--local-steps", "20", "--json", *args])
    assert r.exit_code == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_the_example_device_joins_reptile_fedavg_and_tinymetafed_runs_alone_and_mixed(
        secured: tuple[Path, MosquittoBroker], tmp_path: Path) -> None:
    d, broker = secured
    device = Running(enroll(d, "ex-1", tmp_path / "ex-1.json"))
    try:
        with FleetClient(BrokerAddress("127.0.0.1", int(broker.port or 0)), fleet=FLEET, client_id="watch",
                         credentials=ensure_server_account(d, "watch")) as fc:
            assert wait_until(lambda: "ex-1" in fc.online() and "ex-1" in fc.tds, timeout=20), device.proc.poll()
        for strategy in ("reptile", "fedavg", "tinymetafed"):
            res = federate(d, tmp_path, "--strategy", strategy, "--rounds", "2", "--run-id", f"alone-{strategy}")
            for r in res["rounds"]:
                assert (r["sampled"], r["replies"], r["failures"], r["eval_replies"], r["eval_failures"]) == \
                    (1, 1, 0, 1, 0), (strategy, r)
                assert np.isfinite(r["loss"]) and "skipped" not in r
        # mixed with two simulated devices, enrolled on the same broker through --broker-dir
        res = federate(d, tmp_path, "--strategy", "tinymetafed", "--rounds", "2", "--simulate", "2", "--quorum", "3",
                       "--run-id", "mixed")
        assert [(r["replies"], r["failures"], r["eval_replies"]) for r in res["rounds"]] == [(3, 0, 3)] * 2
        assert {"train_loss", "eval_loss"} <= set(res["rounds"][-1])  # no metric lost to spelling
    finally:
        out = device.stop()
    assert device.proc.returncode == 0, out
    assert "ex-1 online at mqtt://127.0.0.1:" in out


def test_the_example_device_passes_conformance_on_a_secured_broker(secured: tuple[Path, MosquittoBroker],
                                                                  tmp_path: Path) -> None:
    d, broker = secured
    creds = enroll(d, "ex-2", tmp_path / "ex-2.json")
    device = Running(creds, seed=3)
    url = f"mqtt://127.0.0.1:{broker.port}"
    try:
        with FleetClient(BrokerAddress("127.0.0.1", int(broker.port or 0)), fleet=FLEET, client_id="watch",
                         credentials=ensure_server_account(d, "watch")) as fc:
            assert wait_until(lambda: "ex-2" in fc.online(), timeout=20), device.proc.poll()
        server = ensure_server_account(d, "conformance-test")
        server_file = tmp_path / "server.json"
        server_file.write_text(json.dumps({"username": server.username, "password": server.password}))
        r = CliRunner().invoke(app, ["devices", "conformance", "--device", "ex-2", "--fleet", FLEET, "--broker", url,
                                     "--credentials", str(server_file), "--device-credentials", str(creds), "--json"])
        assert r.exit_code == 0, r.stdout + r.stderr
        status = {c["name"]: c["status"] for c in json.loads(r.stdout)["checks"]}
        assert {k for k, v in status.items() if v != "pass"} == {"telemetry"}  # the example's TD offers none
        # without the device's own credentials the Last Will cannot be tested on a secured broker: said, not failed
        r = CliRunner().invoke(app, ["devices", "conformance", "--device", "ex-2", "--fleet", FLEET, "--broker", url,
                                     "--credentials", str(server_file), "--json"])
        assert r.exit_code == 0, r.stdout + r.stderr
        will = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "last-will")
        assert will["status"] == "skip" and "--device-credentials" in will["detail"]
    finally:
        out = device.stop()
    assert device.proc.returncode == 0, out
