"""The Grid's transport over MQTT: tasks to ``.../<device>/task``, results from ``.../+/result``.

One paho client (MQTT v5, QoS 1, its own network thread) serves the coordinator. Presence comes
from the devices' retained presence documents (the Last Will flips them to offline), so a
coordinator that starts after the fleet still sees who is online; the retained Thing Descriptions
say what each device is (`federation.selection` samples by them). The connection is the project's one
`MqttClient` (TCP_NODELAY, credentials, TLS and refusals handled there).

Nothing a device says about itself is trusted: the device id is the one in the topic the broker
authenticated (a presence document or TD naming another device is dropped as ``wrong-device``); each
device has a message budget per topic kind (`devices.link.ratelimit`); and only a *change* to
online (first sight, after an offline, or after the coordinator's own reconnect replays the retained
documents) counts as the device coming back, so a flood of "online" messages triggers nothing.
Losing the broker is tolerated for `broker_timeout` seconds (paho reconnects with backoff), then
`check_connected` raises `BrokerLostError`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

from devices.exceptions import DeviceLinkError, ProtocolError
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient
from devices.link.ratelimit import RateLimiter
from devices.wire import protocol
from devices.wire.thing_description import described_device
from devices.wire.topics import Kind, device_topic, fleet_filter, parse_topic
from federation.exceptions import BrokerLostError, FederationError
from federation.selection import Description, description_from_td
from federation.transport import PayloadHandler, Transport

log = logging.getLogger(__name__)



class MqttTransport(Transport):
    """Coordinator side of the MQTT topic tree of one fleet.

    Parameters
    ----------
    address : BrokerAddress
        The broker (``devices.link.address.parse_broker_url`` makes one from a URL).
    fleet : str
        The fleet name (second level under ``tinyfleet/v1``).
    credentials : Credentials, optional
        User name, password and TLS files (CA, client certificate and key), e.g.
        `broker.accounts.server_credentials(dir)`.
    client_id : str, optional
        MQTT client id; defaults to a unique ``tinyfleet-server-...``.
    connect_timeout : float, default=10.0
        Seconds to wait for CONNACK and SUBACK.
    descriptions : bool, default=False
        Also follow the devices' retained Thing Descriptions, so that `description`/`use_case` can
        tell what each device says it is (`federation.selection`; off by default: a large fleet's TDs
        are kilobytes each, and a run that samples by the registry does not need them).
    broker_timeout : float, default=60.0
        Seconds the broker may stay unreachable (paho keeps reconnecting with backoff) before
        `check_connected` gives up.
    presence_budget, result_budget : (rate per second, burst)
        Each device's message budget on its presence (and TD) and result topics. An honest device
        sends one presence document per (re)connect and at most a few results per round; the result
        budget is generous because rounds of tiny models can be a fraction of a second.
    """

    def __init__(self, address: BrokerAddress, *, fleet: str, credentials: Credentials | None = None,
                 client_id: str | None = None, connect_timeout: float = 10.0, descriptions: bool = False,
                 broker_timeout: float = 60.0, presence_budget: tuple[float, float] = (2.0, 10.0),
                 result_budget: tuple[float, float] = (50.0, 100.0)) -> None:
        self.address = address
        self.fleet = fleet
        self.client_id = client_id or f"tinyfleet-server-{uuid.uuid4().hex[:8]}"
        self.connect_timeout = connect_timeout
        self.username = credentials.username if credentials is not None else None
        self.broker_timeout = float(broker_timeout)
        self._online: dict[str, bool] = {}
        self._descriptions: dict[str, Description] = {}
        self._epoch = 0  # MqttClient.connections when `_online` was last valid
        self._limits = {"presence": RateLimiter(*presence_budget), "td": RateLimiter(*presence_budget),
                        "result": RateLimiter(*result_budget)}
        self._lock = threading.Lock()
        self._on_payload: PayloadHandler | None = None
        kinds: tuple[Kind, ...] = ("presence", "result", "td") if descriptions else ("presence", "result")
        self._mqtt = MqttClient(address, credentials, client_id=self.client_id, keepalive=30,
                                subscriptions=[fleet_filter(fleet, k) for k in kinds],
                                on_message=self._handle_message)

    @property
    def mqtt(self) -> MqttClient:
        """The underlying connection (its `connected` event tells whether the broker is reachable)."""
        return self._mqtt

    # -- Transport -----------------------------------------------------------------------------
    def start(self, on_payload: PayloadHandler) -> None:
        """Connect, subscribe to presence and results, and return once subscribed."""
        self._on_payload = on_payload
        try:
            self._mqtt.connect(timeout=self.connect_timeout)
        except DeviceLinkError as exc:
            raise FederationError(f"the coordinator cannot use the MQTT broker: {exc}") from None

    def present_devices(self) -> list[str]:
        self._check_not_taken_over()
        with self._lock:
            return sorted(d for d, up in self._online.items() if up)

    def description(self, device_id: str) -> Description | None:
        """What the device's retained Thing Description says (use case, RAM); None without one."""
        with self._lock:
            return self._descriptions.get(device_id)

    def use_case(self, device_id: str) -> str | None:
        """The use case `device_id`'s Thing Description names (None if unknown or not followed)."""
        desc = self.description(device_id)
        return desc.use_case if desc is not None else None

    def send(self, device_id: str, payload: bytes) -> None:
        self._check_not_taken_over()
        try:
            self._mqtt.publish(device_topic(self.fleet, device_id, "task"), payload, qos=1)
        except DeviceLinkError as exc:
            raise FederationError(str(exc)) from None

    def close(self) -> None:
        self._mqtt.close()

    def check_connected(self) -> None:
        """Raise `BrokerLostError` once the broker has been unreachable for more than `broker_timeout`."""
        lost = self._mqtt.disconnected_at
        if self._mqtt.connected.is_set() or lost is None:
            return
        down = time.monotonic() - lost
        if down > self.broker_timeout:
            raise BrokerLostError(f"lost the MQTT broker at {self.address.url}: unreachable for {down:.0f} s "
                                  f"(--broker-timeout {self.broker_timeout:g} s)")

    def _discard(self, device_id: str, reason: str, nbytes: int) -> None:
        handler = getattr(self, "_discard_handler", None)
        if handler is not None:
            handler(device_id, reason, nbytes)

    def _check_not_taken_over(self) -> None:
        if self._mqtt.taken_over:
            who = f"account {self.username!r}" if self.username else f"client id {self.client_id!r}"
            raise FederationError(
                f"another process connected to {self.address.url} with {who} and took this connection over: "
                "every server process that runs at the same time needs its own broker account (give each its "
                "own credentials, or a managed broker directory so that one is enrolled per process)")

    # -- network thread ------------------------------------------------------------------------
    def _handle_message(self, topic_name: str, payload: bytes) -> None:
        try:
            topic = parse_topic(topic_name)
        except ValueError:
            return
        if topic.kind in self._limits and not self._limits[topic.kind].allow(topic.device_id):
            self._discard(topic.device_id, "rate-limited", len(payload))
            return
        if topic.kind == "result":
            if self._on_payload is not None:
                try:
                    self._on_payload(topic.device_id, payload)
                except Exception:  # noqa: BLE001 - the network thread must survive any bad result
                    log.exception("result from %s could not be handled", topic.device_id)
            return
        if topic.kind == "presence":
            self._presence(topic.device_id, payload)
        elif topic.kind == "td":
            self._description(topic.device_id, payload)

    def _description(self, device_id: str, payload: bytes) -> None:
        """Remember what a device's TD says (a claim used for selection only, never trusted further)."""
        if not payload:  # a cleared retained TD: the device is no longer described
            with self._lock:
                self._descriptions.pop(device_id, None)
            return
        try:
            td = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            log.info("ignored the Thing Description of %s: not UTF-8 JSON (%s)", device_id, exc)
            td = None
        if isinstance(td, dict) and described_device(td) != device_id:
            log.info("ignored a Thing Description on %s's topic that describes %r", device_id, described_device(td))
            self._discard(device_id, "wrong-device", len(payload))  # a claim about another device: never used
            return
        with self._lock:
            self._descriptions[device_id] = description_from_td(td)

    def _presence(self, device_id: str, payload: bytes) -> None:
        if not payload:  # a cleared retained message: the device is gone
            online = False
        else:
            try:
                doc = protocol.decode_json_document(payload, expected_type=protocol.MessageType.PRESENCE)
            except ProtocolError as exc:
                log.info("ignored presence of %s: %s", device_id, exc)
                self._discard(device_id, "malformed", len(payload))
                return
            if doc.get("device") != device_id:
                log.info("ignored presence on %s's topic naming %r", device_id, doc.get("device"))
                self._discard(device_id, "wrong-device", len(payload))
                return
            online = doc.get("online") is True
        with self._lock:
            if self._mqtt.connections != self._epoch:  # our own reconnect: every "online" is news again
                self._epoch = self._mqtt.connections
                self._online = {d: False for d in self._online}
            came_back = online and not self._online.get(device_id, False)
            self._online[device_id] = online
        if online and not came_back:
            self._discard(device_id, "duplicate-online", 0)
            return
        handler = getattr(self, "_online_handler", None)
        if came_back and handler is not None:
            handler(device_id)  # it (re)connected, or the coordinator did and got the retained document
