"""`tinyfleet registry listen` in-process against a real Mosquitto."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import Result

from broker.process import free_port
from devices.boards import get_board
from devices.wire.thing_description import td_payload, thing_description
from tests.support.registry import td

Cli = Callable[..., Result]


@pytest.fixture()
def publisher(fresh_broker) -> Iterator[mqtt.Client]:  # type: ignore[no-untyped-def]
    """A device-side client on a broker of this test alone (other tests leave retained messages on the
    session broker, which `listen` on every fleet would count)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="listen-test-device")
    client.connect(fresh_broker.host, fresh_broker.port)
    client.loop_start()
    client.retained: list[str] = []  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        for topic in client.retained:  # type: ignore[attr-defined]
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()


def _retain(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.retained.append(topic)  # type: ignore[attr-defined]


def _json(proc) -> dict:  # type: ignore[no-untyped-def]
    assert proc.exit_code == 0, proc.stderr[-1500:]
    return json.loads(proc.stdout)


def test_listen_ingests_retained_td_and_presence(cli: Cli, fresh_broker, publisher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a device of fleet "lj" leaves its real TD (devices.wire.thing_description) and presence retained,
    # a second device of another fleet must be ignored, and a third one sends junk.
    board = get_board("nano33ble")
    doc = thing_description(device_id="lj-dev-1", fleet="lj", board=board, use_case="sine",
                            host=fresh_broker.host, port=fresh_broker.port, sensors=["scalar-signal"])
    _retain(publisher, "tinyfleet/v1/lj/lj-dev-1/td", td_payload(doc))
    _retain(publisher, "tinyfleet/v1/lj/lj-dev-1/presence", json.dumps({"online": True, "ts": time.time()}).encode())
    _retain(publisher, "tinyfleet/v1/other/lj-dev-9/td", json.dumps(td("lj-dev-9", 4096, 32768, [])).encode())
    _retain(publisher, "tinyfleet/v1/lj/lj-dev-bad/td", b"\xff not json")
    store = tmp_path / "reg"

    # Execute
    t0 = time.monotonic()
    got = _json(cli("registry", "listen", "--broker", f"mqtt://{fresh_broker.host}:{fresh_broker.port}",
                    "--fleet", "lj", "--duration", "2", "--store", str(store), "--json"))
    elapsed = time.monotonic() - t0

    # Assert: counts, the store content (through another command), and that --duration was honoured.
    assert got["tds_ingested"] == 1 and got["presence_updates"] == 1
    assert got["store_devices"] == 1 and got["store_devices_online"] == 1
    assert len(got["rejected"]) == 1 and "lj-dev-bad/td: payload is not JSON" in got["rejected"][0]
    assert 2.0 <= got["seconds"] < 10 and elapsed < 30
    inv = _json(cli("registry", "inventory", "--store", str(store), "--json"))
    assert [(r["name"], r["online"], r["ram_bytes"], r["flash_bytes"]) for r in inv] == [
        ("lj-dev-1", True, board.ram_bytes, board.flash_bytes)]

    # A second listen on every fleet adds the other fleet's device and keeps the first one.
    got = _json(cli("registry", "listen", "--broker", f"mqtt://{fresh_broker.host}:{fresh_broker.port}",
                    "--duration", "1.5", "--store", str(store), "--json"))
    assert got["store_devices"] == 2
    names = sorted(r["name"] for r in _json(cli("registry", "inventory", "--store", str(store), "--json")))
    assert names == ["lj-dev-1", "lj-dev-9"]


_CLOSED = free_port()  # nothing listens there


@pytest.mark.parametrize(("args", "code", "match"), [
    (["--broker", "http://127.0.0.1:1883"], 2, "must look like mqtt://host:port"),
    (["--broker", "mqtt://127.0.0.1:1883", "--fleet", "a/b"], 2, "invalid fleet name 'a/b'"),
    (["--broker", f"mqtt://127.0.0.1:{_CLOSED}"], 1, f"127.0.0.1:{_CLOSED}"),
])
def test_listen_bad_input_is_one_line(cli: Cli, tmp_path: Path, args: list[str], code: int, match: str) -> None:
    proc = cli("registry", "listen", *args, "--duration", "0.5", "--store", str(tmp_path / "reg"), "--json")
    assert proc.exit_code == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert proc.stdout == ""
