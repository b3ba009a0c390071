"""The server's side of the device protocol, without Flower: watch a fleet, send tasks, collect replies.

Used by `tinyfleet devices list|show`, the tests and the fleet benchmark; the federation grid in
`federation/` speaks the same protocol through `devices.wire.protocol`. One `MqttClient` with its own
network thread (a server is one client, so paho's `loop_start` is right here). Every reply is decoded
and checked; a malformed reply is recorded as a `ProtocolError` for its device, never raised.

The device a message is about is the one in its topic (the broker authenticated the sender for
it): a TD, presence, telemetry or result that names another device is dropped and counted as
``wrong-device`` in `rejected` (so `devices list|show` never shows one device's claims as
another's).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from devices.exceptions import ProtocolError
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient
from devices.wire.protocol import Frame, MessageType, decode_json_document, decode_result
from devices.wire.thing_description import described_device
from devices.wire.topics import device_topic, fleet_filter, parse_topic

log = logging.getLogger("tinyfleet.devices")

class WrongDevice(ProtocolError):
    """A message on one device's topic that claims to be about another device."""


def _same_device(topic_device: str, named: object, what: str) -> None:
    if named != topic_device:
        raise WrongDevice(f"{what} on {topic_device}'s topic names device {str(named)[:64]!r}")


class FleetClient:
    """Watch presence/TD/telemetry of a fleet and exchange tasks and results with its devices.

    Parameters
    ----------
    address : BrokerAddress
    fleet : str
    client_id : str, default="fleet-server"
    credentials : Credentials, optional
    """

    def __init__(self, address: BrokerAddress, *, fleet: str, client_id: str = "fleet-server",
                 credentials: Credentials | None = None) -> None:
        self.address = address
        self.fleet = fleet
        self.presence: dict[str, dict[str, Any]] = {}
        self.tds: dict[str, dict[str, Any]] = {}
        self.telemetry: dict[str, dict[str, Any]] = {}
        self.results: dict[str, list[Frame]] = {}
        self.bad_messages: list[str] = []
        self.rejected: Counter[str] = Counter()
        self._cond = threading.Condition()
        self.mqtt = MqttClient(address, credentials, client_id=client_id,
                               subscriptions=[fleet_filter(fleet, k)
                                              for k in ("presence", "td", "telemetry", "result")],
                               on_message=self._on_message)

    def connect(self, *, timeout: float = 5.0) -> FleetClient:
        """Connect and subscribe to the fleet's presence, td, telemetry and result topics."""
        self.mqtt.connect(timeout=timeout)
        return self

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.mqtt.close()

    def __enter__(self) -> FleetClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ callbacks
    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            t = parse_topic(topic)
        except ValueError as exc:
            self._bad(str(exc))
            return
        try:
            if t.kind == "result":
                frame = decode_result(payload)
                _same_device(t.device_id, frame.header["device"], "a result")
                with self._cond:
                    self.results.setdefault(t.device_id, []).append(frame)
                    self._cond.notify_all()
            elif t.kind == "presence":
                if not payload:  # retained message cleared
                    with self._cond:
                        self.presence.pop(t.device_id, None)
                    return
                doc = decode_json_document(payload, expected_type=MessageType.PRESENCE)
                _same_device(t.device_id, doc.get("device"), "a presence document")
                with self._cond:
                    self.presence[t.device_id] = doc
                    self._cond.notify_all()
            elif t.kind == "telemetry":
                doc = decode_json_document(payload, expected_type=MessageType.TELEMETRY)
                _same_device(t.device_id, doc.get("device"), "telemetry")
                with self._cond:
                    self.telemetry[t.device_id] = doc
                    self._cond.notify_all()
            elif t.kind == "td" and payload:
                td = json.loads(payload.decode("utf-8"))
                if not isinstance(td, dict):
                    raise ProtocolError("TD is not a JSON object")
                _same_device(t.device_id, described_device(td), "a Thing Description")
                with self._cond:
                    self.tds[t.device_id] = td
                    self._cond.notify_all()
        except WrongDevice as exc:
            self._bad(f"{topic}: {exc} (wrong-device)", reason="wrong-device")
        except (ProtocolError, ValueError, UnicodeDecodeError) as exc:
            self._bad(f"{topic}: {exc}")

    def _bad(self, text: str, *, reason: str = "malformed") -> None:
        log.warning("ignoring bad message: %s", text)
        with self._cond:
            self.bad_messages.append(text)
            self.rejected[reason] += 1

    # ------------------------------------------------------------------------------ queries
    def wait(self, predicate: Callable[[FleetClient], object], *, timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-checked after every message) or `timeout` passes."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(predicate(self)), timeout)

    def online(self) -> list[str]:
        """Devices whose retained presence says online."""
        with self._cond:
            return sorted(d for d, doc in self.presence.items() if doc.get("online"))

    def wait_online(self, n: int, *, timeout: float) -> list[str]:
        """Wait until at least `n` devices are online (or `timeout`); return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for doc in self.presence.values() if doc.get("online")) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return self.online()

    def send(self, device_id: str, frame: bytes) -> None:
        """Publish one task frame (QoS 1) to a device's task topic."""
        self.mqtt.publish(device_topic(self.fleet, device_id, "task"), frame, qos=1)

    def reply(self, device_id: str, task_id: str) -> Frame | None:
        """The first reply of `device_id` to `task_id`, if it has arrived."""
        with self._cond:
            for f in self.results.get(device_id, []):
                if f.header.get("reply-to") == task_id:
                    return f
        return None

    def request(self, tasks: Mapping[str, tuple[str, bytes | Sequence[bytes]]], *,
                timeout: float) -> dict[str, Frame | None]:
        """Send ``{device: (task id, frame or chunk frames)}`` and wait for one reply per device.

        Returns ``{device: reply or None}`` (None = no reply within `timeout`).
        """
        for device_id, (_, frames) in tasks.items():
            for frame in [frames] if isinstance(frames, (bytes, bytearray)) else frames:
                self.send(device_id, bytes(frame))
        deadline = time.monotonic() + timeout
        out: dict[str, Frame | None] = {}
        with self._cond:
            while True:
                out = {d: self._find(d, tid) for d, (tid, _) in tasks.items()}
                left = deadline - time.monotonic()
                if all(v is not None for v in out.values()) or left <= 0:
                    return out
                self._cond.wait(left)

    def _find(self, device_id: str, task_id: str) -> Frame | None:
        for f in self.results.get(device_id, []):
            if f.header.get("reply-to") == task_id:
                return f
        return None

    def replies_to(self, device_id: str, task_id: str) -> list[Frame]:
        """Every reply (duplicates included) of a device to one task id."""
        with self._cond:
            return [f for f in self.results.get(device_id, []) if f.header.get("reply-to") == task_id]


def snapshot(address: BrokerAddress, *, fleet: str, seconds: float = 1.0,
             credentials: Credentials | None = None, client_id: str | None = None,
             until: Callable[[FleetClient], object] | None = None) -> FleetClient:
    """Collect the retained presence and TDs (and any telemetry) of a fleet for `seconds`.

    With `until`, stop as soon as `until(client)` holds (e.g. one device's TD and presence have
    arrived), waiting at most `seconds`: a condition, not a guess at how long delivery takes.
    """
    fc = FleetClient(address, fleet=fleet, client_id=client_id or f"tinyfleet-cli-{int(time.time() * 1000) % 10**9}",
                     credentials=credentials)
    fc.connect()
    try:
        if until is None:
            time.sleep(seconds)
        else:
            fc.wait(until, timeout=seconds)
    finally:
        fc.close()
    return fc
