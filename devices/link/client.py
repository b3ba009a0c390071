"""The one place where tinyfleet constructs paho MQTT clients, and the small client servers use.

Why one factory: every connection needs the same things done the same way (MQTT v5, callback API
v2, user name/password, TLS files, TCP_NODELAY after each CONNACK, a refusal turned into one line
that says what to pass). Four hand-built clients had drifted apart; now `new_paho_client` builds
every paho client, for the device hub (`devices.link.hub`, many clients on one thread) and for
`MqttClient` below (one client with its own network thread), which the fleet client, the
coordinator's transport and the registry's presence listener use.

`MqttClient` is deliberately small, in the spirit of aiomqtt: connect as a context manager,
`publish` raises on failure instead of returning a code, and messages arrive through one callback
``on_message(topic, payload)``. Subscriptions are renewed after every (re)connect, because a
broker restart forgets them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from devices.exceptions import DeviceLinkError
from devices.link.address import BrokerAddress, Credentials

log = logging.getLogger("tinyfleet.devices")

SESSION_TAKEN_OVER = 0x8E
"""MQTT v5 DISCONNECT reason code: another client connected with this client id."""

TAKEOVER_WINDOW_S = 10.0
"""A connection the broker closes this soon after accepting it counts toward a takeover (> paho's 8 s reconnect cap)."""

MessageHandler = Callable[[str, bytes], None]
"""Called on the network thread with (topic, payload) for every message received."""


def new_paho_client(address: BrokerAddress, credentials: Credentials | None, *, client_id: str,
                    userdata: Any = None) -> mqtt.Client:
    """A paho MQTT v5 client (callback API v2) with `credentials` and, for ``mqtts``, TLS applied.

    The user name defaults to `client_id` when only a password is given (a secured tinyfleet broker
    forces client id == user name). Callbacks are left to the caller.
    """
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                    userdata=userdata)
    cred = credentials or Credentials()
    if cred.username is not None or cred.password is not None:
        c.username_pw_set(cred.username or client_id, cred.password)
    if address.tls:
        c.tls_set(ca_certs=str(cred.ca) if cred.ca else None, certfile=str(cred.cert) if cred.cert else None,
                  keyfile=str(cred.key) if cred.key else None)
    return c


