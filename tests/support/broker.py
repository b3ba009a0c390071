"""Raw paho MQTT v5 clients for the security tests: they record what the broker answers and what arrives."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from devices.link.address import Credentials

NOT_AUTHORIZED = 0x87
BAD_USER_OR_PASSWORD = 0x86


@dataclass
class Probe:
    """One MQTT v5 client whose CONNACK, PUBACK reason codes, disconnects and messages are recorded."""

    client: mqtt.Client
    connack: int | None = None
    pubacks: dict[int, int] = field(default_factory=dict)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    disconnects: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    connack_props: Any = None

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False, timeout: float = 5.0) -> int:
        """QoS 1 PUBLISH; return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.pubacks, timeout), f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def subscribe(self, *filters: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe([(f, 1) for f in filters])
        assert done.wait(5), "no SUBACK"

    def wait_for(self, pred: Any, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), timeout)

    def topics(self) -> list[str]:
        with self.cond:
            return [t for t, _ in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(port: int, *, client_id: str, creds: Credentials | None = None, tls: bool = False,
            wait: float = 5.0) -> Probe:
    """Connect a probe; returns once CONNACK arrived (or `wait` passed: then `connack` stays None)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.reconnect_delay_set(60, 60)  # one attempt per test: a refused probe must not retry in the background
    probe = Probe(c)
    if creds is not None and creds.username is not None:
        c.username_pw_set(creds.username, creds.password)
    if tls:
        assert creds is not None
        c.tls_set(ca_certs=str(creds.ca), certfile=str(creds.cert) if creds.cert else None,
                  keyfile=str(creds.key) if creds.key else None)

    def on_connect(cl: Any, ud: Any, flags: Any, reason: Any, props: Any) -> None:
        with probe.cond:
            probe.connack, probe.connack_props = reason.value, props
            probe.cond.notify_all()

    def on_publish(cl: Any, ud: Any, mid: int, reason: Any, props: Any) -> None:
        with probe.cond:
            probe.pubacks[mid] = reason.value
            probe.cond.notify_all()

    def on_message(cl: Any, ud: Any, msg: mqtt.MQTTMessage) -> None:
        with probe.cond:
            probe.received.append((msg.topic, bytes(msg.payload)))
            probe.cond.notify_all()

    def on_disconnect(cl: Any, ud: Any, flags: Any, reason: Any, props: Any) -> None:
        with probe.cond:
            probe.disconnects.append(reason.value)
            probe.cond.notify_all()

    c.on_connect, c.on_publish, c.on_message, c.on_disconnect = on_connect, on_publish, on_message, on_disconnect
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    probe.wait_for(lambda p: p.connack is not None, wait)
    return probe
