"""A fleet of simulated devices in one process: N agents, one network thread, a small worker pool.

Each simulated device is a full `DeviceAgent` with its own MQTT client id and session, its own
non-IID data (one task of the use case per device), its own board profile and its own copy of
the model; only the transport is shared (`MqttHub`: one selector thread for all sockets), so
1,000 devices cost 1,000 TCP connections but not 1,000 threads. Fault knobs make the fleet
realistic: dropped tasks, added latency, slow devices and crashes that fire the Last Will.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devices.agent import AgentConfig, DeviceAgent
from devices.boards import DEFAULT_BOARD, assign_boards
from devices.duty_cycle import DutyCycle
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.link.address import BrokerAddress, Credentials
from devices.link.hub import MqttHub
from devices.wire.topics import DEFAULT_FLEET, check_name
from firmware_models.exceptions import TinyFleetError
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_BACKBONE, DeviceData, UseCase
from firmware_models.usecases.sine import HIDDEN as SINE_HIDDEN

# A backbone-free use case without a built model starts from a fresh head of the sine model's shape.
DEFAULT_HIDDEN = SINE_HIDDEN


@dataclass(frozen=True)
class FaultKnobs:
    """Faults injected into simulated devices.

    Attributes
    ----------
    drop_prob : float
        Probability that a device ignores a task (no reply).
    latency_s : float
        Added delay before every reply.
    slow_fraction : float
        Fraction of devices that are slow.
    slow_factor : float
        A slow device's compute time is multiplied by this (the extra time is added as delay).
    crash_prob_per_s : float
        Per device and second: probability of an unclean drop (the broker publishes the Will).
    crash_down_s : float
        How long a crashed device stays away before it reconnects.
    intermittent_fraction : float
        Fraction of devices that sleep most of the time (battery-powered microcontrollers).
    online_s, period_s : float
        An intermittent device is online `online_s` seconds of every `period_s` (at a random
        phase of its own), e.g. 60 s in 180 s; the schedule starts once the fleet has connected.
    """

    drop_prob: float = 0.0
    latency_s: float = 0.0
    slow_fraction: float = 0.0
    slow_factor: float = 4.0
    crash_prob_per_s: float = 0.0
    crash_down_s: float = 2.0
    intermittent_fraction: float = 0.0
    online_s: float = 60.0
    period_s: float = 180.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.intermittent_fraction <= 1.0:
            raise TinyFleetError(f"intermittent fraction must be in [0, 1]; got {self.intermittent_fraction}")
        if self.intermittent_fraction > 0 and not 0.0 < self.online_s < self.period_s:
            raise TinyFleetError(f"an intermittent device must be online for 0 < online ({self.online_s:g} s) "
                                 f"< period ({self.period_s:g} s)")


class LearnerFactory:
    """Makes one independent learner per device from the use case's artifacts (read from disk once).

    With `models_dir`, the artifacts of ``models_dir/<use case>/`` (or `models_dir` itself) are used:
    ``head.npz``, optional ``backbone.tflite`` and ``card.json``. Without it, a backbone-free use
    case (sine) starts from a fresh He-initialised MLP head, 32-32 hidden units.
    """

    def __init__(self, use_case: UseCase, models_dir: Path | None, *, seed: int = 0) -> None:
        self.use_case = use_case
        self.seed = seed
        self.template: OnlineLearner | None = None
        self.backbone_bytes: bytes | None = None
        if models_dir is not None:
            d = Path(models_dir)
            if (d / use_case.name).is_dir():
                d = d / use_case.name
            self.template = OnlineLearner.from_artifacts(d, kind=use_case.kind)
            if (d / ARTIFACT_BACKBONE).is_file():
                self.backbone_bytes = (d / ARTIFACT_BACKBONE).read_bytes()
        elif use_case.name != "sine":
            raise TinyFleetError(f"use case {use_case.name!r} needs a trained backbone: pass --models DIR "
                                 "(the output folder of `tinyfleet models build`)")

    def __call__(self, index: int, data: DeviceData) -> OnlineLearner:
        if self.template is None:
            n_in = math.prod(self.use_case.input_shape)
            n_out = int(data.y.shape[1]) if data.y.ndim > 1 else 1
            head = MLPHead.init([n_in, *DEFAULT_HIDDEN, n_out], kind=self.use_case.kind, seed=self.seed)
            return OnlineLearner(head, None, seed=self.seed + index)
        head = MLPHead(self.template.head.get_weights(), kind=self.use_case.kind)
        backbone = TFLiteModel.from_bytes(self.backbone_bytes) if self.backbone_bytes is not None else None
        arena = self.template.arena_bytes() if backbone is not None else 0
        return OnlineLearner(head, backbone, lr=self.template.lr, seed=self.seed + index, arena_bytes=arena)


class FleetSimulator:
    """N `DeviceAgent`s on one `MqttHub`.

    Parameters
    ----------
    n : int
        Number of devices.
    use_case : str
        Use-case name; each device gets its own task from ``devices("train", n, ...)``.
    address : BrokerAddress
    state_root : Path
        Each device keeps its deployed models in ``state_root/<device id>/``.
    boards : str, default="nano33ble"
        Board mix, e.g. ``"nano33ble:0.5,esp32:0.3,uno:0.2"``.
    fleet : str, default="default"
    id_prefix : str, default="sim"
        Device ids are ``<prefix>-0000``, ``<prefix>-0001``, ...
    models_dir : Path, optional
    samples_per_device : int, default=50
    faults : FaultKnobs, default=FaultKnobs()
    telemetry_s : float, default=30.0
    workers : int, default=2
    credentials : Credentials, optional
        Shared by every device (a broker with one fleet account); prefer `device_credentials`.
    device_credentials : mapping of device id to Credentials, optional
        Each device's own account (a secured broker gives every device its own password; the
        caller enrols them, e.g. with `broker.accounts.enroll_device_credentials`, because broker
        operations are not a device's business). Ids are `simulated_ids(n, id_prefix)`.
    data : Path, optional
        The use case's real data set (`UseCase.with_data`): devices stream it instead of generated data.
    seed : int, default=0
    """

    def __init__(self, *, n: int, use_case: str, address: BrokerAddress, state_root: Path, data: Path | None = None,
                 boards: str = DEFAULT_BOARD, fleet: str = DEFAULT_FLEET, id_prefix: str = "sim",
                 models_dir: Path | None = None, samples_per_device: int = 50, faults: FaultKnobs = FaultKnobs(),
                 telemetry_s: float = 30.0, workers: int = 2, credentials: Credentials | None = None,
                 device_credentials: Mapping[str, Credentials] | None = None, seed: int = 0) -> None:
        if n < 1:
            raise TinyFleetError(f"--n must be at least 1; got {n}")
        check_name(fleet, what="fleet name")
        check_name(f"{id_prefix}-0000")
        uc = get_use_case(use_case, data=data)
        datasets = uc.devices("train", n, samples_per_device=samples_per_device, seed=seed)
        factory = LearnerFactory(uc, models_dir, seed=seed)
        rng = random.Random(seed)
        ids = simulated_ids(n, id_prefix)
        own = dict(device_credentials or {})
        # an intermittent device checks its schedule every tick: tick often enough to sleep on time
        tick = min(1.0, faults.online_s / 10) if faults.intermittent_fraction > 0 else 1.0
        self.hub = MqttHub(address, credentials=credentials, workers=workers, tick_s=tick)
        self.agents: list[DeviceAgent] = []
        authenticated = bool(own) or (credentials is not None and credentials.password is not None)
        for i, (device_data, board) in enumerate(zip(datasets, assign_boards(boards, n), strict=True)):
            device_id = ids[i]
            slow = rng.random() < faults.slow_fraction
            intermittent = rng.random() < faults.intermittent_fraction
            phase = rng.uniform(0.0, faults.period_s) if intermittent else 0.0
            cfg = AgentConfig(device_id=device_id, board=board, state_dir=Path(state_root) / device_id, fleet=fleet,
                              use_case=uc.name, sensors=tuple(uc.sensors), telemetry_s=telemetry_s,
                              drop_prob=faults.drop_prob, latency_s=faults.latency_s,
                              slow_factor=faults.slow_factor if slow else 1.0,
                              crash_prob_per_s=faults.crash_prob_per_s, crash_down_s=faults.crash_down_s,
                              duty=DutyCycle(faults.online_s, faults.period_s, phase) if intermittent else None,
                              seed=seed + i)
            agent = DeviceAgent(cfg, factory(i, device_data), device_data, address=address,
                                authenticated=authenticated)
            self.agents.append(agent)
            self.hub.add(agent, credentials=own.get(device_id))

    @property
    def device_ids(self) -> list[str]:
        return [a.client_id for a in self.agents]

    @property
    def intermittent_ids(self) -> list[str]:
        """Devices that follow an on/off duty cycle."""
        return [a.client_id for a in self.agents if a.config.duty is not None]

    def start(self, *, timeout: float = 30.0) -> int:
        """Connect every device, then start the duty cycles; returns how many connected within `timeout`.

        Returns early when every device still offline was refused by the broker (a wrong or
        missing password does not heal by waiting); `connection_errors` says why. The duty cycles
        of intermittent devices start only afterwards: a device that fell asleep before its first
        CONNACK would look like one that cannot connect.
        """
        self.hub.start()
        deadline = time.monotonic() + timeout
        while True:
            connected = self.hub.wait_connected(min(0.5, max(0.0, deadline - time.monotonic())))
            errors = self.connection_errors()
            refused = sum(1 for e in errors.values() if " refused " in e)
            if connected == len(self.agents) or time.monotonic() >= deadline or \
                    (refused and refused == len(self.agents) - connected):
                break
        t0 = time.monotonic()
        for agent in self.agents:
            if agent.config.duty is not None:
                agent.config.duty.arm(t0)
        return connected

    def connection_errors(self) -> dict[str, str]:
        """``{device id: last connection error}`` of the devices that are not connected now."""
        return {cid: link.last_error for cid, link in self.hub.links.items()
                if link.last_error and not link.connected.is_set()}

    def stop(self) -> None:
        """Publish offline presence for every device, disconnect cleanly, stop the threads."""
        self.hub.stop()

    def __enter__(self) -> FleetSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def simulated_ids(n: int, prefix: str = "sim") -> list[str]:
    """The device ids `FleetSimulator` gives its `n` devices: ``<prefix>-0000``, ``<prefix>-0001``, ..."""
    return [f"{prefix}-{i:04d}" for i in range(n)]
