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
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from devices.exceptions import DeviceLinkError
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient
from devices.wire.topics import ROOT, check_name, parse_topic
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

    def __init__(self, store: RegistryStore, address: BrokerAddress, credentials: Credentials | None = None, *,
                 fleet: str = "+", client_id: str | None = None,
                 ingest: Callable[[Any, str], object] | None = None) -> None:
        self.store = store
        # How a TD is stored: `add_device` by default; `tinyfleet serve` passes its directory's
        # `ingest`, which validates the same way and also announces the change to SSE clients.
        self._ingest = ingest or (lambda doc, source: add_device(self.store, doc, source=source))
        self.address = address
        self.fleet = fleet if fleet == "+" else check_name(fleet, what="fleet name")
        self._lock = threading.Condition()
        self.devices_added = 0
        self.presence_updates = 0
        self.rejected: list[str] = []
        self._mqtt = MqttClient(address, credentials, keepalive=30,
                                client_id=client_id or f"tinyfleet-registry-{uuid.uuid4().hex[:8]}",
                                subscriptions=[f"{ROOT}/{self.fleet}/+/td", f"{ROOT}/{self.fleet}/+/presence"],
                                on_message=self._on_message)

    def __enter__(self) -> PresenceListener:
        try:
            self._mqtt.connect(timeout=10)
        except DeviceLinkError as exc:
            raise RegistryError(f"registry listener: {exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._mqtt.close()

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        try:
            topic = parse_topic(topic_name)
        except ValueError as exc:
            return self._reject(topic_name, str(exc))
        if not payload:  # a cleared retained message
            return None
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return self._reject(topic_name, "payload is not JSON")
        try:
            with self._lock:
                if topic.kind == "td":
                    self._ingest(doc, f"TD on {topic_name}")
                    self.devices_added += 1
                else:
                    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
                        return self._reject(topic_name, "presence needs a boolean 'online'")
                    ts = doc.get("ts")
                    seen = (datetime.fromtimestamp(float(ts), tz=UTC)
                            if isinstance(ts, (int, float)) and not isinstance(ts, bool) else datetime.now(UTC))
                    if not set_presence(self.store, topic.device_id, online=doc["online"], seen=seen):
                        return self._reject(topic_name, f"device {topic.device_id} not registered yet")
                    self.presence_updates += 1
                self._lock.notify_all()
        except RegistryError as exc:
            self._reject(topic_name, str(exc).splitlines()[0])
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
