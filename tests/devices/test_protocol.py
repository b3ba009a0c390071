"""Wire protocol v1: frame round trips, JSON Schemas, rejection of bad frames, topics, the W3C TD schema."""

from __future__ import annotations

import json
import struct

import jsonschema
import numpy as np
import pytest

from devices.boards import BOARDS, assign_boards, get_board, parse_mix
from devices.exceptions import DeviceIdError, ProtocolError, UnknownBoardError
from devices.wire import protocol as p
from devices.wire.protocol import ConfigKey, ErrorCode, MessageType, SparseTensor
from devices.wire.thing_description import thing_description
from devices.wire.topics import check_name, device_acl_lines, device_topic, fleet_filter, parse_topic

TRAIN_CFG = {ConfigKey.LOCAL_STEPS: 5, ConfigKey.LR: 0.01, ConfigKey.SERVER_ROUND: 3}


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(p.load_schema(name))


# ------------------------------------------------------------------------------------------------ frames
@pytest.mark.parametrize("dtype", sorted(p.DTYPES))
def test_dense_round_trip_keeps_dtype_shape_and_bytes(dtype: str) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(3, 5)) * 50).astype(dtype)
    frame = p.encode_frame({"v": 1, "type": MessageType.EVALUATE, "id": "abc", "config": {}}, [("t", arr)])
    back = p.decode_frame(frame)
    assert back.tensors[0][0] == "t"
    np.testing.assert_array_equal(back.tensors[0][1], arr)
    assert back.tensors[0][1].dtype == np.dtype(dtype)


def test_train_task_is_binary_little_endian_with_aligned_offsets_and_valid_schema() -> None:
    w = [np.arange(3, dtype=np.float32).reshape(1, 3), np.ones(3, np.float32), np.ones((3, 1), np.float32),
         np.zeros(1, np.float32)]
    tid, frame = p.encode_task(MessageType.TRAIN, config=TRAIN_CFG, weights=w, run="run-7", server_round=3)
    (hlen,) = struct.unpack_from("<I", frame)
    header = json.loads(frame[4:4 + hlen])
    validator("task.train").validate(header)
    assert header["id"] == tid and header["run"] == "run-7" and header["round"] == 3
    assert [t["name"] for t in header["tensors"]] == ["w0", "b0", "w1", "b1"]
    assert all(t["offset"] % 8 == 0 for t in header["tensors"])
    data = frame[4 + hlen:]
    first = header["tensors"][0]
    assert data[first["offset"]:first["offset"] + 12] == struct.pack("<3f", 0.0, 1.0, 2.0)
    assert b"[0.0" not in frame  # floats never travel as JSON lists


def test_sparse_result_round_trip_and_schema() -> None:
    sp = SparseTensor(np.array([5, 0, 7], np.uint32), np.array([1.5, -2.0, 3.0], np.float32), (2, 4))
    reply = p.encode_result({"v": 1, "type": MessageType.TRAIN, "id": "req-1", "run": "r", "round": 2},
                            device="dev-1", metrics={"num-examples": 4, "train-loss": 0.5}, tensors=[("w0", sp)],
                            extra={"encoding": "delta"})
    frame = p.decode_result(reply)
    validator("result").validate(frame.header)
    assert frame.header["reply-to"] == "req-1" and frame.header["task"] == MessageType.TRAIN
    assert frame.header["run"] == "r" and frame.header["round"] == 2
    dense = frame.arrays()[0]
    expected = np.zeros(8, np.float32)
    expected[[5, 0, 7]] = [1.5, -2.0, 3.0]
    np.testing.assert_array_equal(dense, expected.reshape(2, 4))


def test_error_result_validates_and_requires_error_object() -> None:
    reply = p.encode_result(None, device="d", error=(ErrorCode.MALFORMED, "bad"))
    hdr = p.decode_frame(reply).header
    validator("result").validate(hdr)
    assert hdr["ok"] is False and hdr["reply-to"] is None
    broken = dict(hdr)
    del broken["error"]
    with pytest.raises(jsonschema.ValidationError):
        validator("result").validate(broken)
    with pytest.raises(ProtocolError, match="needs 'error'"):
        p.check_header(broken)


def test_deploy_chunks_share_id_and_reassemble() -> None:
    model = bytes(range(256)) * 10
    tid, frames = p.encode_deploy(model, chunk_bytes=1000, arena_bytes=1234)
    assert len(frames) == 3
    parts = []
    for i, fr in enumerate(frames):
        f = p.decode_frame(fr)
        validator("task.deploy").validate(f.header)
        assert f.id == tid and f.config[ConfigKey.CHUNK_INDEX] == i and f.config[ConfigKey.CHUNK_COUNT] == 3
        assert f.config[ConfigKey.SHA256] == p.sha256_hex(model)
        parts.append(f.tensors[0][1].tobytes())
    assert b"".join(parts) == model


