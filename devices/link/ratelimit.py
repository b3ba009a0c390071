"""Per-device message budgets for server-side listeners (coordinator, registry): a flood costs the sender.

A device may publish only on its own topics (the broker's ACL), but on those as often as it likes.
Every server process that does work per message (re-send a task, decode a 4 MiB result, write the
registry) therefore gives each (device, topic kind) a token bucket: `burst` messages at once, then
`rate` per second. Messages over the budget are dropped before any work is done and counted by the
caller, so one device's flood is bounded work for the server and nothing for the other devices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable


class RateLimiter:
    """Token buckets keyed by anything hashable (e.g. ``(device id, kind)``).

    Parameters
    ----------
    rate : float
        Tokens added per second (the sustained message rate allowed).
    burst : float
        Bucket size: messages allowed at once after a quiet period.
    clock : callable, default=time.monotonic
        Seconds; injectable for tests.
    """

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1; got rate={rate!r}, burst={burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> bool:
        """Take one token for `key`; False (drop the message) when its bucket is empty."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True
