"""Many MQTT clients, one network thread: the transport under every device agent.

A fleet of 1,000 simulated devices must not cost 1,000 OS threads (paho's `loop_start` starts one
per client). `MqttHub` drives any number of paho clients with paho's external-loop API: their
sockets sit in one `selectors` selector, the hub calls `loop_read` / `loop_write` / `loop_misc`
itself, and every paho call happens on that one thread, so paho needs no locking. CPU work
(training) runs on a small worker pool; workers hand outgoing messages back through a queue and a
wake-up socket. The same hub with one endpoint runs a single device (`tinyfleet devices run`).

What the hub does for every endpoint: MQTT v5 session with client id = device id, Last Will,
subscriptions after each CONNACK, TCP_NODELAY (a federated round is ~10x faster on loopback),
reconnect with exponential backoff and jitter, the broker's Maximum Packet Size, an unclean
"crash" for fault injection, and a clean goodbye (publish, wait for PUBACK, DISCONNECT).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import random
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from devices.link.address import BrokerAddress, Credentials
from devices.link.client import new_paho_client, set_nodelay
from devices.wire.topics import check_name

log = logging.getLogger("tinyfleet.devices")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


class Endpoint(Protocol):
    """What the hub needs from one device (or any client) it drives. Callbacks run on the network thread."""

    client_id: str

    def will(self) -> tuple[str, bytes] | None: ...
    def subscriptions(self) -> list[str]: ...
    def on_connected(self, link: Link) -> None: ...
    def on_message(self, link: Link, topic: str, payload: bytes) -> None: ...
    def on_tick(self, link: Link, now: float) -> None: ...
    def goodbye(self) -> list[tuple[str, bytes, bool]]: ...


class Link:
    """One endpoint's handle on the hub; `publish`, `submit`, `crash` are safe from any thread."""

    def __init__(self, hub: MqttHub, endpoint: Endpoint, credentials: Credentials | None = None) -> None:
        self.hub = hub
        self.endpoint = endpoint
        self.client_id = endpoint.client_id
        self.credentials = credentials
        self.client: mqtt.Client | None = None
        self.connected = threading.Event()
        self.max_packet_size: int | None = None
        self.attempt = 0
        self.connects = 0
        self.last_error: str | None = None
        self.closing = False
        self.reconnect_override: float | None = None
        self.connect_started = 0.0
        self.connect_seconds: float | None = None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, delay: float = 0.0) -> None:
        """Queue a message; it is sent on the network thread (after `delay` seconds)."""
        self.hub._command(lambda: self.hub._publish_now(self, topic, payload, qos, retain), delay)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the worker pool (training must not block the network thread)."""
        self.hub._submit(fn, *args)

    def crash(self, *, down_for: float) -> None:
        """Drop the TCP connection without DISCONNECT (the broker fires the Will), reconnect after `down_for` s."""
        self.hub._command(lambda: self.hub._crash_now(self, down_for))

    def payload_fits(self, nbytes: int) -> bool:
        """Whether a PUBLISH with `nbytes` payload stays within the broker's Maximum Packet Size."""
        return self.max_packet_size is None or nbytes + 512 <= self.max_packet_size


