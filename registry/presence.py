"""Keep the registry's devices live from MQTT: retained Thing Descriptions and presence.

Devices publish their TD (retained) on `tinyfleet/v1/<fleet>/<id>/td` and `{online, ts}`
(retained, cleared to offline by the broker's Last Will) on `.../presence`. The listener subscribes
to both for a fleet (or all fleets), adds/replaces devices from TDs and records online state and
last contact. A malformed message is counted and logged, never fatal: the registry must survive
anything a device sends.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from typing import Any

from devices.topics import ROOT, check_name, parse_topic
from registry.exceptions import RegistryError
from registry.ingest_device import add_device, set_presence
from registry.store import RegistryStore

log = logging.getLogger(__name__)


class PresenceListener:
    """Subscribe to TDs and presence of `fleet` ("+" = every fleet) and mirror them into `store`.

    Use as a context manager; `wait_for(predicate, timeout)` helps callers (and tests) wait until
    a given state has been recorded.

    Attributes
    ----------
    devices_added : int
        TDs ingested.
    presence_updates : int
        Presence messages recorded.
    rejected : list of str
        One line per message that could not be used (topic: reason).
    """

    def __init__(self, store: RegistryStore, host: str, port: int, *, fleet: str = "+",
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 ca: str | None = None, cert: str | None = None, key: str | None = None) -> None:
        self.store = store
        self.host, self.port = host, port
        self.fleet = fleet if fleet == "+" else check_name(fleet, what="fleet name")
        self._auth = (username, password)
        self._tls = (tls, ca, cert, key)
        self._lock = threading.Condition()
        self.devices_added = 0
        self.presence_updates = 0
        self.rejected: list[str] = []
        self._client: Any = None

    def __enter__(self) -> PresenceListener:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
        if self._auth[0]:
            client.username_pw_set(self._auth[0], self._auth[1])
        if self._tls[0]:  # mqtts; with a secured tinyfleet broker pass its CA and a client certificate
            client.tls_set(ca_certs=self._tls[1], certfile=self._tls[2], keyfile=self._tls[3])
        subscribed = threading.Event()
        refused: list[str] = []

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if reason.is_failure:  # e.g. a secured broker and no or wrong credentials: say so at once
                refused.append(str(reason))
                subscribed.set()
                return
            c.subscribe([(f"{ROOT}/{self.fleet}/+/td", 1), (f"{ROOT}/{self.fleet}/+/presence", 1)])

        client.on_connect = on_connect
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = self._on_message
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:  # refused, unreachable, TLS verification failed
            raise RegistryError(f"MQTT broker {self.host}:{self.port}: cannot connect: {exc}") from None
        client.loop_start()
        if not subscribed.wait(10) or refused:
            client.disconnect()
            client.loop_stop()
            if refused:
                raise RegistryError(f"MQTT broker {self.host}:{self.port} refused the connection: {refused[0]} "
                                    "(a secured tinyfleet broker needs --credentials FILE)")
            raise RegistryError(f"MQTT broker {self.host}:{self.port}: no subscription acknowledgement within 10 s")
        self._client = client
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            topic = parse_topic(msg.topic)
        except ValueError as exc:
            return self._reject(msg.topic, str(exc))
        if not msg.payload:  # a cleared retained message
            return None
        try:
            doc = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            return self._reject(msg.topic, "payload is not JSON")
        try:
            with self._lock:
                if topic.kind == "td":
                    add_device(self.store, doc, source=f"TD on {msg.topic}")
                    self.devices_added += 1
                else:
                    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
                        return self._reject(msg.topic, "presence needs a boolean 'online'")
                    ts = doc.get("ts")
                    seen = (datetime.fromtimestamp(float(ts), tz=timezone.utc)
                            if isinstance(ts, (int, float)) and not isinstance(ts, bool) else datetime.now(timezone.utc))
                    if not set_presence(self.store, topic.device_id, online=doc["online"], seen=seen):
                        return self._reject(msg.topic, f"device {topic.device_id} not registered yet")
                    self.presence_updates += 1
                self._lock.notify_all()
        except RegistryError as exc:
            self._reject(msg.topic, str(exc).splitlines()[0])
        return None

    def _reject(self, topic: str, reason: str) -> None:
        with self._lock:
            self.rejected.append(f"{topic}: {reason}")
            self._lock.notify_all()
        log.warning("registry ignored %s: %s", topic, reason)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Block until `predicate(self)` is true (re-checked after each message) or `timeout` passes."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout=timeout)
