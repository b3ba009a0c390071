"""`tinyfleet serve` as users run it: the console script in a subprocess (it is stopped with Ctrl-C), on an on-disk
store, with a token from `tinyfleet serve token` (in-process), following TDs that devices publish on a real
Mosquitto."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from click.testing import Result

from broker.process import BrokerInfo
from devices.boards import BOARDS
from devices.link.address import parse_broker_url
from devices.link.client import MqttClient
from devices.wire.thing_description import td_payload, thing_description
from devices.wire.topics import device_topic
from registry.store import open_store
from tests.support.models import TINYFLEET
from tests.support.serve import build_demo_fleet

Cli = Callable[..., Result]
URL = re.compile(r"serving the registry on (http://127\.0\.0\.1:\d+)")


def _publish_td(broker: BrokerInfo, device_id: str) -> None:
    td = thing_description(device_id=device_id, fleet="lab", board=BOARDS["nano33ble"], use_case="sine",
                           host="127.0.0.1", port=broker.port, sensors=("scalar-signal",))
    with MqttClient(parse_broker_url(broker.url), client_id=f"pub-{device_id}") as c:
        c.publish(device_topic("lab", device_id, "td"), td_payload(td), qos=1, retain=True).wait_for_publish(10)


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
    # subprocess: the server runs alongside the test and is stopped the way a user stops it (SIGINT)
    proc = subprocess.Popen([TINYFLEET, "serve", *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = URL.search(line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"tinyfleet serve did not start: {''.join(seen)[-2000:]}")


def test_serve_from_the_cli_with_token_dashboard_and_mqtt_ingestion(cli: Cli, tmp_path: Path,
                                                                    mosquitto: BrokerInfo) -> None:
    store_dir, runs = tmp_path / "registry", tmp_path / "runs"
    with open_store(store_dir) as st:
        fleet = build_demo_fleet(st, runs, n_devices=6)
    tokens = tmp_path / "tokens.json"
    made = cli("serve", "token", "--tokens", str(tokens), "--name", "ci", "--json")
    assert made.exit_code == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    assert token not in tokens.read_text() and oct(tokens.stat().st_mode & 0o777) == "0o600"
    dup = cli("serve", "token", "--tokens", str(tokens), "--name", "ci")
    assert dup.exit_code == 1 and dup.stderr.startswith("error: ") and "exists" in dup.stderr

    _publish_td(mosquitto, "mqtt-dev-1")  # retained before the server starts: ingested on subscribe
    proc, url = _start(["--store", str(store_dir), "--runs", str(runs), "--port", "0", "--tokens", str(tokens),
                        "--broker", mosquitto.url, "--fleet", "lab"])
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            page = http.get("/")
            assert page.status_code == 200 and all(d in page.text for d in fleet.devices)
            assert fleet.run_id in page.text
            from tests.support.waiting import wait_until

            def listed() -> list[str]:
                return [t["id"] for t in http.get("/things", params={"limit": 100}).json()]

            assert wait_until(lambda: "urn:tinyfleet:device:mqtt-dev-1" in listed(), timeout=20)
            events: queue.Queue[str] = queue.Queue()

            def sse() -> None:
                try:
                    with httpx.Client(timeout=httpx.Timeout(30, read=None)) as c, \
                            c.stream("GET", f"{url}/events/thing_created") as r:
                        for line in r.iter_lines():
                            events.put(line)
                except httpx.HTTPError:  # the server closes open streams when it stops
                    return

            threading.Thread(target=sse, daemon=True).start()
            assert wait_until(lambda: not events.empty(), timeout=20)  # the stream's opening comment
            _publish_td(mosquitto, "mqtt-dev-2")
            got: list[str] = []
            assert wait_until(lambda: (got.extend(_drain(events)) or
                                       'data: {"id": "urn:tinyfleet:device:mqtt-dev-2"}' in got), timeout=20), got
            td: dict[str, Any] = {"@context": "https://www.w3.org/2022/wot/td/v1.1", "title": "Lamp",
                                  "security": "nosec_sc", "securityDefinitions": {"nosec_sc": {"scheme": "nosec"}}}
            r = http.put("/things/urn:example:lamp", json=td)
            assert r.status_code == 401
            r = http.put("/things/urn:example:lamp", json=td, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 201, r.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    with open_store(store_dir) as st:  # the write went to the on-disk store
        assert st.ask("ASK WHERE { <urn:example:lamp> td:title 'Lamp' }")
        assert st.ask("ASK WHERE { ?d schema:identifier 'mqtt-dev-2' ; tf:ramBytes ?r }")


def _drain(q: queue.Queue[str]) -> list[str]:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def test_serve_refuses_bad_arguments(cli: Cli, tmp_path: Path) -> None:
    r = cli("serve", "--store", str(tmp_path / "s"), "--broker", "ftp://nope", "--port", "0")
    assert r.exit_code == 2 or (r.exit_code == 1 and r.stderr.startswith("error: "))
    assert "Traceback" not in r.stderr
    r = cli("serve", "--store", str(tmp_path / "s"), "--runs", str(tmp_path / "missing"), "--port", "0")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
