"""Fault matrix over a real Mosquitto with real device agents: drops, reconnects, replays, broker restart.

Each faulty run is compared with a fault-free *control* run of the same seeded devices: equal final
parameter digests prove that no update was lost from the survivors and none was counted twice
(Reptile's mean would move if one device's φ entered twice).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from broker.process import MosquittoBroker
from devices.link.address import parse_broker_url
from devices.simulator import FaultKnobs, FleetSimulator
from devices.wire import protocol
from devices.wire.topics import device_topic
from federation.coordinator import Coordinator, RunConfig
from federation.grid import FleetGrid
from federation.mqtt_transport import MqttTransport
from federation.session import initial_parameters
from federation.wire import ProtocolCodec
from tests.support.waiting import wait_until

SEED = 5


def run_config(url: str, fleet: str, *, rounds: int, quorum: int, timeout: float) -> RunConfig:
    return RunConfig(run_id="rel-run", task="sine", strategy="reptile", rounds=rounds, quorum=quorum, broker=url,
                     fleet=fleet, round_timeout=timeout, quorum_timeout=15.0, samples_per_device=16, seed=SEED,
                     local_steps=3, strategy_params={"epsilon": 0.8})


@contextlib.contextmanager
def simulated_fleet(url: str, fleet: str, root: Path, n: int, faults: FaultKnobs) -> Iterator[FleetSimulator]:
    sim = FleetSimulator(n=n, use_case="sine", address=parse_broker_url(url), state_root=root / fleet, fleet=fleet,
                         id_prefix="dev", samples_per_device=16, telemetry_s=0.0, seed=SEED, faults=faults)
    try:
        assert sim.start(timeout=15) == n
        yield sim
    finally:
        sim.stop()


def run(url: str, fleet: str, root: Path, sim: FleetSimulator, *, rounds: int, quorum: int, timeout: float,
        allow: Collection[str] | None = None, during: Callable[[FleetGrid], None] | None = None) -> dict[str, Any]:
    """One Reptile run; `during(grid)` runs in a thread beside the coordinator (the fault injector)."""
    cfg = run_config(url, fleet, rounds=rounds, quorum=quorum, timeout=timeout)
    transport = MqttTransport(parse_broker_url(url), fleet=fleet)
    grid = FleetGrid(transport, ProtocolCodec({"local-steps": cfg.local_steps, "lr": cfg.lr}), run_id=cfg.run_id,
                     allow=allow)
    errors: list[BaseException] = []

    def inject() -> None:
        try:
            during(grid)  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    injector = threading.Thread(target=inject, daemon=True) if during else None
    try:
        if injector:
            injector.start()
        result = Coordinator(cfg, grid, root / f"run-{fleet}").start(initial_parameters("sine", seed=SEED))
    finally:
        transport.close()
    if injector:
        injector.join(30)
        assert not errors, errors
    return result


def train_sent(grid: FleetGrid, rnd: int) -> int:
    return int(grid.ledger.round_summary(rnd)["phases"].get("train", {}).get("sent", 0))


def test_thirty_percent_of_devices_drop_mid_round(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Round 1 completes over the 7 survivors (3 missing, recorded); the result equals a 7-device fleet's."""
    n, dropped = 10, ["dev-0001", "dev-0004", "dev-0008"]
    survivors = [f"dev-{i:04d}" for i in range(n) if f"dev-{i:04d}" not in dropped]
    slow = FaultKnobs(latency_s=0.6)  # replies take 0.6 s, so the crash lands while the round is open
    with simulated_fleet(mosquitto.url, "rel-drop-ref", tmp_path, n, slow) as sim:
        control = run(mosquitto.url, "rel-drop-ref", tmp_path, sim, rounds=2, quorum=7, timeout=5.0, allow=survivors)

    with simulated_fleet(mosquitto.url, "rel-drop", tmp_path, n, slow) as sim:
        def crash_three(grid: FleetGrid) -> None:
            assert wait_until(lambda: train_sent(grid, 1) == n, timeout=20)
            for d in dropped:  # TCP torn without DISCONNECT: the broker fires the Will; no reply ever comes
                sim.hub.links[d].crash(down_for=120)

        faulty = run(mosquitto.url, "rel-drop", tmp_path, sim, rounds=2, quorum=n, timeout=2.5, during=crash_three)

    r1, r2 = faulty["rounds"]
    assert (r1["sampled"], r1["replies"], r1["missing"], r1["failures"]) == (10, 7, 3, 0)
    assert (r2["sampled"], r2["replies"], r2["missing"]) == (7, 7, 0)  # the Will took them out of sampling
    assert [r["replies"] for r in control["rounds"]] == [7, 7]
    assert faulty["final_sha256"] == control["final_sha256"]


