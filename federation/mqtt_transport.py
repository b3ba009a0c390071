"""The Grid's transport over MQTT: tasks to ``.../<device>/task``, results from ``.../+/result``.

One paho client (MQTT v5, QoS 1, its own network thread) serves the coordinator. Presence comes
from the devices' retained presence documents (the Last Will flips them to offline), so a
coordinator that starts after the fleet still sees who is online; the retained Thing Descriptions
say what each device is (`federation.selection` samples by them). The connection is the project's one
`MqttClient` (TCP_NODELAY, credentials, TLS and refusals handled there).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid

from devices.exceptions import DeviceLinkError, ProtocolError
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient
from devices.wire import protocol
from devices.wire.topics import device_topic, fleet_filter, parse_topic
from federation.exceptions import FederationError
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
    """

    def __init__(self, address: BrokerAddress, *, fleet: str, credentials: Credentials | None = None,
                 client_id: str | None = None, connect_timeout: float = 10.0, descriptions: bool = False) -> None:
        self.address = address
        self.fleet = fleet
        self.client_id = client_id or f"tinyfleet-server-{uuid.uuid4().hex[:8]}"
        self.connect_timeout = connect_timeout
        self.username = credentials.username if credentials is not None else None
        self._online: dict[str, bool] = {}
        self._descriptions: dict[str, Description] = {}
        self._lock = threading.Lock()
        self._on_payload: PayloadHandler | None = None
        kinds = ("presence", "result", "td") if descriptions else ("presence", "result")
        self._mqtt = MqttClient(address, credentials, client_id=self.client_id, keepalive=30,
                                subscriptions=[fleet_filter(fleet, k) for k in kinds],  # type: ignore[arg-type]
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
                return
            online = doc.get("device") == device_id and doc.get("online") is True
        with self._lock:
            self._online[device_id] = online
        handler = getattr(self, "_online_handler", None)
        if online and handler is not None:
            handler(device_id)  # it reconnected (or the coordinator did and got the retained document)
