"""An enrolled device that behaves as an attacker would: real MQTT, its own account, scripted answers.

The broker lets it publish only on its own topics (the ACL holds); everything it does there is
chosen by the test: forged TDs, presence floods, replies with absurd numbers, a broker killed
mid-run. It speaks the real wire protocol (`devices.wire.protocol`), so the server sees exactly
the bytes a hostile firmware could send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from devices.boards import get_board
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient
from devices.wire import protocol
from devices.wire.thing_description import td_payload, thing_description
from devices.wire.topics import device_topic

Responder = Callable[["HostileDevice", protocol.Frame], "bytes | list[bytes] | None"]
"""Given the device and a decoded task, return the result frame(s) to publish (None: stay silent)."""


class HostileDevice:
    """One device account driven by a test.

    Parameters
    ----------
    address, credentials : where and as whom it logs in (its own enrolment).
    fleet, device_id : its topics.
    respond : called on the network thread for every task; see `Responder`.
    """

    def __init__(self, address: BrokerAddress, credentials: Credentials | None, *, fleet: str, device_id: str,
                 respond: Responder | None = None) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.respond = respond
        self.tasks: list[protocol.Frame] = []
        self.cond = threading.Condition()
        self.mqtt = MqttClient(address, credentials, client_id=device_id,
                               subscriptions=[device_topic(fleet, device_id, "task")], on_message=self._on_task)

    def __enter__(self) -> HostileDevice:
        self.mqtt.connect(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.mqtt.close()

    def topic(self, kind: str) -> str:
        return device_topic(self.fleet, self.device_id, kind)  # type: ignore[arg-type]

    def publish(self, kind: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish QoS 1 on one of its own topics and wait until the broker acknowledged it."""
        self.mqtt.publish(self.topic(kind), payload, qos=1, retain=retain).wait_for_publish(10)

    def announce(self, *, online: bool = True, retain: bool = True, use_case: str = "sine") -> None:
        """Publish a true Thing Description (a sine learner on a nano33ble: it gets sampled), then presence."""
        if online:
            td = thing_description(device_id=self.device_id, fleet=self.fleet, board=get_board("nano33ble"),
                                   use_case=use_case, host="127.0.0.1", port=1883, sensors=["scalar-signal"])
            self.publish("td", td_payload(td), retain=True)
        self.publish("presence", protocol.presence_payload(self.device_id, online=online, fleet=self.fleet),
                     retain=retain)

    def wait_tasks(self, n: int, timeout: float = 30.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.tasks) >= n, timeout)

    def _on_task(self, topic: str, payload: bytes) -> None:
        frame = protocol.decode_frame(payload)
        with self.cond:
            self.tasks.append(frame)
            self.cond.notify_all()
        out = self.respond(self, frame) if self.respond is not None else None
        for reply in [out] if isinstance(out, bytes) else (out or []):
            self.mqtt.publish(self.topic("result"), reply, qos=1)


def task_arrays(frame: protocol.Frame) -> dict[str, np.ndarray]:
    """The named tensors of a task (the global parameters θ)."""
    return {name: np.asarray(t) for name, t in frame.tensors}


def train_reply(frame: protocol.Frame, device: str, tensors: list[tuple[str, Any]], *,
                num_examples: float | None = None, **metrics: float) -> bytes:
    """A well-formed train result carrying `tensors` (any dtype the wire allows)."""
    n = frame.config.get("local-steps", 1) if num_examples is None else num_examples
    return protocol.encode_result(frame.header, device=device, tensors=tensors,
                                  metrics={"num-examples": n, "train-loss": 0.5, **metrics})


def eval_reply(frame: protocol.Frame, device: str, *, loss: float = 0.5, num_examples: float = 8) -> bytes:
    return protocol.encode_result(frame.header, device=device, metrics={"num-examples": num_examples, "loss": loss})