class Tap:
    """A plain paho client that records one device's tasks and results and can re-publish them."""

    def __init__(self, url: str, fleet: str, device: str) -> None:
        addr = parse_broker_url(url)
        self.fleet, self.device = fleet, device
        self.tasks: list[bytes] = []
        self.results: list[bytes] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{fleet}", protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(
            [(device_topic(fleet, device, "task"), 1), (device_topic(fleet, device, "result"), 1)])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(addr.host, addr.port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        (self.tasks if msg.topic.endswith("/task") else self.results).append(bytes(msg.payload))

    def publish(self, kind: str, payload: bytes) -> None:
        self.client.publish(device_topic(self.fleet, self.device, kind), payload, qos=1).wait_for_publish(5)

    def results_for(self, task: bytes) -> int:
        tid = protocol.decode_frame(task).id
        return sum(1 for r in self.results if protocol.frame_header(r).get("reply-to") == tid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_reconnect_mid_round_redelivery_and_replay_count_once(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """dev-0002 drops and reconnects while training; its task is delivered again and its old reply replayed.

    The agent answers the redelivered task from its reply cache (trained once), the Grid keeps one
    reply per request, and a round-1 reply replayed in round 2 is discarded and counted: the final
    parameters equal a fault-free run's.
    """
    n, target = 5, "dev-0002"
    slow = FaultKnobs(latency_s=0.8)
    with simulated_fleet(mosquitto.url, "rel-dup-ref", tmp_path, n, slow) as sim:
        control = run(mosquitto.url, "rel-dup-ref", tmp_path, sim, rounds=2, quorum=n, timeout=6.0)

    tap = Tap(mosquitto.url, "rel-dup", target)
    try:
        with simulated_fleet(mosquitto.url, "rel-dup", tmp_path, n, slow) as sim:
            link = sim.hub.links[target]
            injected: dict[str, int] = {}

            def flap_and_replay(grid: FleetGrid) -> None:
                assert wait_until(lambda: train_sent(grid, 1) == n and len(tap.tasks) >= 1, timeout=20)
                link.crash(down_for=0.1)  # reply is still in its 0.8 s latency window
                assert wait_until(lambda: link.connects == 2, timeout=5)
                tap.publish("task", tap.tasks[0])  # the broker-style redelivery of the same task id
                assert wait_until(lambda: tap.results_for(tap.tasks[0]) >= 2, timeout=5)
                injected["round1_results"] = tap.results_for(tap.tasks[0])
                round1_result = next(r for r in tap.results
                                     if protocol.frame_header(r).get("reply-to") == protocol.decode_frame(
                                         tap.tasks[0]).id and protocol.frame_header(r).get("ok"))
                assert wait_until(lambda: train_sent(grid, 2) == n, timeout=20)
                tap.publish("result", round1_result)  # a replay of an old, valid reply during round 2
                injected["replayed"] = 1

            faulty = run(mosquitto.url, "rel-dup", tmp_path, sim, rounds=2, quorum=n, timeout=6.0,
                         during=flap_and_replay)
            trained = {a.client_id: a.learner.samples_seen_ for a in sim.agents}
    finally:
        tap.close()

    assert injected["round1_results"] >= 2 and injected["replayed"] == 1
    assert [(r["replies"], r["failures"], r["missing"]) for r in faulty["rounds"]] == [(n, 0, 0), (n, 0, 0)]
    assert faulty["rounds"][1]["discarded"] >= 1
    assert faulty["rounds"][1]["reasons"].get("late-or-unknown", 0) >= 1
    assert len(set(trained.values())) == 1  # the flapping device trained exactly as often as the others
    assert faulty["final_sha256"] == control["final_sha256"]


def test_broker_restart_mid_run(tmp_path: Path) -> None:
    """Mosquitto is stopped and started on the same port while round 2's tasks are out.

    Coordinator and agents reconnect and resubscribe by themselves; every round is recorded exactly
    once, and the last round again hears from every device.
    """
    broker = MosquittoBroker(tmp_path / "broker")
    url = broker.start().url
    n = 5
    try:
        with simulated_fleet(url, "rel-restart-ref", tmp_path, n, FaultKnobs(latency_s=0.5)) as sim:
            control = run(url, "rel-restart-ref", tmp_path, sim, rounds=3, quorum=n, timeout=4.0)
        with simulated_fleet(url, "rel-restart", tmp_path, n, FaultKnobs(latency_s=0.5)) as sim:
            restarted: dict[str, float] = {}

            def restart(grid: FleetGrid) -> None:
                assert wait_until(lambda: train_sent(grid, 2) == n, timeout=30)
                t0 = time.monotonic()
                broker.restart()
                restarted["down_s"] = time.monotonic() - t0
                assert wait_until(lambda: all(link.connects >= 2 for link in sim.hub.links.values()), timeout=15)
                restarted["devices_back_s"] = time.monotonic() - t0

            res = run(url, "rel-restart", tmp_path, sim, rounds=3, quorum=n, timeout=4.0, during=restart)
            run_dir = tmp_path / "run-rel-restart"
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    finally:
        broker.stop()
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3]
    assert len(lines) == 3
    for r in res["rounds"]:  # round 2's lost tasks were re-sent when the devices came back: nothing missing
        assert (r["sampled"], r["replies"], r["failures"], r["missing"], r["eval_replies"]) == (n, n, 0, 0, n), r
    assert res["rounds"][1]["resent"] >= n and res["rounds"][0]["resent"] == res["rounds"][2]["resent"] == 0
    assert restarted["devices_back_s"] < 15
    assert res["final_sha256"] == control["final_sha256"]  # no update lost, none counted twice
    print(f"broker restart: down {restarted['down_s']:.2f} s, devices back after {restarted['devices_back_s']:.2f} s, "
          f"round 2 resent={res['rounds'][1]['resent']} seconds={res['rounds'][1]['seconds']}")
