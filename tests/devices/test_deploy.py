"""Safe deploy over MQTT with real int8 models: swap, checksum rejection, self-test rollback, fit refusal."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from broker.process import BrokerInfo
from devices.agent import AgentConfig, DeviceAgent
from devices.boards import Board, get_board
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.link.address import BrokerAddress
from devices.link.fleet_client import FleetClient
from devices.wire import protocol as p
from devices.wire.protocol import ErrorCode
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases.base import DeviceData
from tests.support.devices import start_hub

N_IN = 4


def _int8_backbone(n_out: int, seed: int) -> bytes:
    """A real full-int8 Dense(n_out, relu) feature extractor over N_IN inputs."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from firmware_models.convert import to_full_int8

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((N_IN,)), keras.layers.Dense(n_out, activation="relu")])
    return to_full_int8(model, np.random.default_rng(seed).normal(size=(64, N_IN)).astype(np.float32))


@pytest.fixture(scope="module")
def backbones() -> dict[str, bytes]:
    return {"v1": _int8_backbone(8, 1), "v2": _int8_backbone(8, 2), "wrong-dim": _int8_backbone(5, 3)}


def _agent(address: BrokerAddress, state: Path, backbone: bytes, *, board: Board) -> DeviceAgent:
    state.mkdir(parents=True, exist_ok=True)
    (state / "backbone.tflite").write_bytes(backbone)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, N_IN)).astype(np.float32)
    data = DeviceData("dep", x, x.sum(axis=1, keepdims=True).astype(np.float32))
    learner = OnlineLearner(MLPHead.init([8, 4, 1], kind="regression", seed=0), TFLiteModel.from_bytes(backbone),
                            arena_bytes=2000)
    cfg = AgentConfig(device_id=state.name, board=board, state_dir=state, fleet="dep")
    return DeviceAgent(cfg, learner, data, address=address)


def _deploy(fc: FleetClient, device: str, model: bytes, *, tamper: bool = False, **kw: object) -> p.Frame:
    tid, frames = p.encode_deploy(model, chunk_bytes=700, **kw)  # type: ignore[arg-type]
    assert len(frames) > 1  # exercise chunking
    if tamper:  # flip the first data byte of the last chunk (the tail is alignment padding)
        last = bytearray(frames[-1])
        (hlen,) = struct.unpack_from("<I", last)
        last[4 + hlen] ^= 0xFF
        frames[-1] = bytes(last)
    frames = [frames[-1], *frames[:-1], frames[0]]  # out of order, with a duplicate chunk
    reply = fc.request({device: (tid, frames)}, timeout=20)[device]
    assert reply is not None, "no deploy reply"
    return reply


def test_safe_deploy_swaps_rejects_rolls_back_and_refuses(mosquitto: BrokerInfo, tmp_path: Path,
                                                          backbones: dict[str, bytes]) -> None:
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    tight = Board("tight", "test board with 12 KB flash", "x", "x", 1, 64 * 1024, 12 * 1024, ())
    agent = _agent(address, tmp_path / "dep-01", backbones["v1"], board=get_board("nano33ble"))
    small = _agent(address, tmp_path / "dep-02", backbones["v1"], board=tight)
    live = tmp_path / "dep-01" / "backbone.tflite"
    hub = start_hub(address, agent, small)
    try:
        with FleetClient(address, fleet="dep", client_id="srv-dep") as fc:
            # 1. a good model is swapped in and used
            reply = _deploy(fc, "dep-01", backbones["v2"], arena_bytes=2000)
            assert reply.header["ok"], reply.header
            assert reply.header["deploy"]["action"] == "swapped"
            assert reply.header["deploy"]["previous-sha256"] == p.sha256_hex(backbones["v1"])
            assert live.read_bytes() == backbones["v2"]
            assert agent.learner.backbone is not None and agent.learner.backbone.model_bytes == backbones["v2"]
            assert agent.model_sha256 == p.sha256_hex(backbones["v2"])

            # 2. a corrupted transfer (sha mismatch) is rejected; the old model stays
            reply = _deploy(fc, "dep-01", backbones["v1"], tamper=True, arena_bytes=2000)
            assert reply.header["error"]["code"] == ErrorCode.SHA_MISMATCH
            assert reply.header["deploy"]["action"] == "refused"
            assert live.read_bytes() == backbones["v2"]

            # 3. a model that fails the self-test (wrong feature count for the head) is rolled back
            reply = _deploy(fc, "dep-01", backbones["wrong-dim"], arena_bytes=2000)
            assert reply.header["error"]["code"] == ErrorCode.SELF_TEST_FAILED
            assert reply.header["deploy"]["action"] == "rolled-back"
            assert "outputs 5 features but the head takes 8" in reply.header["error"]["reason"]
            assert live.read_bytes() == backbones["v2"]
            assert agent.learner.backbone.model_bytes == backbones["v2"]

            # ... also a file that is not a model at all
            reply = _deploy(fc, "dep-01", b"TFL3" + bytes(3000), arena_bytes=2000)
            assert reply.header["error"]["code"] == ErrorCode.SELF_TEST_FAILED
            assert live.read_bytes() == backbones["v2"]

            # 4. a model too big for the board is refused before anything is written
            reply = _deploy(fc, "dep-02", backbones["v2"] + bytes(12 * 1024), arena_bytes=2000)
            assert reply.header["error"]["code"] == ErrorCode.DOES_NOT_FIT
            reply = _deploy(fc, "dep-02", backbones["v2"], arena_bytes=70_000)  # RAM: arena too large
            assert reply.header["error"]["code"] == ErrorCode.DOES_NOT_FIT
            assert "RAM" in reply.header["error"]["reason"]
            assert (tmp_path / "dep-02" / "backbone.tflite").read_bytes() == backbones["v1"]

            # the device still trains with its (new) model afterwards
            w = agent.learner.head.get_weights()
            tid, frame = p.encode_task(p.MessageType.TRAIN, config={"local-steps": 5, "lr": 0.01}, weights=w)
            reply = fc.request({"dep-01": (tid, frame)}, timeout=5)["dep-01"]
            assert reply is not None and reply.header["ok"]
    finally:
        hub.stop()
