"""Run the directory + dashboard: uvicorn in a thread, the expiry purge, and optionally MQTT ingestion.

`DirectoryServer` is what `tinyfleet serve`, `tinyfleet demo --serve` and the tests run: start it
(it returns once the socket accepts connections), use it, stop it. With a broker it also runs a
`PresenceListener` whose TDs go through the directory, so MQTT-published devices appear in
`/things` and as `thing_created` / `thing_updated` events.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from devices.link.address import BrokerAddress, Credentials
from firmware_models.exceptions import TinyFleetError
from registry.directory import ThingDirectory
from registry.exceptions import RegistryError
from registry.presence import PresenceListener
from registry.store import RegistryStore
from tinyfleet.serve.app import create_app
from tinyfleet.serve.auth import TokenStore, default_tokens_path
from tinyfleet.serve.events import EventHub
from tinyfleet.serve.tdd import ServeState

log = logging.getLogger(__name__)


class ServeError(TinyFleetError):
    """The server cannot start (port taken, bad address)."""


@dataclass
class ServeOptions:
    """What `tinyfleet serve` was asked to do (the store is opened by the caller)."""

    host: str = "127.0.0.1"
    port: int = 8080
    tokens: Path = field(default_factory=default_tokens_path)
    runs: list[Path] = field(default_factory=list)
    broker: BrokerAddress | None = None
    credentials: Credentials | None = None
    fleet: str = "+"
    cors_origins: list[str] = field(default_factory=list)
    max_body: int = 1 << 20
    purge_interval: float = 10.0
    validate: bool = True
    title: str = "tinyfleet"


class DirectoryServer:
    """The HTTP server over `store`; a context manager (start on enter, stop on exit)."""

    def __init__(self, store: RegistryStore, options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        self.store = store
        self.directory = ThingDirectory(store, validate=self.options.validate)
        self.hub = EventHub()
        self.directory.subscribe(self.hub.publish)
        self.state = ServeState(directory=self.directory, hub=self.hub, tokens=TokenStore(self.options.tokens),
                                run_roots=list(self.options.runs), max_body=self.options.max_body,
                                title=self.options.title)
        self.app = create_app(self.state, cors_origins=self.options.cors_origins)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._purger: threading.Thread | None = None
        self._listener: PresenceListener | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = self.options.host if ":" not in self.options.host else f"[{self.options.host}]"
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        """Start serving; returns the base URL once the socket accepts connections."""
        if self.options.broker is not None:
            self._listener = PresenceListener(self.store, self.options.broker, self.options.credentials,
                                              fleet=self.options.fleet, ingest=self._ingest)
            self._listener.__enter__()
        config = uvicorn.Config(self.app, host=self.options.host, port=self.options.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=2, access_log=False, ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="tinyfleet-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self.stop()
                raise ServeError(f"cannot serve on {self.options.host}:{self.options.port} "
                                 "(address in use or not available on this machine?)")
            if time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self._purger = threading.Thread(target=self._purge_loop, name="tinyfleet-serve-purge", daemon=True)
        self._purger.start()
        return self.url

    def _ingest(self, doc: Any, source: str) -> object:
        return self.directory.ingest(doc, source=source)

    def _purge_loop(self) -> None:
        """Discovery: servers SHOULD periodically purge TDs past their expiry."""
        while not self._stop.wait(self.options.purge_interval):
            try:
                gone = self.directory.purge_expired()
                if gone:
                    log.info("purged %d expired Thing Descriptions", len(gone))
            except RegistryError as exc:
                log.warning("expiry purge failed: %s", exc)

    def stop(self) -> None:
        """Stop serving (open event streams are closed after at most 2 s) and the listener."""
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._purger is not None:
            self._purger.join(timeout=10)
        if self._listener is not None:
            self._listener.__exit__(None, None, None)
            self._listener = None

    def __enter__(self) -> DirectoryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
