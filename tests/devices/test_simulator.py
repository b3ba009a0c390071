"""The fleet simulator on a real Mosquitto: 50 devices, one network thread, a broadcast task, faults."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from broker.process import BrokerInfo
from devices.link.address import BrokerAddress
from devices.link.fleet_client import FleetClient
from devices.simulator import FaultKnobs, FleetSimulator
from devices.wire import protocol as p
from devices.wire.protocol import ErrorCode
from tests.support.waiting import wait_until


def test_fifty_devices_answer_a_broadcast_train_task(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    threads_before = threading.active_count()
    sim = FleetSimulator(n=50, use_case="sine", address=address, state_root=tmp_path, fleet="sim50",
                         boards="nano33ble:0.6,esp32:0.3,uno:0.1", samples_per_device=20, workers=2)
    try:
        assert sim.start(timeout=20) == 50
        assert threading.active_count() - threads_before <= 1 + 2  # network thread + worker pool, not 50
        with FleetClient(address, fleet="sim50", client_id="srv-sim50") as fc:
            assert len(fc.wait_online(50, timeout=10)) == 50
            weights = sim.agents[0].learner.head.get_weights()
            tasks = {d: p.encode_task(p.MessageType.TRAIN, config={"local-steps": 5, "lr": 0.01, "server-round": 1},
                                      weights=weights, run="bcast", server_round=1) for d in sim.device_ids}
            replies = fc.request(tasks, timeout=20)
            assert all(r is not None for r in replies.values())
            ok = [d for d, r in replies.items() if r.header["ok"]]
            refused = {d: r.header["error"]["code"] for d, r in replies.items() if not r.header["ok"]}
            uno = {a.client_id for a in sim.agents if a.config.board.name == "uno"}
            assert set(refused) == uno and set(refused.values()) == {ErrorCode.DOES_NOT_FIT}
            assert len(ok) == 50 - len(uno) == 45
            assert all(replies[d].header["round"] == 1 and replies[d].header["run"] == "bcast" for d in ok)
            losses = {replies[d].header["metrics"]["train-loss"] for d in ok}
            assert len(losses) > 40  # non-IID: every device has its own sine
    finally:
        sim.stop()


def test_fault_knobs_drop_delay_and_crash(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    dropper = FleetSimulator(n=4, use_case="sine", address=address, state_root=tmp_path / "a", fleet="faults",
                             id_prefix="drop", faults=FaultKnobs(drop_prob=1.0), samples_per_device=10)
    slow = FleetSimulator(n=2, use_case="sine", address=address, state_root=tmp_path / "b", fleet="faults",
                          id_prefix="slow", faults=FaultKnobs(latency_s=0.5), samples_per_device=10)
    crashy = FleetSimulator(n=3, use_case="sine", address=address, state_root=tmp_path / "c", fleet="faults",
                            id_prefix="crash", faults=FaultKnobs(crash_prob_per_s=1.0, crash_down_s=60),
                            samples_per_device=10)
    try:
        for s in (dropper, slow, crashy):
            assert s.start(timeout=10) == len(s.agents)
        with FleetClient(address, fleet="faults", client_id="srv-faults") as fc:
            w = dropper.agents[0].learner.head.get_weights()
            tasks = {d: p.encode_task(p.MessageType.EVALUATE, weights=w) for d in dropper.device_ids + slow.device_ids}
            t0 = time.monotonic()
            replies = fc.request({d: tasks[d] for d in slow.device_ids}, timeout=5)
            assert all(r is not None for r in replies.values()) and time.monotonic() - t0 >= 0.5
            replies = fc.request({d: tasks[d] for d in dropper.device_ids}, timeout=1.0)
            assert all(r is None for r in replies.values())
            assert sum(a.dropped for a in dropper.agents) == 4
            assert wait_until(lambda: all(fc.presence.get(d, {}).get("online") is False
                                          for d in crashy.device_ids), timeout=10)
            assert {fc.presence[d]["reason"] for d in crashy.device_ids} == {"connection lost"}
    finally:
        for s in (dropper, slow, crashy):
            s.stop()
