"""Devices are sampled by what their description says: use case and RAM to train the model on the device.

Real agents and a real Mosquitto: a keywords device, an Arduino Uno (2 KB) and a device without a
Thing Description sit next to two fitting sine devices; a sine run samples only the two.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from broker.process import BrokerInfo
from devices.agent import AgentConfig, DeviceAgent
from devices.boards import get_board
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.link.address import BrokerAddress
from devices.simulator import DEFAULT_HIDDEN, FleetSimulator
from devices.wire import protocol
from devices.wire.thing_description import thing_description
from devices.wire.topics import device_topic
from federation.coordinator import Coordinator, RunConfig, wait_for_quorum
from federation.exceptions import QuorumError
from federation.selection import Description, Requirement, description_from_td, training_ram_bytes
from federation.session import fleet_grid, initial_parameters, requirement_for
from tests.support.devices import sine_data, start_hub


def test_verdicts_name_what_is_missing() -> None:
    req = Requirement("sine", 5140)
    assert req.verdict(Description("sine", 262144)) is None
    assert "no Thing Description" in str(req.verdict(None))
    assert "declares no use case" in str(req.verdict(Description(None, 262144)))
    assert "declares use case 'keywords', the run learns 'sine'" in str(req.verdict(Description("keywords", 262144)))
    assert "states no RAM" in str(req.verdict(Description("sine", None)))
    assert req.verdict(Description("sine", 2048)) == "2,048 B of RAM < 5,140 B needed to train the model on the device"


def test_the_td_terms_sampling_reads() -> None:
    td = thing_description(device_id="d", fleet="f", board=get_board("uno"), use_case="presence", host="h", port=1)
    assert description_from_td(td) == Description("presence", 2048)
    assert description_from_td({"tinyfleet:useCase": 7, "tinyfleet:board": {"tinyfleet:ramBytes": "lots"}}) == \
        Description(None, None)
    assert description_from_td("not a TD") == Description(None, None)


def test_training_ram_is_the_devices_own_memory_formula(tmp_path: Path) -> None:
    """The server's need for the fresh sine head equals what a device running that head reports."""
    head = initial_parameters("sine")
    learner = OnlineLearner(MLPHead([head[k] for k in ("w0", "b0", "w1", "b1", "w2", "b2")], kind="regression"))
    assert training_ram_bytes(head) == learner.memory_report()["total"] == 5140
    (tmp_path / "card.json").write_text(json.dumps({"ram": {"online_learning_bytes": 123456}}))
    assert training_ram_bytes(head, models_dir=tmp_path) == 123456  # a built model: its card's figure


def _agent(device_id: str, address: BrokerAddress, tmp_path: Path, *, use_case: str, fleet: str) -> DeviceAgent:
    head = MLPHead.init([1, *DEFAULT_HIDDEN, 1], kind="regression", seed=0)
    cfg = AgentConfig(device_id=device_id, board=get_board("nano33ble"), state_dir=tmp_path / device_id,
                      fleet=fleet, use_case=use_case, telemetry_s=0)
    return DeviceAgent(cfg, OnlineLearner(head, None), sine_data(device_id), address=address)


class Undescribed:
    """A device that announces presence but publishes no Thing Description."""

    def __init__(self, broker: BrokerInfo, fleet: str, device_id: str) -> None:
        self.topic = device_topic(fleet, device_id, "presence")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.publish(self.topic, protocol.presence_payload(device_id, online=True, fleet=fleet), qos=1,
                            retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.client.publish(self.topic, b"", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def test_a_sine_run_samples_only_devices_that_declare_sine_and_fit(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    fleet = "select"
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    sim = FleetSimulator(n=3, use_case="sine", address=address, state_root=tmp_path / "sim", fleet=fleet,
                         boards="nano33ble:2,uno:1", telemetry_s=0)
    keywords = _agent("kw-1", address, tmp_path, use_case="keywords", fleet=fleet)
    hub = start_hub(address, keywords)
    bare = Undescribed(mosquitto, fleet, "bare-1")
    try:
        assert sim.start(timeout=20) == 3
        uno = [a.client_id for a in sim.agents if a.config.board.name == "uno"]
        fits = [a.client_id for a in sim.agents if a.config.board.name != "uno"]
        assert len(uno) == 1 and len(fits) == 2
        cfg = RunConfig(run_id="sel-run", task="sine", strategy="reptile", rounds=2, quorum=2, broker=mosquitto.url,
                        fleet=fleet, round_timeout=10.0, quorum_timeout=10.0)
        assert requirement_for(cfg).training_ram_bytes == 5140
        with fleet_grid(cfg, tmp_path / "run") as grid:
            res = Coordinator(cfg, grid, tmp_path / "run").start(initial_parameters("sine"))
            with pytest.raises(QuorumError) as err:
                wait_for_quorum(grid, 6, 0.5)
        assert [r["sampled"] for r in res["rounds"]] == [2, 2]
        assert all(r["replies"] == 2 and r["failures"] == 0 for r in res["rounds"])
        assert sum(a.tasks_done for a in sim.agents if a.client_id in fits) == 4 * 2  # train + evaluate, 2 rounds
        untouched = [a for a in sim.agents if a.client_id in uno] + [keywords]
        assert [a.tasks_done + a.errors_sent for a in untouched] == [0, 0]
        msg = str(err.value)
        assert "only 2 of the 6 required devices" in msg and "3 present device(s) not eligible" in msg
        assert "bare-1: no Thing Description" in msg
        assert "kw-1: its td declares use case 'keywords', the run learns 'sine'" in msg
        assert f"{uno[0]}: 2,048 B of RAM < 5,140 B needed" in msg

        cfg.allow_undescribed = True  # --allow-undescribed: the bare device joins, the described misfits do not
        with fleet_grid(cfg, tmp_path / "run2") as grid:
            nodes = wait_for_quorum(grid, 3, 10.0)
            assert sorted(grid.device_id(n) for n in nodes) == sorted([*fits, "bare-1"])
    finally:
        bare.close()
        hub.stop()
        sim.stop()
    assert np.isfinite(res["rounds"][-1]["loss"])
