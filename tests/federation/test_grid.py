"""Bad device replies become counted failures with a reason; they never reach the aggregate or end the run."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from devices.wire import protocol
from federation.flower_compat import init_task_identity
from federation.grid import FleetGrid, node_id_for
from federation.inprocess_transport import InProcessTransport
from federation.strategies import Reptile
from federation.wire import ProtocolCodec
from tests.support.federation import QuadraticDevice, adapted, initial_head
from tests.support.waiting import wait_until

STEPS, LR = 2, 0.1
GOOD = ["dev-0", "dev-1", "dev-2", "dev-3"]


def with_bad(sabotage) -> tuple[FleetGrid, dict[str, QuadraticDevice]]:  # type: ignore[no-untyped-def]
    init_task_identity(1)
    devs = {d: QuadraticDevice(d) for d in GOOD}
    devs["bad"] = QuadraticDevice("bad", sabotage=sabotage)
    grid = FleetGrid(InProcessTransport(devs), ProtocolCodec({"local-steps": STEPS, "lr": LR}), run_id="run-a")
    return grid, devs


def one_reptile_round(grid: FleetGrid, timeout: float = 5.0) -> dict[str, np.ndarray]:
    strat = Reptile(epsilon=1.0, epsilon_floor=1.0, num_rounds=1, local_steps=STEPS, local_lr=LR,
                    min_available_nodes=5, min_train_nodes=5, fraction_evaluate=0.0)
    init = ArrayRecord({k: Array(v) for k, v in initial_head().items()})
    try:
        res = strat.start(grid=grid, initial_arrays=init, num_rounds=1, timeout=timeout)
    finally:
        grid.transport.close()
    return {k: v.numpy() for k, v in res.arrays.items()}


def expected_from_good(devs: dict[str, QuadraticDevice]) -> dict[str, np.ndarray]:
    theta = initial_head()
    return {k: np.mean([adapted(t, devs[d].center[k], STEPS, LR) for d in GOOD], axis=0) for k, t in theta.items()}


def header_with(hdr: dict, **changes: object) -> dict:
    return {**hdr, **changes}


def nan_tensors(hdr, tensors):  # type: ignore[no-untyped-def]
    return [(k, np.full_like(v, np.nan)) for k, v in tensors]


def wrong_shape(hdr, tensors):  # type: ignore[no-untyped-def]
    return [(k, v.reshape(-1)[:1]) for k, v in tensors]


def missing_array(hdr, tensors):  # type: ignore[no-untyped-def]
    return tensors[1:]


def huge_update(hdr, tensors):  # type: ignore[no-untyped-def]
    return [(k, v * 1e4 + 1e4) for k, v in tensors]


def other_run(hdr, tensors):  # type: ignore[no-untyped-def]
    return protocol.encode_result(header_with(hdr, run="someone-else"), device="bad", tensors=tensors,
                                  metrics={"num-examples": 10})


def stale_round(hdr, tensors):  # type: ignore[no-untyped-def]
    return protocol.encode_result(header_with(hdr, round=hdr["round"] - 1 if hdr["round"] else 7), device="bad",
                                  tensors=tensors, metrics={"num-examples": 10})


def no_examples(hdr, tensors):  # type: ignore[no-untyped-def]
    return protocol.encode_result(hdr, device="bad", tensors=tensors, metrics={"loss": 1.0})


def device_error(hdr, tensors):  # type: ignore[no-untyped-def]
    return protocol.encode_result(hdr, device="bad", error=("bad-shape", "my head has 3 layers"))


def truncated(hdr, tensors):  # type: ignore[no-untyped-def]
    return protocol.encode_result(hdr, device="bad", tensors=tensors, metrics={"num-examples": 10})[:-7]


def bad_version(hdr, tensors):  # type: ignore[no-untyped-def]
    frame = protocol.encode_result(hdr, device="bad", tensors=tensors, metrics={"num-examples": 10})
    (hlen,) = struct.unpack_from("<I", frame)
    head = frame[4:4 + hlen].replace(b'"v":1', b'"v":9')
    return struct.pack("<I", len(head)) + head + frame[4 + hlen:]


@pytest.mark.parametrize(("sabotage", "reason"), [
    (nan_tensors, "non-finite"),
    (wrong_shape, "wrong-shape"),
    (missing_array, "wrong-keys"),
    (huge_update, "absurd-norm"),
    (other_run, "unknown-run"),
    (stale_round, "stale-round"),
    (no_examples, "bad-metrics"),
    (device_error, "device-error:bad-shape"),
    (truncated, "malformed"),
    (bad_version, "bad-version"),
])
def test_bad_reply_is_a_counted_failure_and_stays_out_of_the_aggregate(sabotage, reason: str) -> None:  # type: ignore[no-untyped-def]
    grid, devs = with_bad(sabotage)
    out = one_reptile_round(grid)
    train = grid.ledger.round_summary(1)["phases"]["train"]
    assert train["replies"] == 4 and train["failures"] == 1, train
    assert train["reasons"] == {reason: 1}
    for k, v in expected_from_good(devs).items():
        np.testing.assert_allclose(out[k], v, atol=1e-6)


def test_garbage_without_a_request_id_is_discarded_and_the_request_times_out() -> None:
    grid, devs = with_bad(lambda hdr, tensors: b"\x00\x01garbage")
    t0 = time.monotonic()
    out = one_reptile_round(grid, timeout=1.0)
    assert time.monotonic() - t0 >= 1.0
    summary = grid.ledger.round_summary(1)["phases"]
    assert summary["train"]["missing"] == 1 and summary["train"]["replies"] == 4
    assert summary["discarded"]["reasons"] == {"undecodable": 1}
    for k, v in expected_from_good(devs).items():
        np.testing.assert_allclose(out[k], v, atol=1e-6)


def test_silent_device_is_missing_not_failed() -> None:
    grid, devs = with_bad(lambda hdr, tensors: None)
    one_reptile_round(grid, timeout=0.5)
    train = grid.ledger.round_summary(1)["phases"]["train"]
    assert (train["sent"], train["replies"], train["failures"], train["missing"]) == (5, 4, 0, 1)


def test_late_reply_from_an_earlier_round_is_discarded() -> None:
    held: list[bytes] = []

    def hold(hdr, tensors):  # type: ignore[no-untyped-def]
        held.append(protocol.encode_result(hdr, device="bad", tensors=tensors, metrics={"num-examples": 10}))

    grid, devs = with_bad(hold)
    one_reptile_round(grid, timeout=0.3)
    assert held
    grid.transport.inject("bad", held[0])  # arrives after its round ended
    assert grid.ledger.round_summary(1)["phases"]["discarded"]["reasons"] == {"late-or-unknown": 1}
    assert grid.pull_messages([]) == []


def test_duplicate_reply_counts_once() -> None:
    copies: list[bytes] = []

    def dup(hdr, tensors):  # type: ignore[no-untyped-def]
        frame = protocol.encode_result(hdr, device="bad", tensors=tensors, metrics={"num-examples": 10})
        copies.append(frame)
        return frame

    grid, devs = with_bad(dup)
    init_task_identity(1)
    msgs = [Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in initial_head().items()}),
                                "config": ConfigRecord({"server-round": 1})}), nid, MessageType.TRAIN)
            for nid in grid.get_node_ids()]
    ids = grid.push_messages(msgs)
    # wait until all five answers are booked, valid or not (a condition, not a guess at how long that takes)
    def answered() -> int:
        train = grid.ledger.round_summary(1)["phases"].get("train", {})
        return int(train.get("replies", 0) + train.get("failures", 0))

    assert wait_until(lambda: answered() == 5, timeout=30)
    grid.transport.inject("bad", copies[0])  # a QoS-1 redelivery
    replies = grid.pull_messages(ids)
    assert len(replies) == 5
    assert grid.pull_messages(ids) == []
    grid.transport.close()


def test_reply_from_another_device_for_my_request_is_rejected() -> None:
    grid, devs = with_bad(None)
    init_task_identity(1)
    nid = node_id_for("dev-0")
    grid.get_node_ids()
    msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in initial_head().items()}),
                              "config": ConfigRecord({"server-round": 1})}), nid, MessageType.TRAIN)
    grid.transport.handlers["dev-0"] = lambda payload: None  # type: ignore[attr-defined]
    (mid,) = grid.push_messages([msg])
    hdr = {"v": 1, "type": "task.train", "id": mid, "run": "run-a", "round": 1}
    grid.transport.inject("dev-1", protocol.encode_result(hdr, device="dev-1", metrics={"num-examples": 1},
                                                         tensors=list(initial_head().items())))
    (reply,) = grid.pull_messages([mid])
    assert reply.has_error() and "wrong-device" in reply.error.reason
    grid.transport.close()


def test_allow_list_restricts_nodes() -> None:
    init_task_identity(1)
    devs = {d: QuadraticDevice(d) for d in GOOD}
    grid = FleetGrid(InProcessTransport(devs), ProtocolCodec(), run_id="r", allow={"dev-1", "dev-3"})
    assert grid.get_node_ids() == sorted([node_id_for("dev-1"), node_id_for("dev-3")])
    grid2 = FleetGrid(InProcessTransport(devs), ProtocolCodec(), run_id="r", allow=lambda d: d.endswith("0"))
    assert [grid2.device_id(n) for n in grid2.get_node_ids()] == ["dev-0"]


def test_stock_fedavg_survives_a_device_with_extra_metrics() -> None:
    def extra(hdr, tensors):  # type: ignore[no-untyped-def]
        return protocol.encode_result(hdr, device="bad", tensors=tensors,
                                      metrics={"num-examples": 10, "train-loss": 0.5, "battery": 0.9})

    grid, devs = with_bad(extra)
    strat = FedAvg(min_available_nodes=5, min_train_nodes=5, fraction_evaluate=0.0)
    res = strat.start(grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in initial_head().items()}),
                      num_rounds=1, timeout=5)
    grid.transport.close()
    assert grid.ledger.round_summary(1)["phases"]["train"]["replies"] == 5
    assert "battery" not in res.train_metrics_clientapp[1]


def test_each_device_gets_the_arrays_of_its_own_message() -> None:
    """The Grid decodes a shared ArrayRecord once per push; messages with records of their own (pushed from a
    generator) must still carry their own values, and a record shared by all messages reaches every device."""
    init_task_identity(1)
    received: dict[str, list[dict[str, np.ndarray]]] = {d: [] for d in GOOD}

    def recorder(device: str):  # type: ignore[no-untyped-def]
        def handle(payload: bytes) -> None:
            received[device].append({k: np.asarray(t) for k, t in protocol.decode_frame(payload).tensors})
        return handle

    grid = FleetGrid(InProcessTransport({d: recorder(d) for d in GOOD}, workers=0), ProtocolCodec({"lr": LR}),
                     run_id="run-a")
    nodes = grid.get_node_ids()

    def own(i: int) -> Message:
        head = {k: np.full_like(v, float(i)) for k, v in initial_head().items()}
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in head.items()}),
                                   "config": ConfigRecord({"server-round": 1})}), nodes[i], MessageType.EVALUATE)

    grid.push_messages(own(i) for i in range(len(nodes)))
    shared = ArrayRecord({k: Array(v) for k, v in initial_head().items()})
    grid.push_messages([Message(RecordDict({"arrays": shared, "config": ConfigRecord({"server-round": 1})}), nid,
                                MessageType.EVALUATE) for nid in nodes])
    for i, nid in enumerate(nodes):
        first, second = received[grid.device_id(nid)]
        assert all(np.all(a == float(i)) for a in first.values())
        assert all(np.array_equal(second[k], v) for k, v in initial_head().items())
    grid.transport.close()