class MqttHub:
    """Drive many paho MQTT v5 clients from one network thread plus a worker pool.

    Parameters
    ----------
    address : BrokerAddress
        The broker.
    credentials : Credentials, optional
        Shared by every endpoint; the user name defaults to each endpoint's client id.
    workers : int, default=2
        Threads for CPU work (one per core is plenty: numpy releases the GIL only in large ops).
    keepalive : int, default=60
        MQTT keep-alive in seconds.
    tick_s : float, default=1.0
        How often `on_tick` and paho's `loop_misc` run.
    connect_rate : float, default=500.0
        New connections per second at most (a thousand simultaneous CONNECTs overflow the
        broker's listen backlog).
    """

    def __init__(self, address: BrokerAddress, *, credentials: Credentials | None = None, workers: int = 2,
                 keepalive: int = 60, tick_s: float = 1.0, connect_rate: float = 500.0) -> None:
        self.address = address
        self.credentials = credentials or Credentials()
        self.keepalive = keepalive
        self.tick_s = tick_s
        self.connect_interval = 1.0 / connect_rate if connect_rate > 0 else 0.0
        self.links: dict[str, Link] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tinyfleet-worker")
        self._thread: threading.Thread | None = None
        self._running = False
        self._next_connect = 0.0
        self._rng = random.Random(0)

    # ------------------------------------------------------------------------------ public
    def add(self, endpoint: Endpoint, *, credentials: Credentials | None = None) -> Link:
        """Register an endpoint; it connects as soon as the hub runs.

        `credentials` are this endpoint's own (a secured broker gives every device its own
        password); without them the hub's shared credentials apply.
        """
        check_name(endpoint.client_id)
        if endpoint.client_id in self.links:
            raise ValueError(f"client id {endpoint.client_id!r} is already in this hub")
        link = Link(self, endpoint, credentials)
        self.links[endpoint.client_id] = link
        self._command(lambda: self._schedule_connect(link, 0.0))
        return link

    def start(self) -> MqttHub:
        """Start the network thread."""
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._run, name="tinyfleet-mqtt", daemon=True)
            self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> int:
        """Wait until every endpoint has connected once (or `timeout`); returns how many are connected."""
        deadline = time.monotonic() + timeout
        for link in list(self.links.values()):
            link.connected.wait(max(0.0, deadline - time.monotonic()))
        return sum(link.connected.is_set() for link in self.links.values())

    def stop(self, *, timeout: float = 5.0) -> None:
        """Say goodbye on every connected endpoint (wait for PUBACKs), disconnect, stop the threads."""
        if self._thread is None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            return
        self._pool.shutdown(wait=True, cancel_futures=True)
        done = threading.Event()
        self._command(lambda: self._begin_goodbye(done, time.monotonic() + timeout))
        done.wait(timeout + 1.0)
        self._running = False
        self._wake()
        self._thread.join(timeout + 1.0)
        self._thread = None
        for link in self.links.values():
            if link.client is not None:
                link.client._reset_sockets()  # closes any socket left (paho has no public close)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> MqttHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ commands
    def _command(self, fn: Callable[[], None], delay: float = 0.0) -> None:
        if delay > 0:
            due = time.monotonic() + delay
            self._commands.put(lambda: heapq.heappush(self._timers, (due, next(self._seq), fn)))
        else:
            self._commands.put(fn)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a bug in one task must not kill the pool
                log.exception("worker task %s failed", getattr(fn, "__name__", fn))
        with contextlib.suppress(RuntimeError):  # pool shut down while stopping
            self._pool.submit(run)

    # ------------------------------------------------------------------------------ network thread
    def _run(self) -> None:
        next_tick = time.monotonic()
        while self._running:
            now = time.monotonic()
            wait = min(next_tick - now, (self._timers[0][0] - now) if self._timers else self.tick_s)
            for key, mask in self._sel.select(max(0.0, wait)):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                link: Link = key.data
                client = link.client
                if client is None:
                    continue
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                    sock = client.socket()
                    while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
                        client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
            while True:
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    break
                cmd()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                fn()
            if now >= next_tick:
                next_tick = now + self.tick_s
                for link in list(self.links.values()):
                    if link.client is not None and link.client.socket() is not None:
                        link.client.loop_misc()
                    if link.connected.is_set() and not link.closing:
                        try:
                            link.endpoint.on_tick(link, now)
                        except Exception:  # noqa: BLE001
                            log.exception("%s: on_tick failed", link.client_id)

    def _schedule_connect(self, link: Link, delay: float) -> None:
        # spread connects to respect connect_rate
        now = time.monotonic()
        due = max(now + delay, self._next_connect)
        self._next_connect = due + self.connect_interval
        heapq.heappush(self._timers, (due, next(self._seq), lambda: self._connect(link)))

    def _new_client(self, link: Link) -> mqtt.Client:
        c = new_paho_client(self.address, link.credentials or self.credentials, client_id=link.client_id,
                            userdata=link)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        return c

    def _connect(self, link: Link) -> None:
        if link.closing or not self._running:
            return
        if link.client is None:
            link.client = self._new_client(link)
        client = link.client
        will = link.endpoint.will()
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        link.connect_started = time.monotonic()
        try:
            client.connect(self.address.host, self.address.port, keepalive=self.keepalive, clean_start=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            link.last_error = f"cannot connect to {self.address.url}: {exc}"
            log.warning("%s: %s", link.client_id, link.last_error)
            self._backoff(link)

    def _backoff(self, link: Link) -> None:
        if link.closing:
            return
        if link.reconnect_override is not None:
            delay, link.reconnect_override = link.reconnect_override, None
        else:
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** link.attempt) * self._rng.uniform(0.5, 1.5)
            link.attempt += 1
        self._schedule_connect(link, delay)

    def _publish_now(self, link: Link, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        client = link.client
        if client is None:
            log.warning("%s: dropping message for %s: never connected", link.client_id, topic)
            return
        if not link.payload_fits(len(payload)):
            log.warning("%s: dropping %d-byte message for %s: broker's maximum packet size is %s",
                        link.client_id, len(payload), topic, link.max_packet_size)
            return
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("%s: publish to %s failed: %s", link.client_id, topic, mqtt.error_string(info.rc))

    def _crash_now(self, link: Link, down_for: float) -> None:
        sock = link.client.socket() if link.client is not None else None
        if not isinstance(sock, socket.socket):  # not connected (TLS sockets are socket.socket too)
            return
        link.reconnect_override = down_for
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # paho sees EOF on the next read and reports a lost connection

    def _begin_goodbye(self, done: threading.Event, deadline: float) -> None:
        infos: list[mqtt.MQTTMessageInfo] = []
        for link in self.links.values():
            link.closing = True
            if link.client is None or not link.connected.is_set():
                continue
            for topic, payload, retain in link.endpoint.goodbye():
                infos.append(link.client.publish(topic, payload, qos=1, retain=retain))

        def check() -> None:
            if all(i.is_published() or i.rc != mqtt.MQTT_ERR_SUCCESS for i in infos) or time.monotonic() > deadline:
                for link in self.links.values():
                    if link.client is not None and link.connected.is_set():
                        link.client.disconnect()
                        link.client.loop_write()
                done.set()
            else:
                heapq.heappush(self._timers, (time.monotonic() + 0.01, next(self._seq), check))
        check()

    # ------------------------------------------------------------------------------ paho callbacks
    def _on_socket_open(self, client: mqtt.Client, link: Link, sock: Any) -> None:
        try:
            self._sel.register(sock, selectors.EVENT_READ, link)
        except (KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ, link)

    def _on_socket_close(self, client: mqtt.Client, link: Link, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _on_register_write(self, client: mqtt.Client, link: Link, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, link)

    def _on_unregister_write(self, client: mqtt.Client, link: Link, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ, link)

    def _on_connect(self, client: mqtt.Client, link: Link, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            link.last_error = f"broker {self.address.url} refused {link.client_id}: {reason}"
            log.warning("%s", link.last_error)
            return  # paho closes; _on_disconnect schedules the retry
        set_nodelay(client)
        link.max_packet_size = getattr(props, "MaximumPacketSize", None) if props is not None else None
        link.attempt = 0
        link.connects += 1
        link.last_error = None
        if link.connect_seconds is None:
            link.connect_seconds = time.monotonic() - link.connect_started
        subs = link.endpoint.subscriptions()
        if subs:
            client.subscribe([(s, 1) for s in subs])
        link.connected.set()
        try:
            link.endpoint.on_connected(link)
        except Exception:  # noqa: BLE001
            log.exception("%s: on_connected failed", link.client_id)

    def _on_disconnect(self, client: mqtt.Client, link: Link, flags: Any, reason: Any, props: Any) -> None:
        link.connected.clear()
        if link.closing:
            return
        log.info("%s: disconnected (%s); reconnecting", link.client_id, reason)
        self._backoff(link)

    def _on_message(self, client: mqtt.Client, link: Link, msg: mqtt.MQTTMessage) -> None:
        try:
            link.endpoint.on_message(link, msg.topic, bytes(msg.payload))
        except Exception:  # noqa: BLE001 - one bad message must not stop the network thread
            log.exception("%s: on_message failed for %s", link.client_id, msg.topic)