def test_presence_and_telemetry_documents_validate() -> None:
    validator("presence").validate(json.loads(p.presence_payload("d", online=True, fleet="f", board="esp32")))
    doc = json.loads(p.telemetry_payload("d", {"loss": float("nan"), "samples-seen": 3, "model-sha256": None}))
    validator("telemetry").validate(doc)
    assert doc["loss"] is None  # NaN is not JSON
    assert p.decode_json_document(p.presence_payload("d", online=False, fleet="f"),
                                  expected_type="presence")["online"] is False


# ------------------------------------------------------------------------------------------------ rejections
def _frame(header: dict, tensors: list | None = None) -> bytes:
    return p.encode_frame(header, tensors or [])


@pytest.mark.parametrize(("payload", "code", "match"), [
    (b"\x01", ErrorCode.MALFORMED, "shorter than"),
    (struct.pack("<I", 1000) + b"{}", ErrorCode.MALFORMED, "header length"),
    (struct.pack("<I", 3) + b"{x}", ErrorCode.MALFORMED, "not UTF-8 JSON"),
    (_frame({"v": 2, "type": "task.evaluate", "id": "a"}), ErrorCode.BAD_VERSION, "version 2"),
    (_frame({"v": 1, "type": "task.fly", "id": "a"}), ErrorCode.UNKNOWN_TYPE, "unknown message type"),
    (_frame({"v": 1, "type": "task.evaluate"}), ErrorCode.MALFORMED, "correlation id"),
    (_frame({"v": 1, "type": "task.train", "id": "a", "config": {"lr": 0.1}}), ErrorCode.BAD_CONFIG,
     "'local-steps' is required"),
    (_frame({"v": 1, "type": "task.train", "id": "a", "config": {"lr": -1, "local-steps": 1}}),
     ErrorCode.BAD_CONFIG, "'lr'=-1"),
    (_frame({"v": 1, "type": "task.train", "id": "a", "config": {"lr": 0.1, "local-steps": 1, "top-p": 1.5}}),
     ErrorCode.BAD_CONFIG, "'top-p'"),
])
def test_bad_frames_raise_protocol_errors_with_codes(payload: bytes, code: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        p.decode_frame(payload)
    assert info.value.code == code


def test_bad_version_keeps_the_request_id_for_the_reply() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_frame(_frame({"v": 99, "type": "task.train", "id": "keep-me"}))
    assert info.value.request_id == "keep-me"


def test_tensor_table_lies_are_caught() -> None:
    good = _frame({"v": 1, "type": "task.evaluate", "id": "a", "config": {}}, [("w", np.ones(4, np.float32))])
    (hlen,) = struct.unpack_from("<I", good)
    hdr = json.loads(good[4:4 + hlen])
    for mutate, match in [(lambda t: t.update(nbytes=64), "outside"), (lambda t: t.update(shape=[5]), "do not hold"),
                          (lambda t: t.update(dtype="complex64"), "unsupported dtype"),
                          (lambda t: t.update(encoding="zip"), "unknown encoding")]:
        h = json.loads(json.dumps(hdr))
        mutate(h["tensors"][0])
        hj = json.dumps(h).encode()
        with pytest.raises(ProtocolError, match=match):
            p.decode_frame(struct.pack("<I", len(hj)) + hj + good[4 + hlen:])


def test_sparse_with_repeated_or_out_of_range_indices_is_rejected() -> None:
    for idx in ([1, 1], [0, 8]):
        fr = p.encode_frame({"v": 1, "type": "result", "id": "a", "reply-to": None, "device": "d", "ok": True},
                            [("w", SparseTensor(np.array(idx, np.uint32), np.ones(2, np.float32), (2, 4)))])
        with pytest.raises(ProtocolError, match="out of range"):
            p.decode_frame(fr)


def test_oversize_frame_and_nan_result_are_rejected() -> None:
    _, big = p.encode_task(MessageType.EVALUATE, weights=[np.zeros(1000, np.float32)])
    with pytest.raises(ProtocolError) as info:
        p.decode_frame(big, max_bytes=1000)
    assert info.value.code == ErrorCode.TOO_LARGE
    nan = p.encode_result({"id": "x"}, device="d", tensors=[("w0", np.array([np.nan], np.float32))])
    with pytest.raises(ProtocolError) as info:
        p.decode_result(nan)
    assert info.value.code == ErrorCode.NOT_FINITE


def test_constants_classes_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="cannot be instantiated"):
        MessageType()