def set_nodelay(client: mqtt.Client) -> None:
    """Switch Nagle's algorithm off on the client's socket (it costs ~40 ms per message on loopback)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def refusal_message(address: BrokerAddress, reason: object) -> str:
    """One line for a refused CONNECT, with the hint a user needs for a secured tinyfleet broker."""
    text = str(reason)
    hint = ""
    if "authori" in text.lower() or "password" in text.lower():
        hint = ("; a tinyfleet broker refuses anonymous clients: pass a server account with --credentials "
                "(<broker dir>/security/credentials/fleet-server.json)")
    return f"broker {address.url} refused the connection: {text}{hint}"


class MqttClient:
    """One MQTT v5 connection with its own network thread, for server-side processes.

    Parameters
    ----------
    address : BrokerAddress
        The broker.
    credentials : Credentials, optional
        User name, password and TLS files.
    client_id : str
        MQTT client id (a secured tinyfleet broker replaces it by the user name).
    subscriptions : sequence of str, default=()
        Topic filters subscribed (QoS 1) after every connect.
    on_message : callable, optional
        ``on_message(topic, payload)`` on the network thread; an exception in it is logged, never
        propagated (one bad message must not stop the client).
    keepalive : int, default=60
        MQTT keep-alive in seconds.

    Attributes
    ----------
    connected : threading.Event
        Set while connected (and subscribed); cleared on a lost connection until paho reconnects.
    disconnected_at : float or None
        `time.monotonic()` of the last lost connection, None while connected.
    connections : int
        How many times the connection was (re-)established and subscribed. Listeners compare it
        with the value they last saw to learn that retained messages are being replayed to them.
    taken_over : bool
        True once another client has connected with this client id (a secured tinyfleet broker
        makes it the user name, so: another process with the same account). The client then stays
        disconnected instead of reconnecting and throwing the other one out. Recognised by an MQTT v5
        "Session taken over" DISCONNECT, or, because Mosquitto 2.0 closes the old connection without
        saying why, by two connections in a row that the broker closed within `TAKEOVER_WINDOW_S` of
        accepting them, with no failed connection attempt in between (a restarting broker refuses
        some attempts; a competing client never does).
    """

    def __init__(self, address: BrokerAddress, credentials: Credentials | None = None, *, client_id: str,
                 subscriptions: Sequence[str] = (), on_message: MessageHandler | None = None,
                 keepalive: int = 60) -> None:
        self.address = address
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.disconnected_at: float | None = None
        self.connections = 0
        self.max_packet_size: int | None = None  # the broker's Maximum Packet Size (CONNACK), if it states one
        self.taken_over = False
        self._connected_at: float | None = None
        self._short_losses = 0
        self._ready = threading.Event()
        self._refused: str | None = None
        self._pending_subscribe: int | None = None
        self._started = False
        self._closing = False
        self._client = new_paho_client(address, credentials, client_id=client_id)
        self._client.on_connect = self._handle_connect
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.reconnect_delay_set(min_delay=1, max_delay=8)

    def connect(self, *, timeout: float = 10.0) -> MqttClient:
        """Connect, subscribe, and return once the broker acknowledged; raise `DeviceLinkError` otherwise."""
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS verification failed (SSLError is OSError)
            raise DeviceLinkError(f"cannot connect to the MQTT broker at {self.address.url}: {exc}") from None
        self._client.loop_start()
        self._started = True
        if not self._ready.wait(timeout) or self._refused is not None:
            why = self._refused or f"no answer from {self.address.url} within {timeout:g} s"
            self.close()
            raise DeviceLinkError(why)
        return self

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Queue one message; raise `DeviceLinkError` if paho refuses it (e.g. too large, client closed).

        While the connection is down paho queues QoS>0 messages and sends them after reconnecting,
        so a lost connection is not an error here (``MQTT_ERR_NO_CONN``).
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise DeviceLinkError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    def close(self) -> None:
        """Disconnect and stop the network thread (idempotent)."""
        self._closing = True
        try:
            self._client.disconnect()
        finally:
            if self._started:
                self._client.loop_stop()
                self._started = False
        self.connected.clear()

    def __enter__(self) -> MqttClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ paho callbacks
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            # a refusal (bad password, not authorized) is final: wake connect() at once with the reason
            self._refused = refusal_message(self.address, reason)
            self._short_losses = 0
            self._ready.set()
            return
        self._connected_at = time.monotonic()
        set_nodelay(client)
        self.max_packet_size = getattr(props, "MaximumPacketSize", None) if props is not None else None
        if self.subscriptions:
            rc, mid = client.subscribe([(s, 1) for s in self.subscriptions])
            self._pending_subscribe = mid if rc == mqtt.MQTT_ERR_SUCCESS else None
        else:
            self._mark_ready()

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid == self._pending_subscribe:
            self._mark_ready()

    def _mark_ready(self) -> None:
        self.connections += 1
        self.disconnected_at = None
        self.connected.set()
        self._ready.set()

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._short_losses = 0  # the broker refused an attempt: a restart, not a competing client

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        now = time.monotonic()
        short = self._connected_at is not None and now - self._connected_at < TAKEOVER_WINDOW_S
        self._connected_at = None
        self._short_losses = self._short_losses + 1 if short and not self._closing else 0
        if not self._closing and (getattr(reason, "value", None) == SESSION_TAKEN_OVER or self._short_losses >= 2):
            # Reconnecting would take the session back and throw the other client out, which
            # reconnects in turn: two processes sharing an account disconnect each other forever.
            # Stay out instead and let the owner report it (`taken_over`).
            self.taken_over = True
            self.disconnected_at = now
            self.connected.clear()
            log.error("%s: another client keeps connecting to %s with the same client id; this one stays "
                      "disconnected", self.client_id, self.address.url)
            client.loop_stop()  # from the network thread: ends paho's reconnect loop without joining itself
            return
        if self.connected.is_set() and not self._closing:
            self.disconnected_at = time.monotonic()
            log.warning("%s: lost the connection to %s (%s); reconnecting", self.client_id, self.address.url, reason)
        self.connected.clear()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_message is None:
            return
        try:
            self.on_message(msg.topic, bytes(msg.payload))
        except Exception:  # noqa: BLE001 - the network thread must survive any message
            log.exception("%s: handling a message on %s failed", self.client_id, msg.topic)
