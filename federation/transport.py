"""What the Grid needs from a transport, and what it hands back.

The Grid speaks Flower `Message`s upwards and bytes downwards; a transport only moves bytes to and
from device ids and knows who is present. Two transports exist: `federation.mqtt_transport`
(real Mosquitto, real device agents) and `federation.inprocess_transport` (in-process, for unit tests of the
strategies). Both go through the same codec, so byte counts and validation are the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PayloadHandler = Callable[[str, bytes], None]
"""Called by the transport (from its own thread) with (device id, raw payload) of every result."""

OnlineHandler = Callable[[str], None]
"""Called by the transport (from its own thread) with the id of a device that announced itself online."""

DiscardHandler = Callable[[str, str, int], None]
"""Called by the transport with (device id, reason, bytes) for a message it dropped unread (e.g. a flood)."""


@dataclass(frozen=True)
class TaskSpec:
    """One instruction to one device, before encoding."""

    message_id: str
    run_id: str
    server_round: int
    task_type: str  # "train" or "evaluate"
    config: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]


@dataclass
class WireReply:
    """A decoded device result (the codec has checked framing, version and tensor encoding)."""

    correlation_id: str
    run_id: str | None  # None: the result carries no 'run' (a device must copy it from the task)
    server_round: int | None  # None: the result carries no 'round'
    device_id: str
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (code, reason) when the device reports a failure


class CodecError(ValueError):
    """A payload that cannot be decoded; `correlation_id` is set when the header was readable.

    `reason` is the countable label the round's ledger records (``malformed``, ``non-finite``, ...).
    """

    def __init__(self, message: str, correlation_id: str | None = None, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.correlation_id = correlation_id
        self.reason = reason


class Codec(ABC):
    """Turns `TaskSpec`s into bytes and device results back into `WireReply`s."""

    @abstractmethod
    def encode_task(self, task: TaskSpec) -> bytes:
        """Serialize one task."""

    @abstractmethod
    def decode_reply(self, payload: bytes) -> WireReply:
        """Parse one result; raise `CodecError` for anything malformed."""


class Transport(ABC):
    """Moves payloads between the server and devices; reports presence."""

    @abstractmethod
    def start(self, on_payload: PayloadHandler) -> None:
        """Begin delivering results to `on_payload` (from any thread)."""

    @abstractmethod
    def present_devices(self) -> list[str]:
        """Device ids that are online now."""

    @abstractmethod
    def send(self, device_id: str, payload: bytes) -> None:
        """Deliver one task payload to `device_id` (fire and forget)."""

    @abstractmethod
    def close(self) -> None:
        """Stop delivering and release connections."""

    def on_device_online(self, handler: OnlineHandler) -> None:
        """Register `handler(device_id)` for every "online" announcement (first connect or reconnect).

        Why: a task published while a device (or the broker) was away is lost with a clean MQTT
        session; the Grid re-sends the device's in-flight tasks when it is back. Transports without
        presence events never call it.
        """
        self._online_handler: OnlineHandler | None = handler

    def on_discard(self, handler: DiscardHandler) -> None:
        """Register `handler(device_id, reason, nbytes)` for messages the transport drops itself.

        Why: a flood of presence messages, a presence document naming another device or a result
        over a device's message budget never reaches the Grid, but the round's ledger must still
        say what was dropped and why (reasons such as ``rate-limited``, ``wrong-device``).
        """
        self._discard_handler: DiscardHandler | None = handler

    def check_connected(self) -> None:
        """Raise `federation.exceptions.BrokerLostError` if the transport has lost its broker for good.

        Called by the Grid while it waits for replies and by the coordinator between rounds; an
        in-process transport is always connected.
        """
        return None
