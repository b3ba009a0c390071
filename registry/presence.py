"""Keep the registry's devices live from MQTT: retained Thing Descriptions and presence.

Devices publish their TD (retained) on `tinyfleet/v1/<fleet>/<id>/td` and `{online, ts}`
(retained, cleared to offline by the broker's Last Will) on `.../presence`. The listener subscribes
to both for a fleet (or all fleets), adds/replaces devices from TDs and records online state and
last contact. A malformed message is counted and logged, never fatal: the registry must survive
anything a device sends.

The device a message is about is the one in its topic, which the broker authenticated; a TD or
presence document on device A's topic that names device B is rejected (``wrong-device``), so one
enrolled device cannot rewrite another's record. Each device also has a message budget per topic
(`devices.link.ratelimit`): every TD is a store write, and a flood must cost the sender, not the
registry.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from devices.exceptions import DeviceLinkError
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient
from devices.link.ratelimit import RateLimiter
from devices.wire.topics import ROOT, check_name, parse_topic
from registry.exceptions import RegistryError
from registry.ingest_device import add_device, parse_td, set_presence
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
    rejected_reasons : collections.Counter
        Rejections counted by reason (``wrong-device``, ``rate-limited``, ``malformed``, ...).
    """

    TD_BUDGET = (0.5, 5.0)
    """(rate per second, burst) of TDs per device: a device publishes one per (re)connect."""
    PRESENCE_BUDGET = (2.0, 10.0)

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
        self.rejected_reasons: Counter[str] = Counter()
        self._limits = {"td": RateLimiter(*self.TD_BUDGET), "presence": RateLimiter(*self.PRESENCE_BUDGET)}
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
        limit = self._limits.get(topic.kind)
        if limit is not None and not limit.allow(topic.device_id):
            return self._reject(topic_name, "over the device's message budget", reason="rate-limited")
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return self._reject(topic_name, "payload is not JSON")
        source = f"TD on {topic_name}"
        try:
            with self._lock:
                if topic.kind == "td":
                    named = parse_td(doc, source=source)["device_id"]
                    if named != topic.device_id:
                        return self._reject(topic_name, f"the TD describes device {named[:64]!r}, not the topic's "
                                                        f"{topic.device_id!r}", reason="wrong-device")
                    self._ingest(doc, source)
                    self.devices_added += 1
                else:
                    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
                        return self._reject(topic_name, "presence needs a boolean 'online'")
                    if "device" in doc and doc["device"] != topic.device_id:
                        return self._reject(topic_name, f"the presence document names device "
                                                        f"{str(doc['device'])[:64]!r}", reason="wrong-device")
                    ts = doc.get("ts")
                    seen = (datetime.fromtimestamp(float(ts), tz=UTC)
                            if isinstance(ts, (int, float)) and not isinstance(ts, bool) else datetime.now(UTC))
                    if not set_presence(self.store, topic.device_id, online=doc["online"], seen=seen):
                        return self._reject(topic_name, f"device {topic.device_id} not registered yet",
                                            reason="unregistered")
                    self.presence_updates += 1
                self._lock.notify_all()
        except RegistryError as exc:
            self._reject(topic_name, str(exc).splitlines()[0], reason="invalid")
        return None

    def _reject(self, topic: str, detail: str, *, reason: str = "malformed") -> None:
        with self._lock:
            self.rejected.append(f"{topic}: {detail} ({reason})")
            self.rejected_reasons[reason] += 1
            self._lock.notify_all()
        log.warning("registry ignored %s: %s (%s)", topic, detail, reason)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Block until `predicate(self)` is true (re-checked after each message) or `timeout` passes."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout=timeout)