# ------------------------------------------------------------------------------------------------ topics
def test_topics_round_trip_and_filters() -> None:
    t = device_topic("fleet-a", "dev-01", "task")
    assert t == "tinyfleet/v1/fleet-a/dev-01/task"
    parsed = parse_topic(t)
    assert (parsed.fleet, parsed.device_id, parsed.kind) == ("fleet-a", "dev-01", "task")
    assert fleet_filter("fleet-a", "result") == "tinyfleet/v1/fleet-a/+/result"
    assert device_acl_lines("fleet-a", "dev-01") == [
        "user dev-01", "topic write tinyfleet/v1/fleet-a/dev-01/presence",
        "topic write tinyfleet/v1/fleet-a/dev-01/result",
        "topic write tinyfleet/v1/fleet-a/dev-01/td", "topic write tinyfleet/v1/fleet-a/dev-01/telemetry",
        "topic read tinyfleet/v1/fleet-a/dev-01/task"]
    with pytest.raises(ValueError, match="Invalid topic: "):
        parse_topic("tinyfleet/v1/fleet-a/dev-01/secrets")


@pytest.mark.parametrize("bad", ["a/b", "dev+1", "dev#", "", "$SYS", "with space", "x" * 65, "fd:colon"])
def test_device_ids_that_could_escape_the_acl_are_rejected(bad: str) -> None:
    with pytest.raises(DeviceIdError, match="invalid device id"):
        check_name(bad)


# ------------------------------------------------------------------------------------------------ boards
def test_board_mix_proportions_and_errors() -> None:
    boards = assign_boards("nano33ble:0.5,esp32:0.3,uno:0.2", 10)
    assert [b.name for b in boards].count("nano33ble") == 5 and [b.name for b in boards].count("uno") == 2
    assert get_board("uno").ram_bytes == 2048 and BOARDS["nano33ble"].ram_bytes == 256 * 1024
    with pytest.raises(UnknownBoardError, match="unknown board 'pdp11'"):
        parse_mix("pdp11")
    with pytest.raises(UnknownBoardError, match="not a number"):
        parse_mix("uno:lots")


# ------------------------------------------------------------------------------------------------ TD
def _td_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((p.SCHEMA_DIR / "td-json-schema-validation.json").read_text())
    assert schema["version"].startswith("1.1")
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("authenticated", [False, True])
def test_thing_description_is_valid_td_1_1_with_mqtt_binding_forms(authenticated: bool) -> None:
    td = thing_description(device_id="dev-7", fleet="f", board=get_board("esp32"), use_case="sine",
                           sensors=("scalar-signal",), host="127.0.0.1", port=1883, authenticated=authenticated)
    errors = [e.message for e in _td_validator().iter_errors(td)]
    assert errors == []
    assert td["@context"][0] == "https://www.w3.org/2022/wot/td/v1.1"
    assert td["@context"][1]["mqv"] == "https://www.w3.org/2019/wot/mqtt#"
    assert td["id"] == "urn:tinyfleet:device:dev-7"
    form = td["actions"]["train"]["forms"][0]
    assert form["href"] == "mqtt://127.0.0.1:1883" and form["mqv:topic"] == "tinyfleet/v1/f/dev-7/task"
    assert form["mqv:controlPacket"] == "publish" and form["mqv:retain"] is False
    presence = td["properties"]["presence"]["forms"][0]
    assert presence["mqv:filter"] == "tinyfleet/v1/f/dev-7/presence" and "readproperty" in presence["op"]
    assert "readproperty" not in td["properties"]["learningState"]["forms"][0]["op"]  # telemetry is not retained
    assert td["tinyfleet:board"]["tinyfleet:ramBytes"] == 520 * 1024
    assert set(td["actions"]) == {"train", "evaluate", "adapt", "deploy"}


def test_td_schema_rejects_broken_descriptions() -> None:
    td = thing_description(device_id="d", fleet="f", board=get_board("uno"), use_case="sine", host="h", port=1)
    v = _td_validator()
    for key in ("@context", "security", "title"):
        broken = dict(td)
        del broken[key]
        assert list(v.iter_errors(broken)), key
    broken = json.loads(json.dumps(td))
    broken["actions"]["train"]["forms"] = []
    assert list(v.iter_errors(broken))
