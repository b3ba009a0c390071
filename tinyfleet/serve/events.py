"""Server-Sent Events for the directory's lifecycle events (WoT Discovery Notification API).

Events come from any thread (HTTP handlers, the MQTT listener, the expiry purge); each SSE client
has an asyncio queue on the server's event loop, filled with `call_soon_threadsafe`. The last
`keep` events stay in memory with increasing ids, so a client that reconnects with `Last-Event-ID`
gets every event it missed (Discovery: "respond to re-connecting clients by delivering all missed
events"), as long as it was away for fewer than `keep` events.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from registry.directory import DirectoryEvent

EVENT_TYPES = ("thing_created", "thing_updated", "thing_deleted")


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[int, DirectoryEvent]] = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))


class EventHub:
    """Fan-out of `DirectoryEvent`s to SSE clients, with a replay buffer."""

    def __init__(self, keep: int = 1000) -> None:
        self._lock = threading.Lock()
        self._events: deque[tuple[int, DirectoryEvent]] = deque(maxlen=keep)
        self._next = 1
        self._subs: set[Subscriber] = set()

    def publish(self, event: DirectoryEvent) -> None:
        with self._lock:
            item = (self._next, event)
            self._next += 1
            self._events.append(item)
            subs = list(self._subs)
        for sub in subs:
            sub.loop.call_soon_threadsafe(_offer, sub.queue, item)

    def subscribe(self, last_id: int | None) -> tuple[Subscriber, list[tuple[int, DirectoryEvent]]]:
        """Register a client on the running loop; returns it and the events after `last_id`."""
        sub = Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
            backlog = [e for e in self._events if last_id is not None and e[0] > last_id]
        return sub, backlog

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._subs)


def _offer(queue: asyncio.Queue[tuple[int, DirectoryEvent]], item: tuple[int, DirectoryEvent]) -> None:
    if not queue.full():  # a client that reads nothing for 10,000 events loses the newest, not the server
        queue.put_nowait(item)


def event_data(event: DirectoryEvent, *, diff: bool) -> dict[str, Any]:
    """The event's data: the id only, or with `diff=true` the whole TD (created) / merge patch (updated)."""
    if diff and event.type == "thing_created" and event.td is not None:
        return event.td
    if diff and event.type == "thing_updated" and event.diff is not None:
        return {**event.diff, "id": event.id}
    return {"id": event.id}


def format_sse(event_id: int, event: DirectoryEvent, *, diff: bool) -> str:
    """One SSE message: `event:`, one `data:` line per JSON line, `id:`."""
    text = json.dumps(event_data(event, diff=diff), ensure_ascii=False)
    data = "".join(f"data: {line}\n" for line in text.splitlines())
    return f"event: {event.type}\n{data}id: {event_id}\n\n"
