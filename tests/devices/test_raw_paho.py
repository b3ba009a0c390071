"""A device written from docs/protocol.md with raw paho calls (not the project's agent) joins and trains.

Only the server side uses tinyfleet code (`FleetClient`, `devices.wire.protocol`); the device below
builds and parses frames by hand, exactly as a C or Rust device would from the document.
"""

from __future__ import annotations

import json
import struct
import time
import uuid

import jsonschema
import numpy as np
import paho.mqtt.client as mqtt

from broker.process import BrokerInfo
from devices.link.address import BrokerAddress
from devices.link.fleet_client import FleetClient
from devices.wire import protocol as p
from tests.support.waiting import wait_until

FLEET, DEV = "raw", "raw-dev-1"
ROOT = f"tinyfleet/v1/{FLEET}/{DEV}"


def _frame(header: dict, tensors: list[tuple[str, np.ndarray]]) -> bytes:
    entries, data = [], b""
    for name, a in tensors:
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        entries.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "offset": len(data),
                        "nbytes": len(raw)})
        data += raw + b"\0" * (-len(raw) % 8)
    h = json.dumps({**header, "tensors": entries}).encode()
    return struct.pack("<I", len(h)) + h + data


def _parse(payload: bytes) -> tuple[dict, list[np.ndarray]]:
    (n,) = struct.unpack_from("<I", payload)
    h = json.loads(payload[4:4 + n])
    body = payload[4 + n:]
    ws = [np.frombuffer(body[t["offset"]:t["offset"] + t["nbytes"]], "<" + np.dtype(t["dtype"]).str[1:])
          .reshape(t["shape"]).copy() for t in h["tensors"]]
    return h, ws


class RawDevice:
    """A linear-regression device y = a*x + b (one dense layer 1->1), from the protocol document."""

    def __init__(self, host: str, port: int) -> None:
        self.rng = np.random.default_rng(0)
        self.x = self.rng.uniform(-1, 1, 32).astype(np.float32)
        self.y = (3.0 * self.x - 1.0).astype(np.float32)
        self.trained = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEV, protocol=mqtt.MQTTv5)
        self.c.will_set(ROOT + "/presence", json.dumps(self._presence(False, "connection lost")), qos=1, retain=True)
        self.c.on_connect = self.on_connect
        self.c.on_message = self.on_message
        self.c.connect(host, port)
        self.c.loop_start()

    def _presence(self, online: bool, reason: str | None = None) -> dict:
        doc = {"v": 1, "type": "presence", "device": DEV, "fleet": FLEET, "online": online, "ts": time.time()}
        return {**doc, "reason": reason} if reason else doc

    def on_connect(self, c: mqtt.Client, *_: object) -> None:
        c.subscribe(ROOT + "/task", 1)
        href = f"mqtt://{c.host}:{c.port}"
        td = {"@context": ["https://www.w3.org/2022/wot/td/v1.1", {"mqv": "https://www.w3.org/2019/wot/mqtt#"}],
              "id": f"urn:tinyfleet:device:{DEV}", "title": DEV,
              "securityDefinitions": {"nosec_sc": {"scheme": "nosec"}}, "security": ["nosec_sc"],
              "actions": {"train": {"forms": [{"href": href, "op": "invokeaction", "mqv:topic": ROOT + "/task",
                                               "mqv:controlPacket": "publish", "mqv:qos": "1"}]}}}
        c.publish(ROOT + "/td", json.dumps(td), qos=1, retain=True)
        c.publish(ROOT + "/presence", json.dumps(self._presence(True)), qos=1, retain=True)

    def on_message(self, c: mqtt.Client, _: object, msg: mqtt.MQTTMessage) -> None:
        h, ws = _parse(msg.payload)
        base = {"v": 1, "type": "result", "id": uuid.uuid4().hex, "reply-to": h.get("id"), "device": DEV,
                "task": h.get("type"), "run": h.get("run"), "round": h.get("round")}
        if h.get("v") != 1 or h.get("type") != "task.train":
            c.publish(ROOT + "/result", _frame({**base, "ok": False, "metrics": {},
                                                "error": {"code": "unknown-type", "reason": "only train"}}, []), qos=1)
            return
        w, b = ws[0].astype(np.float32), ws[1].astype(np.float32)  # w0 (1,1), b0 (1,)
        lr, steps = h["config"]["lr"], h["config"]["local-steps"]
        losses = []
        for s in range(steps):
            i = s % len(self.x)
            err = float(self.x[i] * w[0, 0] + b[0] - self.y[i])
            losses.append(err * err)
            w[0, 0] -= lr * 2 * err * self.x[i]
            b[0] -= lr * 2 * err
        self.trained += 1
        c.publish(ROOT + "/result", _frame({**base, "ok": True, "encoding": "weights",
                                            "metrics": {"num-examples": steps, "train-loss": float(np.mean(losses))}},
                                           [("w0", w), ("b0", b)]), qos=1)

    def stop(self) -> None:
        self.c.publish(ROOT + "/presence", json.dumps(self._presence(False, "shutdown")), qos=1,
                       retain=True).wait_for_publish(5)
        self.c.disconnect()
        self.c.loop_stop()


def test_a_raw_paho_device_joins_and_answers_train_tasks(mosquitto: BrokerInfo) -> None:
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    device = RawDevice(mosquitto.host, mosquitto.port)
    try:
        with FleetClient(address, fleet=FLEET, client_id="srv-raw") as fc:
            assert fc.wait_online(1, timeout=5) == [DEV]
            assert wait_until(lambda: DEV in fc.tds)
            td_schema = json.loads((p.SCHEMA_DIR / "td-json-schema-validation.json").read_text())
            jsonschema.Draft7Validator(td_schema).validate(fc.tds[DEV])
            jsonschema.Draft202012Validator(p.load_schema("presence")).validate(fc.presence[DEV])
            theta = [np.zeros((1, 1), np.float32), np.zeros(1, np.float32)]
            for rnd in range(1, 4):  # three rounds of plain federated training with one device
                tid, frame = p.encode_task(p.MessageType.TRAIN, config={"local-steps": 64, "lr": 0.1},
                                           weights=theta, run="raw-run", server_round=rnd)
                reply = fc.request({DEV: (tid, frame)}, timeout=5)[DEV]
                assert reply is not None and reply.header["ok"]
                jsonschema.Draft202012Validator(p.load_schema("result")).validate(reply.header)
                assert reply.header["round"] == rnd and reply.header["reply-to"] == tid
                theta = reply.arrays()
            np.testing.assert_allclose([theta[0][0, 0], theta[1][0]], [3.0, -1.0], atol=0.05)
            assert device.trained == 3
            # a task the raw device does not support gets an error reply the server can read
            tid, frame = p.encode_task(p.MessageType.EVALUATE)
            reply = fc.request({DEV: (tid, frame)}, timeout=5)[DEV]
            assert reply is not None and reply.header["error"]["code"] == "unknown-type"
            assert fc.bad_messages == []
    finally:
        device.stop()
    with FleetClient(address, fleet=FLEET, client_id="srv-raw-2") as late:
        assert wait_until(lambda: DEV in late.presence)
        assert late.presence[DEV]["online"] is False
