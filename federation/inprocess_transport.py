"""An in-process transport: device handlers take task bytes and return result bytes.

For unit tests of the strategies and the Grid without a broker: payloads still go through the
real codec (so byte counts and every check are the same as over MQTT), only the network is
replaced by a small thread pool that calls each device's handler.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from federation.transport import PayloadHandler, Transport

DeviceHandler = Callable[[bytes], bytes | None]
"""Takes one task frame, returns one result frame (None: stay silent)."""


class InProcessTransport(Transport):
    """Deliver tasks to in-process device handlers on worker threads.

    Parameters
    ----------
    handlers : mapping of device id to handler
        The fleet; every device starts online.
    workers : int, default=4
        Threads that run handlers (replies arrive concurrently and out of order, as over MQTT);
        0 runs each handler inside `send` (synchronous, deterministic: in-process experiments).
    """

    def __init__(self, handlers: Mapping[str, DeviceHandler], *, workers: int = 4) -> None:
        self.handlers = dict(handlers)
        self._online = set(self.handlers)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memdev") if workers > 0 else None
        self._on_payload: PayloadHandler | None = None

    def start(self, on_payload: PayloadHandler) -> None:
        self._on_payload = on_payload

    def present_devices(self) -> list[str]:
        with self._lock:
            return sorted(self._online)

    def send(self, device_id: str, payload: bytes) -> None:
        if self._pool is None:
            self._run(device_id, payload)
        else:
            self._pool.submit(self._run, device_id, payload)

    def inject(self, device_id: str, payload: bytes) -> None:
        """Deliver `payload` as if `device_id` had published it (replays, garbage, late replies)."""
        if self._on_payload is not None:
            self._on_payload(device_id, payload)

    def _run(self, device_id: str, payload: bytes) -> None:
        reply = self.handlers[device_id](payload)
        if reply is not None and self._on_payload is not None:
            self._on_payload(device_id, reply)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
