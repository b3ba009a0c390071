"""Shared helpers of the tests/test_devices_*.py files: real agents on a real Mosquitto."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices.agent import AgentConfig, DeviceAgent
from devices.boards import Board, get_board
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.link.address import BrokerAddress
from devices.link.hub import MqttHub
from firmware_models.usecases.base import DeviceData


def sine_data(device_id: str, n: int = 40, seed: int = 0) -> DeviceData:
    """One sine task: y = A sin(x + phi)."""
    rng = np.random.default_rng(seed)
    a, phi = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
    x = rng.uniform(-5, 5, size=(n, 1)).astype(np.float32)
    return DeviceData(device_id, x, (a * np.sin(x + phi)).astype(np.float32), {"amplitude": a, "phase": phi})


def sine_agent(device_id: str, address: BrokerAddress, state_dir: Path, *, board: Board | None = None,
               fleet: str = "test", seed: int = 0, **cfg: object) -> DeviceAgent:
    """A real DeviceAgent with a 1-8-1 sine head."""
    head = MLPHead.init([1, 8, 1], kind="regression", seed=seed)
    config = AgentConfig(device_id=device_id, board=board or get_board("nano33ble"), state_dir=state_dir,
                         fleet=fleet, use_case="sine", sensors=("scalar-signal",), seed=seed, **cfg)  # type: ignore[arg-type]
    return DeviceAgent(config, OnlineLearner(head, None, seed=seed), sine_data(device_id, seed=seed),
                       address=address)


def start_hub(address: BrokerAddress, *agents: DeviceAgent) -> MqttHub:
    hub = MqttHub(address, workers=1)
    for a in agents:
        hub.add(a)
    hub.start()
    assert hub.wait_connected(10) == len(agents)
    return hub
