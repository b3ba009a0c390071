"""The C agent (tf-agent on libmosquitto) answers like the Python agent, task by task, on a real Mosquitto.

One Python `DeviceAgent` and one C agent get the same head and the same local data; every task of
a list (train dense / Top-P with local layers, evaluate, adapt, a duplicate id, and the malformed
ones) goes to both. Their replies must agree in everything the server relies on: ok, error code,
reply-to, task, run, round, metric names, tensor names, shapes and encodings; evaluation metrics
must agree in value (same weights, same data, no randomness). Replies are read by the server's own
decoder (`FleetClient` uses `decode_result`), so every C reply is also checked to be a valid frame.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from broker.process import BrokerInfo
from devices.c.build import build_agent
from devices.c.files import HeadLayout, write_agent_files
from devices.c.fleet import CDevice, stop_c_devices, wait_started
from devices.link.address import BrokerAddress
from devices.link.fleet_client import FleetClient
from devices.wire import protocol as p
from devices.wire.protocol import SparseTensor
from tests.conftest import require_c_tools
from tests.support.devices import sine_agent, sine_data, start_hub
from tests.support.waiting import wait_until

FLEET = "cdiff"
PY, C = "py-dev", "c-dev"


@pytest.fixture(scope="module")
def pair(mosquitto: BrokerInfo, tmp_path_factory: pytest.TempPathFactory, c_build_dir: Path) -> Iterator[FleetClient]:
    require_c_tools("gcc", "libmosquitto")
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    root = tmp_path_factory.mktemp("cdiff")
    agent = sine_agent(PY, address, root / "py", fleet=FLEET, seed=4)
    head = agent.learner.head
    data = sine_data(PY, seed=4)
    cfg = write_agent_files(root / "c", device_id=C, fleet=FLEET, broker_url=f"mqtt://{address.host}:{address.port}",
                            weights=head.get_weights(), kind="regression", x=data.x, y=data.y, td=None,
                            credentials=None, board="nano33ble", telemetry_s=0.5, seed=4)
    exe = build_agent(HeadLayout.of(head), len(data), out_dir=c_build_dir)
    c_dev = CDevice(C, cfg, root / "c" / "agent.log")
    import subprocess

    with open(c_dev.log, "wb") as log:
        c_dev.process = subprocess.Popen([str(exe), str(cfg), "--verbose"], stdout=log, stderr=subprocess.STDOUT)
    hub = start_hub(address, agent)
    try:
        wait_started([c_dev])
        with FleetClient(address, fleet=FLEET, client_id="cdiff-server") as fc:
            assert wait_until(lambda: set(fc.online()) == {PY, C}, 10), (fc.online(), c_dev.log_text())
            yield fc
    finally:
        hub.stop()
        stop_c_devices([c_dev])


def _both(fc: FleetClient, frame_for: dict[str, bytes], task_id: str | None) -> dict[str, p.Frame]:
    """Send a frame to both devices and return their replies (by reply-to, or the next reply when None)."""
    before = {d: len(fc.results.get(d, [])) for d in (PY, C)}
    for dev, frame in frame_for.items():
        fc.send(dev, frame)
    if task_id is not None:
        got = {d: None for d in (PY, C)}

        def ready() -> bool:
            for d in (PY, C):
                got[d] = next((f for f in fc.results.get(d, [])[before[d]:] if f.header.get("reply-to") == task_id),
                              None)
            return all(v is not None for v in got.values())
    else:
        def ready() -> bool:
            return all(len(fc.results.get(d, [])) > before[d] for d in (PY, C))
    assert wait_until(ready, 20), {d: fc.results.get(d, [])[before[d]:] for d in (PY, C)}
    if task_id is None:
        return {d: fc.results[d][before[d]] for d in (PY, C)}
    return got  # type: ignore[return-value]


def _shape(f: p.Frame) -> dict[str, object]:
    h = f.header
    tensors = [(n, t.shape if isinstance(t, SparseTensor) else t.shape, isinstance(t, SparseTensor),
                len(t.indices) if isinstance(t, SparseTensor) else None) for n, t in f.tensors]
    return {"ok": h["ok"], "code": (h.get("error") or {}).get("code"), "reply-to": h.get("reply-to"),
            "task": h.get("task"), "run": h.get("run"), "round": h.get("round"), "metrics": sorted(h["metrics"]),
            "encoding": h.get("encoding"), "local-layers": h.get("local-layers"), "tensors": tensors}


def _same(fc: FleetClient, frame: bytes, task_id: str | None) -> dict[str, p.Frame]:
    replies = _both(fc, {PY: frame, C: frame}, task_id)
    assert _shape(replies[C]) == _shape(replies[PY]), (replies[C].header, replies[PY].header)
    assert replies[C].header["device"] == C
    return replies


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.5, size=s).astype(np.float32) for s in ((1, 8), (8,), (8, 1), (1,))]


def test_evaluate_gives_the_same_numbers(pair: FleetClient) -> None:
    tid, frame = p.encode_task("task.evaluate", weights=_weights(1), run="r-1", server_round=3)
    r = _same(pair, frame, tid)
    for key in ("loss", "mse"):
        assert math.isclose(r[C].header["metrics"][key], r[PY].header["metrics"][key], rel_tol=1e-5), key
    assert r[C].header["metrics"]["num-examples"] == r[PY].header["metrics"]["num-examples"] == 8
    assert (r[C].header["run"], r[C].header["round"]) == ("r-1", 3)


def test_train_dense_and_top_p_with_local_layers(pair: FleetClient) -> None:
    tid, frame = p.encode_task("task.train", config={"local-steps": 30, "lr": 0.01, "server-round": 1},
                               weights=_weights(2), run="r-2", server_round=1)
    r = _same(pair, frame, tid)
    assert r[C].header["encoding"] == "weights" and r[C].header["local-layers"] == []
    assert r[C].header["metrics"]["num-examples"] == 30
    tid, frame = p.encode_task("task.train", config={"local-steps": 30, "lr": 0.01, "top-p": 0.3,
                                                     "local-layers": [0], "reconstruct-steps": 4},
                               weights=_weights(3), run="r-2", server_round=2)
    r = _same(pair, frame, tid)  # only layer 1 travels, as ceil(0.3 * size) sparse entries (uint16)
    assert [n for n, _ in r[C].tensors] == ["w1", "b1"]
    assert [len(t.indices) for _, t in r[C].tensors] == [math.ceil(0.3 * 8), 1]  # type: ignore[union-attr]
    assert "reconstruct-loss" in r[C].header["metrics"]


def test_adapt_and_a_duplicate_id_answered_from_the_cache(pair: FleetClient) -> None:
    tid, frame = p.encode_task("task.adapt", config={"shots": 5, "steps": 10, "lr": 0.05}, weights=_weights(4))
    first = _same(pair, frame, tid)
    again = _both(pair, {PY: frame, C: frame}, None)  # the same id again: not trained twice
    for d in (PY, C):
        assert again[d].header["id"] == first[d].header["id"], d


def test_fedprox_and_clipping_keys_are_honoured_and_unknown_required_keys_refused(pair: FleetClient) -> None:
    """proximal-mu and clipping_norm (listed under required, as the Grid sends them) train; unknown keys are refused."""
    w = _weights(6)
    cfg = {"local-steps": 40, "lr": 0.05, "proximal-mu": 0.5, "clipping_norm": 0.05,
           "required": ["proximal-mu", "clipping_norm"]}
    tid, frame = p.encode_task("task.train", config=cfg, weights=w, run="r-6", server_round=2)
    r = _same(pair, frame, tid)
    for d in (PY, C):
        assert r[d].header["ok"] is True and r[d].header["metrics"]["norm_bit"] == 1, r[d].header
        update = np.sqrt(sum(float(np.sum((np.asarray(t, np.float64) - s) ** 2))
                             for (_, t), s in zip(r[d].tensors, w, strict=True)))
        assert abs(update - 0.05) <= 1e-4 * 0.05, (d, update)  # clipped to the norm (float32 rounding), not below
    tid, frame = p.encode_task("task.train", config={**cfg, "clipping_norm": 1e3, "top-p": 0.5}, weights=w)
    r = _same(pair, frame, tid)
    assert r[C].header["metrics"]["norm_bit"] == r[PY].header["metrics"]["norm_bit"] == 0
    for mtype, config in (("task.train", {"local-steps": 3, "lr": 0.1, "required": ["proximal-mu", "no-such-key"]}),
                          ("task.evaluate", {"required": ["conformance-unknown-key"]}),
                          ("task.adapt", {"shots": 2, "steps": 1, "required": ["top-p"]}),
                          ("task.deploy", {"artifact": "model.tflite", "sha256": "0" * 64, "size": 1,
                                           "chunk-index": 0, "chunk-count": 1, "required": ["x-key"]})):
        tid, frame = p.encode_task(mtype, config=config, weights=w if mtype != "task.deploy" else ())
        r = _same(pair, frame, tid)
        assert r[C].header["error"]["code"] == "unsupported-config", r[C].header
        assert (r[C].header["run"], r[C].header["round"]) == (None, None)


@pytest.mark.parametrize("case", ["bad-version", "garbage", "bad-shape", "not-finite", "result-type", "bad-config",
                                  "no-weights", "header-json", "sparse-dup", "local-layers-int"])
def test_malformed_tasks_get_the_same_error(pair: FleetClient, case: str) -> None:
    w = _weights(5)
    tid: str | None = f"bad-{case}"
    if case == "bad-version":
        frame = _raw({"v": 2, "type": "task.train", "id": tid})
    elif case == "garbage":
        frame, tid = b"\x00\x01garbage", None
    elif case == "bad-shape":
        _, frame = p.encode_task("task.evaluate", weights=[np.zeros((2, 2), np.float32)], task_id=tid)
    elif case == "not-finite":
        w[1][0] = np.nan
        _, frame = p.encode_task("task.evaluate", weights=w, task_id=tid)
    elif case == "result-type":
        frame = p.encode_result({"id": "x"}, device="someone")
        tid = json.loads(frame[4:4 + struct.unpack_from("<I", frame)[0]])["id"]
    elif case == "bad-config":
        frame = _raw({"v": 1, "type": "task.train", "id": tid, "config": {"lr": 0.1, "local-steps": 0}})
    elif case == "no-weights":
        _, frame = p.encode_task("task.train", config={"local-steps": 3, "lr": 0.1}, task_id=tid)
    elif case == "local-layers-int":  # not a list: both decoders refuse it (bad-config, task unknown)
        frame = _raw({"v": 1, "type": "task.evaluate", "id": tid, "config": {"local-layers": 5}})
    elif case == "header-json":
        frame, tid = struct.pack("<I", 5) + b"{nope", None
    else:
        frame = _raw({"v": 1, "type": "task.evaluate", "id": tid, "tensors": [
            {"name": "w0", "dtype": "float32", "shape": [8], "offset": 0, "nbytes": 12, "encoding": "sparse",
             "nnz": 2, "index_dtype": "uint16"}]}, b"\x01\x00\x01\x00" + b"\x00" * 8)
    r = _same(pair, frame, tid)
    assert r[C].header["ok"] is False


def test_c_agent_publishes_telemetry_with_its_head_hash(pair: FleetClient) -> None:
    assert wait_until(lambda: C in pair.telemetry, 10)
    doc = pair.telemetry[C]
    assert doc["type"] == "telemetry" and len(doc["head-sha256"]) == 64 and doc["samples-seen"] >= 0


def _raw(header: dict[str, object], data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<I", len(h)) + h + data
