"""The device agent on a real Mosquitto: TD/presence/will, tasks, duplicates, bad messages, partial training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from broker.process import BrokerInfo
from devices.boards import get_board
from devices.exceptions import BrokerUrlError
from devices.link.address import BrokerAddress, parse_broker_url
from devices.link.fleet_client import FleetClient
from devices.wire import protocol as p
from devices.wire.protocol import ConfigKey, ErrorCode, MessageType
from devices.wire.topics import device_topic
from tests.support.devices import sine_agent, start_hub
from tests.support.waiting import wait_until

TRAIN = {ConfigKey.LOCAL_STEPS: 20, ConfigKey.LR: 0.01, ConfigKey.SERVER_ROUND: 1}


@pytest.fixture()
def address(mosquitto: BrokerInfo) -> BrokerAddress:
    return BrokerAddress(mosquitto.host, mosquitto.port)


def test_broker_url_parsing() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1999") == BrokerAddress("127.0.0.1", 1999, False)
    assert parse_broker_url("mqtts://localhost").port == 8883
    with pytest.raises(BrokerUrlError, match="no topic in the URL"):
        parse_broker_url("mqtt://h:1/tinyfleet")
    with pytest.raises(BrokerUrlError):
        parse_broker_url("http://h:1")


def test_td_and_presence_are_retained_and_the_will_fires_on_an_unclean_drop(address: BrokerAddress,
                                                                             tmp_path: Path) -> None:
    agent = sine_agent("will-01", address, tmp_path, fleet="wills")
    hub = start_hub(address, agent)
    try:
        with FleetClient(address, fleet="wills", client_id="watch-1") as fc:  # connects after the device: retained
            assert fc.wait_online(1, timeout=5) == ["will-01"]
            assert wait_until(lambda: "will-01" in fc.tds)
            assert fc.tds["will-01"]["id"] == "urn:tinyfleet:device:will-01"
            hub.links["will-01"].crash(down_for=30.0)
            assert wait_until(lambda: fc.presence["will-01"]["online"] is False, timeout=5)
            assert fc.presence["will-01"]["reason"] == "connection lost"
        with FleetClient(address, fleet="wills", client_id="watch-2") as late:  # the will itself is retained
            assert wait_until(lambda: "will-01" in late.presence)
            assert late.presence["will-01"]["online"] is False
    finally:
        hub.stop()


def test_device_reconnects_after_a_crash_and_says_offline_on_clean_stop(address: BrokerAddress,
                                                                        tmp_path: Path) -> None:
    agent = sine_agent("back-01", address, tmp_path, fleet="back")
    hub = start_hub(address, agent)
    with FleetClient(address, fleet="back", client_id="watch-b") as fc:
        assert fc.wait_online(1, timeout=5)
        hub.links["back-01"].crash(down_for=0.2)
        assert wait_until(lambda: not fc.presence["back-01"]["online"])
        assert wait_until(lambda: fc.presence["back-01"]["online"], timeout=5)  # reconnected by itself
        assert hub.links["back-01"].connects == 2
        hub.stop()
        assert wait_until(lambda: not fc.presence["back-01"]["online"])
        assert fc.presence["back-01"]["reason"] == "shutdown"


def test_duplicate_train_task_is_trained_once_and_answered_with_the_cached_reply(address: BrokerAddress,
                                                                                 tmp_path: Path) -> None:
    agent = sine_agent("dup-01", address, tmp_path, fleet="dup")
    hub = start_hub(address, agent)
    try:
        with FleetClient(address, fleet="dup", client_id="srv-dup") as fc:
            w = agent.learner.head.get_weights()
            tid, frame = p.encode_task(MessageType.TRAIN, config=TRAIN, weights=w, run="r1", server_round=1)
            fc.send("dup-01", frame)
            fc.send("dup-01", frame)
            assert wait_until(lambda: len(fc.replies_to("dup-01", tid)) == 2)
            first, second = fc.replies_to("dup-01", tid)
            assert first.header["id"] == second.header["id"]  # the very same reply, re-sent
            assert agent.learner.samples_seen_ == 20  # trained once, not twice
            assert first.header["ok"] and first.header["metrics"]["num-examples"] == 20
            trained = first.arrays()
            assert [a.shape for a in trained] == [a.shape for a in w]
            assert any(not np.allclose(a, b) for a, b in zip(trained, w, strict=True))
    finally:
        hub.stop()


def _raw_send(address: BrokerAddress, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evil-sender", protocol=mqtt.MQTTv5)
    c.connect(address.host, address.port)
    c.loop_start()
    for pl in payloads:
        c.publish(topic, pl, qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def test_bad_messages_get_error_replies_and_the_agent_keeps_working(address: BrokerAddress, tmp_path: Path) -> None:
    agent = sine_agent("bad-01", address, tmp_path, fleet="bad", max_task_bytes=20_000)
    hub = start_hub(address, agent)
    try:
        with FleetClient(address, fleet="bad", client_id="srv-bad") as fc:
            w = agent.learner.head.get_weights()
            _, wrong_version = p.encode_task(MessageType.TRAIN, config=TRAIN, weights=w, task_id="v-task")
            wrong_version = wrong_version.replace(b'"v":1', b'"v":7', 1)
            wrong_shape = p.encode_task(MessageType.TRAIN, config=TRAIN, weights=[np.ones((2, 8), np.float32), *w[1:]],
                                        task_id="shape-task")[1]
            nan_w = [w[0] * np.nan, *w[1:]]
            nan_task = p.encode_task(MessageType.TRAIN, config=TRAIN, weights=nan_w, task_id="nan-task")[1]
            big = p.encode_task(MessageType.EVALUATE, weights=[np.zeros(10_000, np.float32)], task_id="big-task")[1]
            topic = device_topic("bad", "bad-01", "task")
            _raw_send(address, topic, [b"garbage", b"{}", wrong_version, wrong_shape, nan_task, big])
            assert wait_until(lambda: len(fc.results.get("bad-01", [])) == 6, timeout=10)
            by_reply = {f.header["reply-to"]: f.header for f in fc.results["bad-01"]}
            assert by_reply["v-task"]["error"]["code"] == ErrorCode.BAD_VERSION
            assert by_reply["shape-task"]["error"]["code"] == ErrorCode.BAD_SHAPE
            assert by_reply["nan-task"]["error"]["code"] == ErrorCode.NOT_FINITE
            assert by_reply["big-task"]["error"]["code"] == ErrorCode.TOO_LARGE
            assert [h["error"]["code"] for k, h in by_reply.items() if k is None] == [ErrorCode.MALFORMED]
            assert sum(1 for f in fc.results["bad-01"] if f.header["reply-to"] is None) == 2
            assert all(not f.header["ok"] for f in fc.results["bad-01"])
            assert agent.learner.samples_seen_ == 0
            # ... and a good task still works
            tid, good = p.encode_task(MessageType.TRAIN, config=TRAIN, weights=w)
            reply = fc.request({"bad-01": (tid, good)}, timeout=5)["bad-01"]
            assert reply is not None and reply.header["ok"]
    finally:
        hub.stop()


def test_top_p_partial_training_keeps_local_layers_on_the_device(address: BrokerAddress, tmp_path: Path) -> None:
    agent = sine_agent("tmf-01", address, tmp_path, fleet="tmf")
    hub = start_hub(address, agent)
    try:
        with FleetClient(address, fleet="tmf", client_id="srv-tmf") as fc:
            w = agent.learner.head.get_weights()
            cfg = {**TRAIN, ConfigKey.TOP_P: 0.25, ConfigKey.LOCAL_LAYERS: [1], ConfigKey.RECONSTRUCT_STEPS: 5}
            tid, frame = p.encode_task(MessageType.TRAIN, config=cfg, weights=w)
            reply = fc.request({"tmf-01": (tid, frame)}, timeout=5)["tmf-01"]
            assert reply is not None and reply.header["ok"], reply and reply.header
            assert reply.header["encoding"] == "delta" and reply.header["local-layers"] == [1]
            names = [n for n, _ in reply.tensors]
            assert names == ["w0", "b0"]  # layer 1 stays on the device
            w0 = reply.tensors[0][1]
            assert isinstance(w0, p.SparseTensor) and w0.shape == (1, 8)
            assert len(w0.indices) == 2  # ceil(0.25 * 8)
            phi = agent.learner.head.get_weights()
            np.testing.assert_allclose(w[0].reshape(-1)[w0.indices] + w0.values, phi[0].reshape(-1)[w0.indices],
                                       rtol=1e-6)
            assert "reconstruct-loss" in reply.header["metrics"]
    finally:
        hub.stop()


def test_evaluate_does_not_change_state_and_adapt_improves_the_shots(address: BrokerAddress, tmp_path: Path) -> None:
    agent = sine_agent("ev-01", address, tmp_path, fleet="ev")
    hub = start_hub(address, agent)
    try:
        with FleetClient(address, fleet="ev", client_id="srv-ev") as fc:
            before = agent.learner.head.get_weights()
            zeros = [np.zeros_like(x) for x in before]
            tid, frame = p.encode_task(MessageType.EVALUATE, weights=zeros)
            reply = fc.request({"ev-01": (tid, frame)}, timeout=5)["ev-01"]
            assert reply is not None and reply.header["ok"]
            expected = float(np.mean(agent.y_eval ** 2))  # a zero head predicts 0
            assert reply.header["metrics"]["loss"] == pytest.approx(expected, rel=1e-4)
            assert all(np.array_equal(a, b) for a, b in zip(agent.learner.head.get_weights(), before, strict=True))
            tid, frame = p.encode_task(MessageType.ADAPT, config={ConfigKey.SHOTS: 10, ConfigKey.STEPS: 200,
                                                                   ConfigKey.LR: 0.01})
            reply = fc.request({"ev-01": (tid, frame)}, timeout=10)["ev-01"]
            assert reply is not None and reply.header["ok"], reply and reply.header
            m = reply.header["metrics"]
            assert m["loss-after"] < m["loss-before"]
            tid, frame = p.encode_task(MessageType.ADAPT, config={ConfigKey.SHOTS: 1000, ConfigKey.STEPS: 1})
            reply = fc.request({"ev-01": (tid, frame)}, timeout=5)["ev-01"]
            assert reply is not None and reply.header["error"]["code"] == ErrorCode.BAD_CONFIG
    finally:
        hub.stop()


def test_telemetry_is_published_periodically(address: BrokerAddress, tmp_path: Path) -> None:
    agent = sine_agent("tel-01", address, tmp_path, fleet="tel", telemetry_s=0.2)
    with FleetClient(address, fleet="tel", client_id="srv-tel") as fc:
        hub = start_hub(address, agent)
        hub.tick_s = 0.1
        try:
            assert wait_until(lambda: "tel-01" in fc.telemetry, timeout=5)
            doc = fc.telemetry["tel-01"]
            assert doc["ram-bytes"] == get_board("nano33ble").ram_bytes and doc["memory-bytes"] > 0
            assert "scalar-signal" in doc["sensors"] and len(doc["head-sha256"]) == 64
            json.dumps(doc)
        finally:
            hub.stop()
