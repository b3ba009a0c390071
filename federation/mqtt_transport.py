"""The Grid's transport over MQTT: tasks to ``.../<device>/task``, results from ``.../+/result``.

One paho client (MQTT v5, QoS 1, its own network thread) serves the coordinator. Presence comes
from the devices' retained presence documents (the Last Will flips them to offline), so a
coordinator that starts after the fleet still sees who is online. TCP_NODELAY is set on the
socket after every connect: without it, Nagle's algorithm costs ~40 ms per message on loopback.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid

import paho.mqtt.client as mqtt

from devices import protocol
from devices.exceptions import ProtocolError
from devices.mqtt_link import Credentials, parse_broker_url
from devices.topics import device_topic, fleet_filter, parse_topic
from federation.exceptions import FederationError
from federation.transport import PayloadHandler, Transport

log = logging.getLogger(__name__)


class MqttTransport(Transport):
    """Coordinator side of the MQTT topic tree of one fleet.

    Parameters
    ----------
    broker_url : str
        ``mqtt://host:port`` (``mqtts://`` uses TLS with the system CAs).
    fleet : str
        The fleet name (second level under ``tinyfleet/v1``).
    client_id : str, optional
        MQTT client id; defaults to a unique ``tinyfleet-server-...``.
    username, password : str, optional
        Credentials when the broker enforces ACLs.
    credentials : Credentials, optional
        User name, password and TLS files (CA, client certificate and key) in one object, e.g.
        `devices.broker_security.server_credentials(dir)`; `username`/`password` override it.
    connect_timeout : float, default=10.0
        Seconds to wait for CONNACK.
    """

    def __init__(self, broker_url: str, *, fleet: str, client_id: str | None = None, username: str | None = None,
                 password: str | None = None, connect_timeout: float = 10.0,
                 credentials: Credentials | None = None) -> None:
        self.address = parse_broker_url(broker_url)
        self.fleet = fleet
        self.client_id = client_id or f"tinyfleet-server-{uuid.uuid4().hex[:8]}"
        self.connect_timeout = connect_timeout
        self._online: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._on_payload: PayloadHandler | None = None
        self._connect_error: str | None = None
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   protocol=mqtt.MQTTv5)
        cred = credentials or Credentials()
        username = username if username is not None else cred.username
        password = password if password is not None else cred.password
        if username is not None:
            self._client.username_pw_set(username, password)
        if self.address.tls:
            self._client.tls_set(ca_certs=str(cred.ca) if cred.ca else None,
                                 certfile=str(cred.cert) if cred.cert else None,
                                 keyfile=str(cred.key) if cred.key else None)
        self._client.on_connect = self._handle_connect
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_message = self._handle_message

    # -- Transport -----------------------------------------------------------------------------
    def start(self, on_payload: PayloadHandler) -> None:
        """Connect, subscribe to presence and results, and return once subscribed."""
        self._on_payload = on_payload
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:  # ssl.SSLError (wrong CA) is an OSError too
            raise FederationError(f"cannot connect to the MQTT broker at {self.address.url}: {exc}") from None
        self._client.loop_start()
        if not self._subscribed.wait(self.connect_timeout):
            self.close()
            why = self._connect_error or "no answer"
            raise FederationError(f"MQTT broker at {self.address.url} did not accept the coordinator within "
                                  f"{self.connect_timeout:g} s ({why})")

    def present_devices(self) -> list[str]:
        with self._lock:
            return sorted(d for d, up in self._online.items() if up)

    def send(self, device_id: str, payload: bytes) -> None:
        self._client.publish(device_topic(self.fleet, device_id, "task"), payload, qos=1)

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    # -- paho callbacks (network thread) -------------------------------------------------------
    def _handle_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                        properties: object) -> None:
        if getattr(reason, "is_failure", False):
            self._connect_error = str(reason)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe([(fleet_filter(self.fleet, "presence"), 1), (fleet_filter(self.fleet, "result"), 1)])
        self._connected.set()

    def _handle_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: object,
                          properties: object) -> None:
        self._subscribed.set()

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(msg.topic)
        except ValueError:
            return
        if topic.kind == "result":
            if self._on_payload is not None:
                try:
                    self._on_payload(topic.device_id, bytes(msg.payload))
                except Exception:  # noqa: BLE001 - the network thread must survive any bad result
                    log.exception("result from %s could not be handled", topic.device_id)
            return
        if topic.kind == "presence":
            self._presence(topic.device_id, bytes(msg.payload))

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
