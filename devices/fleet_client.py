"""The server's side of the device protocol, without Flower: watch a fleet, send tasks, collect replies.

Used by `tinyfleet devices list|show`, the tests and the fleet benchmark; the federation grid in
`federation/` speaks the same protocol through `devices.protocol`. One paho client with its own
network thread (a server is one client, so `loop_start` is right here). Every reply is decoded
and checked; a malformed reply is recorded as a `ProtocolError` for its device, never raised.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from devices.exceptions import DeviceLinkError, ProtocolError
from devices.mqtt_link import BrokerAddress, Credentials
from devices.protocol import Frame, MessageType, decode_json_document, decode_result
from devices.topics import device_topic, fleet_filter, parse_topic

log = logging.getLogger("tinyfleet.devices")


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
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._error: str | None = None
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        cred = credentials or Credentials()
        if cred.username is not None or cred.password is not None:
            c.username_pw_set(cred.username or client_id, cred.password)
        if address.tls:
            c.tls_set(ca_certs=str(cred.ca) if cred.ca else None, certfile=str(cred.cert) if cred.cert else None,
                      keyfile=str(cred.key) if cred.key else None)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c

    def connect(self, *, timeout: float = 5.0) -> FleetClient:
        """Connect and subscribe to the fleet's presence, td, telemetry and result topics."""
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=60)
        except OSError as exc:
            raise DeviceLinkError(f"cannot connect to {self.address.url}: {exc}") from None
        self.client.loop_start()
        if not self._connected.wait(timeout) or self._error is not None:
            self.close()
            raise DeviceLinkError(self._error or f"no CONNACK from {self.address.url} within {timeout:.0f} s")
        return self

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> FleetClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ callbacks
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            hint = ("; a tinyfleet broker refuses anonymous clients: pass a server account with --credentials "
                    "(<broker dir>/security/credentials/fleet-server.json)" if "authori" in str(reason).lower() else "")
            self._error = f"broker {self.address.url} refused the connection: {reason}{hint}"
            self._connected.set()  # wakes connect() at once: a refusal (bad password, ACL) is final
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe([(fleet_filter(self.fleet, k), 1) for k in ("presence", "td", "telemetry", "result")])
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            t = parse_topic(msg.topic)
        except ValueError as exc:
            self._bad(str(exc))
            return
        payload = bytes(msg.payload)
        try:
            if t.kind == "result":
                frame = decode_result(payload)
                if frame.header["device"] != t.device_id:
                    raise ProtocolError(f"result on {msg.topic} claims to come from {frame.header['device']!r}")
                with self._cond:
                    self.results.setdefault(t.device_id, []).append(frame)
                    self._cond.notify_all()
            elif t.kind == "presence":
                if not payload:  # retained message cleared
                    with self._cond:
                        self.presence.pop(t.device_id, None)
                    return
                doc = decode_json_document(payload, expected_type=MessageType.PRESENCE)
                with self._cond:
                    self.presence[t.device_id] = doc
                    self._cond.notify_all()
            elif t.kind == "telemetry":
                doc = decode_json_document(payload, expected_type=MessageType.TELEMETRY)
                with self._cond:
                    self.telemetry[t.device_id] = doc
            elif t.kind == "td" and payload:
                td = json.loads(payload.decode("utf-8"))
                if not isinstance(td, dict):
                    raise ProtocolError("TD is not a JSON object")
                with self._cond:
                    self.tds[t.device_id] = td
                    self._cond.notify_all()
        except (ProtocolError, ValueError, UnicodeDecodeError) as exc:
            self._bad(f"{msg.topic}: {exc}")

    def _bad(self, text: str) -> None:
        log.warning("ignoring bad message: %s", text)
        with self._cond:
            self.bad_messages.append(text)

    # ------------------------------------------------------------------------------ queries
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
        info = self.client.publish(device_topic(self.fleet, device_id, "task"), frame, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeviceLinkError(f"publish to {device_id} failed: {mqtt.error_string(info.rc)}")

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
             credentials: Credentials | None = None, client_id: str | None = None) -> FleetClient:
    """Collect the retained presence and TDs (and any telemetry) of a fleet for `seconds`."""
    fc = FleetClient(address, fleet=fleet, client_id=client_id or f"tinyfleet-cli-{int(time.time() * 1000) % 10**9}",
                     credentials=credentials)
    fc.connect()
    time.sleep(seconds)
    fc.close()
    return fc
