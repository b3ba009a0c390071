"""`tinyfleet devices conformance` against live devices on a real Mosquitto.

A simulated device (the project's own agent) passes every check. A device that forgets to copy
`run` and `round` into its results — the bug of the old protocol.md sample, a fault the real agent
cannot produce — fails, and the message names the missing keys. The document's example device
is checked in tests/system/test_minimal_device.py on a secured broker.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from broker.process import BrokerInfo
from devices.link.address import BrokerAddress
from devices.simulator import FleetSimulator
from federation.conformance import check_device
from tinyfleet.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ["presence", "thing-description", "td-terms", "train", "train-top-p", "train-local-layers", "evaluate",
            "adapt", "duplicate-task", "unknown-type", "required-key", "large-frame", "last-will"]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minimal_device", ROOT / "examples" / "minimal_device.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeDeviceThatForgetsRunAndRound:
    """FAKE (named so): the document's example device with one fault injected — its results omit
    `run` and `round`. The real agent always copies them, so the fault has to be made up here."""

    def __init__(self, broker: BrokerInfo, fleet: str, device_id: str) -> None:
        example = _example()

        class Forgetful(example.Device):  # type: ignore[name-defined,misc]
            def result(self, task: Any, **kw: Any) -> bytes:
                frame = super().result(task, **kw)
                n = int.from_bytes(frame[:4], "little")
                header = json.loads(frame[4:4 + n])
                header.pop("run"), header.pop("round")
                body = json.dumps(header).encode()
                return len(body).to_bytes(4, "little") + body + frame[4 + n:]

        self.dev = Forgetful(device_id, fleet, 0)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        self.client.will_set(self.dev.root + "/presence", self.dev.presence(False, "connection lost"), qos=1,
                             retain=True)
        self.ready = threading.Event()
        href = f"mqtt://{broker.host}:{broker.port}"

        def on_connect(c: mqtt.Client, *_: Any) -> None:
            c.subscribe(self.dev.root + "/task", qos=1)
            c.publish(self.dev.root + "/td", json.dumps(self.dev.thing_description(href, False)), qos=1, retain=True)
            c.publish(self.dev.root + "/presence", self.dev.presence(True), qos=1, retain=True)
            self.ready.set()

        self.client.on_connect = on_connect
        self.client.on_message = lambda c, u, m: c.publish(self.dev.root + "/result", self.dev.handle(m.payload), qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.publish(self.dev.root + "/presence", b"", qos=1, retain=True).wait_for_publish(5)
        self.client.publish(self.dev.root + "/td", b"", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def test_a_simulated_device_passes_every_check(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    with FleetSimulator(n=1, use_case="sine", address=address, state_root=tmp_path, fleet="conf-sim",
                        telemetry_s=0.5) as sim:
        r = CliRunner().invoke(app, ["devices", "conformance", "--device", sim.device_ids[0], "--fleet", "conf-sim",
                                     "--broker", address.url, "--json"])
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert doc["ok"] is True and doc["failed"] == 0
    assert all(status[name] == "pass" for name in REQUIRED), status
    assert {c["name"] for c in doc["checks"] if not c["required"]} == {
        "evaluate-no-side-effects", "bad-version", "reconnect", "telemetry"}
    assert status["reconnect"] == "pass" and status["telemetry"] == "pass"


def test_a_device_that_omits_run_and_round_fails_and_the_message_names_them(mosquitto: BrokerInfo) -> None:
    fake = FakeDeviceThatForgetsRunAndRound(mosquitto, "conf-bad", "forgetful-1")
    try:
        assert fake.ready.wait(5)
        r = CliRunner().invoke(app, ["devices", "conformance", "--device", "forgetful-1", "--fleet", "conf-bad",
                                     "--broker", f"mqtt://{mosquitto.host}:{mosquitto.port}"])
    finally:
        fake.close()
    assert r.exit_code == 1
    lines = {line.split(":")[0]: line for line in r.stdout.splitlines()}
    for name in ("train", "train-top-p", "train-local-layers", "evaluate", "adapt"):
        assert lines[f"FAIL {name}"].count("the result lacks 'run' and 'round': copy 'run' and 'round' from the task") \
            == 1, lines
        assert "'run' is a required property" in lines[f"FAIL {name}"]
    assert "'run' is a required property" in lines["FAIL unknown-type"]  # error results carry them too
    assert {"PASS presence", "PASS thing-description", "PASS td-terms", "PASS large-frame",
            "PASS last-will"} <= set(lines)
    error = r.stderr.strip().splitlines()[-1]
    assert error.startswith("error: forgetful-1: ") and "required check(s) failed: train (" in error
    assert "'run' and 'round'" in error


def test_the_report_says_why_a_check_could_not_run(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    """No device at all: presence and TD fail with the topic named; nothing raises."""
    report = check_device(BrokerAddress(mosquitto.host, mosquitto.port), fleet="conf-none", device="ghost-1",
                          timeout=0.5)
    first = {c.name: c for c in report.checks}
    assert not report.ok
    assert first["presence"].detail == "no retained presence on tinyfleet/v1/conf-none/ghost-1/presence within 0.5 s"
    assert first["train"].status == "fail" and "declares no use case" in first["train"].detail


@pytest.mark.parametrize("flag", ["--device", "--fleet"])
def test_bad_names_are_usage_errors(flag: str) -> None:
    args = ["devices", "conformance", "--device", "d", "--fleet", "f", "--broker", "mqtt://127.0.0.1:1"]
    args[args.index(flag) + 1] = "a/b"
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "invalid" in r.stderr and "'a/b'" in r.stderr
