"""Asynchronous (FedBuff-style) rounds: exact arithmetic in-process, intermittent devices over real MQTT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict

from broker.process import MosquittoBroker
from devices.link.address import parse_broker_url
from devices.simulator import FaultKnobs, FleetSimulator
from devices.wire.protocol import ConfigKey
from federation.buffered import BufferedRun, first_replies, staleness_weight
from federation.coordinator import RunConfig
from federation.exceptions import FederationError
from federation.flower_compat import init_task_identity
from federation.grid import FleetGrid
from federation.hierarchy.settings import HierarchyConfig
from federation.inprocess_transport import InProcessTransport
from federation.meta_update import linear_epsilon
from federation.mqtt_transport import MqttTransport
from federation.session import initial_parameters
from federation.wire import ProtocolCodec
from tests.support.federation import QuadraticDevice, adapted, initial_head

STEPS, LR = 3, 0.1


def _absurd(hdr: dict, tensors: list) -> list:
    """A device that answers every tensor with 3e38: finite in float32, so only the round-level rules catch it."""
    return [(k, np.full_like(t, 3.0e38)) for k, t in tensors]


def _run(tmp_path: Path, n: int, buffer: int, rounds: int, *, attackers: int = 0, min_replies: int = 1,
         **kw: object) -> tuple[list[dict], dict, FleetGrid, dict[str, QuadraticDevice]]:
    init_task_identity(1)
    devs = {f"dev-{i}": QuadraticDevice(f"dev-{i}", sabotage=_absurd if i < attackers else None) for i in range(n)}
    grid = FleetGrid(InProcessTransport(devs), ProtocolCodec({"local-steps": STEPS, "lr": LR}), run_id="run-b")
    cfg = RunConfig(run_id="b", task="sine", strategy="reptile", rounds=rounds, local_steps=STEPS, lr=LR,
                    strategy_params={"epsilon": 0.9, "epsilon_floor": 0.1}, quorum=n, quorum_timeout=10,
                    round_timeout=10, min_replies=min_replies)
    settings = HierarchyConfig(run=cfg, mode="async", buffer=buffer, **kw)  # type: ignore[arg-type]
    try:
        result = BufferedRun(settings, grid, tmp_path).start(initial_head())
    finally:
        grid.transport.close()
    return result["rounds"], result["final"], grid, devs


def test_a_full_buffer_is_exactly_a_synchronous_reptile_round(tmp_path: Path) -> None:
    records, final, _, devs = _run(tmp_path, n=4, buffer=4, rounds=3)
    theta = {k: v.astype(np.float32) for k, v in initial_head().items()}
    for rnd in (1, 2, 3):
        eps = linear_epsilon(rnd, 3, epsilon=0.9, epsilon_floor=0.1)
        theta = {k: (t.astype(np.float64) + eps * np.mean(
            [adapted(t, d.center[k], STEPS, LR).astype(np.float64) - t for d in devs.values()], axis=0)
        ).astype(np.float32) for k, t in theta.items()}
    assert [r["staleness_max"] for r in records] == [0, 0, 0]
    for k in theta:
        np.testing.assert_allclose(final[k], theta[k], rtol=0, atol=1e-6)


def test_stale_replies_are_rebased_and_down_weighted(tmp_path: Path) -> None:
    """Six devices in flight, a buffer of two: most replies arrive a version or more late."""
    records, final, grid, devs = _run(tmp_path, n=6, buffer=2, rounds=6, staleness_alpha=0.5, max_staleness=10)
    assert max(r["staleness_max"] for r in records) >= 1
    # replay the run from what it recorded: θ_{v+1} = θ_v + ε_v · mean_i s(τ_i) (φ_i(θ_base) − θ_base)
    thetas = {1: {k: v.astype(np.float32) for k, v in initial_head().items()}}
    for r in records:
        v = r["round"]
        eps = linear_epsilon(v, 6, epsilon=0.9, epsilon_floor=0.1)
        new = {}
        for k, t in thetas[v].items():
            steps = []
            for node, base in r["contributors"]:
                center = devs[grid.device_id(node)].center[k]
                tb = thetas[base][k]
                w = staleness_weight(v - base, alpha=0.5)
                steps.append(w * (adapted(tb, center, STEPS, LR).astype(np.float64) - tb))
            new[k] = (t.astype(np.float64) + eps * np.mean(steps, axis=0)).astype(np.float32)
        thetas[v + 1] = new
    for k in final:
        np.testing.assert_allclose(final[k], thetas[7][k], rtol=0, atol=1e-5)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_replies_left_in_the_buffer_age_and_are_discarded_when_too_stale(tmp_path: Path) -> None:
    """Six replies arrive at once for a buffer of two: the four left over are a version old at the next
    aggregation, which `max_staleness=0` forbids (and whose base version is already forgotten)."""
    records, _, _, _ = _run(tmp_path, n=6, buffer=2, rounds=3, max_staleness=0)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert all(r["staleness_max"] == 0 for r in records), records
    assert records[-1]["discarded_stale"] > 0, records[-1]


def test_an_absurd_update_is_screened_out_of_a_full_buffer(tmp_path: Path) -> None:
    """One device of four answers 3e38 everywhere: the buffer's median rule refuses it, as a sync round does,
    and the version goes ahead with the three honest replies (no device is left to fill the buffer)."""
    records, final, _, _ = _run(tmp_path, n=4, buffer=4, rounds=2, attackers=1)
    assert max(float(np.max(np.abs(v))) for v in final.values()) < 100.0
    assert all(r["replies"] == 3 for r in records), records
    assert records[-1]["failures"] == 2 and records[-1]["reasons"] == {"absurd-norm": 2}


def test_a_small_buffer_is_judged_against_recently_aggregated_norms(tmp_path: Path) -> None:
    """Buffers of one have no median: after a few honest versions, the absurd device's reply is refused
    against the rolling median of accepted update norms."""
    records, final, _, _ = _run(tmp_path, n=6, buffer=1, rounds=12, attackers=1, max_staleness=20)
    assert max(float(np.max(np.abs(v))) for v in final.values()) < 100.0
    assert records[-1]["reasons"].get("absurd-norm", 0) >= 1, records[-1]


def test_too_few_devices_for_the_buffer_aggregate_what_they_sent(tmp_path: Path) -> None:
    """Two devices, a buffer of five: each version is aggregated from the two replies instead of waiting forever."""
    records, _, _, _ = _run(tmp_path, n=2, buffer=5, rounds=2)
    assert [(r["round"], r["replies"]) for r in records] == [(1, 2), (2, 2)]


def test_too_few_devices_for_min_replies_end_the_run_with_an_error(tmp_path: Path) -> None:
    with pytest.raises(FederationError, match="only 2 device.* version 1 .*--buffer is 5"):
        _run(tmp_path, n=2, buffer=5, rounds=2, min_replies=3)


def test_staleness_weight() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3, alpha=0.5) == pytest.approx(0.5)
    assert staleness_weight(3, kind="constant") == 1.0
    with pytest.raises(ValueError):
        staleness_weight(-1)


@pytest.mark.slow
def test_devices_that_sleep_most_of_the_time_keep_contributing(tmp_path: Path) -> None:
    """Real Mosquitto, 12 simulated devices of which half are online 0.8 s in every 2.4 s."""
    broker = MosquittoBroker(tmp_path / "broker")
    address = parse_broker_url(broker.start().url)
    sim = FleetSimulator(n=12, use_case="sine", address=address, state_root=tmp_path / "devices", fleet="sim",
                         telemetry_s=0.0, seed=1,
                         faults=FaultKnobs(intermittent_fraction=0.5, online_s=0.8, period_s=2.4))
    try:
        assert sim.start(timeout=30) == 12
        sleepers = set(sim.intermittent_ids)
        assert 2 <= len(sleepers) <= 10
        init_task_identity(1)
        transport = MqttTransport(address, fleet="sim")
        grid = FleetGrid(transport, ProtocolCodec({ConfigKey.LOCAL_STEPS: 10, ConfigKey.LR: 0.02}), run_id="c")
        cfg = RunConfig(run_id="c", task="sine", strategy="reptile", rounds=15, local_steps=10, lr=0.02, quorum=4,
                        quorum_timeout=30, round_timeout=10, strategy_params={"epsilon": 0.5, "epsilon_floor": 0.1})
        try:
            result = BufferedRun(HierarchyConfig(run=cfg, mode="async", buffer=3), grid, tmp_path / "run").start(
                initial_parameters("sine", seed=1))
        finally:
            transport.close()
        records = result["rounds"]
        assert len(records) == 15 and all("skipped" not in r for r in records)
        contributors = {grid.device_id(node) for r in records for node, _ in r["contributors"]}
        slept = {a.client_id for a in sim.agents if a.sleeps > 0}
        assert slept and contributors & slept  # devices that came and went are in the buffers
        assert max(r["staleness_max"] for r in records) >= 1
        assert all(np.isfinite(v).all() for v in result["final"].values())
    finally:
        sim.stop()
        broker.stop()


def test_a_gateways_buffered_sub_round_screens_its_replies() -> None:
    """`first_replies` (a gateway's async sub-round) applies the same round-level rules as a sync phase."""
    init_task_identity(1)
    devs = {f"dev-{i}": QuadraticDevice(f"dev-{i}", sabotage=_absurd if i == 0 else None) for i in range(4)}
    grid = FleetGrid(InProcessTransport(devs), ProtocolCodec({"local-steps": STEPS, "lr": LR}), run_id="run-g")
    try:
        nodes = grid.wait_for_nodes(4, timeout=10)
        theta = ArrayRecord({k: Array(v) for k, v in initial_head().items()})
        cfg = ConfigRecord({ConfigKey.LOCAL_STEPS: STEPS, ConfigKey.LR: LR, ConfigKey.SERVER_ROUND: 1})
        messages = [grid.create_message(RecordDict({"arrays": theta, "config": cfg}), MessageType.TRAIN, n, "1")
                    for n in nodes]
        replies = first_replies(grid, messages, want=4, timeout=10)
    finally:
        grid.transport.close()
    errors = [r for r in replies if r.has_error()]
    assert len(replies) == 4 and len(errors) == 1 and "absurd-norm" in errors[0].error.reason
    assert grid.device_id(errors[0].metadata.src_node_id) == "dev-0"
