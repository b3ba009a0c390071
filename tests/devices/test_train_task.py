"""A device's train task with TinyMetaFed's links: delta-q8 downlink, Top-P uplink with error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from devices.exceptions import ProtocolError
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.train_task import FederatedState, receive_weights, train_round
from devices.wire.delta import arrays_crc32, q8_apply, q8_encode
from devices.wire.protocol import ConfigKey, Downlink, ErrorCode, MessageType, decode_frame, encode_task
from devices.wire.sparse import top_p_decode, top_p_encode_ef


def test_q8_roundtrip_error_is_half_a_step_and_zero_stays_zero() -> None:
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.01, (32, 32)).astype(np.float32)
    q, scale = q8_encode(delta)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    base = rng.normal(size=(32, 32)).astype(np.float32)
    assert np.abs(q8_apply(base, q, scale) - (base + delta)).max() <= scale / 2 + 1e-6
    zq, zs = q8_encode(np.zeros(4, np.float32))
    assert zs == 0.0 and not zq.any()


def test_error_feedback_sends_everything_eventually() -> None:
    rng = np.random.default_rng(1)
    deltas = [rng.normal(0, 1, 50).astype(np.float32) for _ in range(40)]
    residual, received = None, np.zeros(50)
    for d in deltas:
        idx, vals, residual = top_p_encode_ef(d, residual, 0.1)
        received += top_p_decode(idx, vals, 50)
    # what was sent plus what is still owed is exactly the sum of all updates
    np.testing.assert_allclose(received + residual, np.sum(deltas, axis=0), rtol=1e-5, atol=1e-4)
    assert np.abs(residual).max() < np.abs(np.sum(deltas, axis=0)).max()


def _task(weights: dict[str, np.ndarray], config: dict[str, object]) -> object:
    _, payload = encode_task(MessageType.TRAIN, config={ConfigKey.LOCAL_STEPS: 5, ConfigKey.LR: 0.01, **config},
                             extra_tensors=list(weights.items()))
    return decode_frame(payload)


def test_delta_downlink_reconstructs_exactly_what_the_server_records() -> None:
    head = MLPHead.init([1, 8, 1], kind="regression", seed=0)
    state = FederatedState.from_weights(head.get_weights())
    target = {k: v + 0.01 for k, v in zip(("w0", "b0"), head.get_weights()[:2], strict=True)}
    codes = {k: q8_encode(target[k] - state.base[k]) for k in target}
    server_view = {k: q8_apply(state.base[k], *codes[k]) for k in target}
    frame = _task({k: c[0] for k, c in codes.items()},
                  {ConfigKey.DOWNLINK: Downlink.DELTA_Q8, ConfigKey.DOWNLINK_SCALES: [c[1] for c in codes.values()],
                   ConfigKey.BASE_CRC: arrays_crc32([state.base[k] for k in codes]), ConfigKey.LOCAL_LAYERS: [1]})
    theta = receive_weights(frame, head.get_weights(), state)  # type: ignore[arg-type]
    for i, k in enumerate(("w0", "b0")):
        np.testing.assert_array_equal(theta[i], server_view[k])
        np.testing.assert_array_equal(state.base[k], server_view[k])
    np.testing.assert_array_equal(theta[2], head.weights_[2])  # the local layer was not sent: the device's own


def test_a_device_without_the_assumed_base_answers_stale_base() -> None:
    head = MLPHead.init([1, 8, 1], kind="regression", seed=0)
    state = FederatedState.from_weights(head.get_weights())
    q, s = q8_encode(np.ones((1, 8), np.float32))
    frame = _task({"w0": q}, {ConfigKey.DOWNLINK: Downlink.DELTA_Q8, ConfigKey.DOWNLINK_SCALES: [s],
                              ConfigKey.BASE_CRC: 12345})
    with pytest.raises(ProtocolError) as err:
        receive_weights(frame, head.get_weights(), state)  # type: ignore[arg-type]
    assert err.value.code == ErrorCode.STALE_BASE


def test_delta_config_without_scales_is_refused_by_the_protocol() -> None:
    with pytest.raises(ProtocolError, match="needs 'downlink-scales'"):
        encode_task(MessageType.TRAIN, config={ConfigKey.LOCAL_STEPS: 1, ConfigKey.LR: 0.1,
                                               ConfigKey.DOWNLINK: Downlink.DELTA_Q8})


def test_readout_round_keeps_the_last_layer_home_and_feeds_back_the_residual() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-5, 5, (40, 1)).astype(np.float32)
    y = (3 * np.sin(x)).astype(np.float32)
    learner = OnlineLearner(MLPHead.init([1, 16, 16, 1], kind="regression", seed=1), None, seed=0)
    state = FederatedState.from_weights(learner.head.get_weights())
    theta = learner.head.get_weights()
    cfg = {ConfigKey.LOCAL_STEPS: 20, ConfigKey.LR: 0.01, ConfigKey.LOCAL_LAYERS: [2], ConfigKey.TOP_P: 0.1,
           ConfigKey.ERROR_FEEDBACK: True, ConfigKey.READOUT_LAMBDA: 1.0}
    metrics, tensors, extra = train_round(learner, x, y, theta, cfg, state)
    assert [name for name, _ in tensors] == ["w0", "b0", "w1", "b1"] and extra["local-layers"] == [2]
    assert set(state.residual) == {"w0", "b0", "w1", "b1"} and 2 in state.personal
    phi = learner.head.get_weights()
    for i, (name, sparse) in enumerate(tensors):   # sent + kept residual = the whole update
        np.testing.assert_allclose(sparse.to_dense() + state.residual[name], phi[i] - theta[i], atol=1e-6)
    assert metrics["num-examples"] == 20
    with pytest.raises(ProtocolError, match="local-layers must be"):
        train_round(learner, x, y, theta, {**cfg, ConfigKey.LOCAL_LAYERS: [1]}, state)


def test_meta_learning_frames_match_the_json_schemas() -> None:
    import jsonschema

    from devices.wire.protocol import encode_result, frame_header, load_schema

    q, s = q8_encode(np.ones((1, 8), np.float32))
    _, task = encode_task(MessageType.TRAIN, config={
        ConfigKey.LOCAL_STEPS: 5, ConfigKey.LR: 0.01, ConfigKey.LOCAL_LAYERS: [1], ConfigKey.TOP_P: 0.05,
        ConfigKey.ERROR_FEEDBACK: True, ConfigKey.READOUT_LAMBDA: 1.0, ConfigKey.DOWNLINK: Downlink.DELTA_Q8,
        ConfigKey.DOWNLINK_SCALES: [s], ConfigKey.BASE_CRC: 4294967295}, extra_tensors=[("w0", q)])
    jsonschema.validate(frame_header(task), load_schema("task.train"))
    missing = {**frame_header(task), "config": {ConfigKey.LOCAL_STEPS: 5, ConfigKey.LR: 0.01,
                                                ConfigKey.DOWNLINK: Downlink.DELTA_Q8}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(missing, load_schema("task.train"))
    _, adapt_task = encode_task(MessageType.ADAPT, config={ConfigKey.SHOTS: 10, ConfigKey.STEPS: 3,
                                                           ConfigKey.ADAPT_STEP: "batch",
                                                           ConfigKey.READOUT_LAMBDA: 0.3})
    jsonschema.validate(frame_header(adapt_task), load_schema("task.adapt"))
    reply = encode_result(frame_header(task), device="d", error=(ErrorCode.STALE_BASE, "crc mismatch"))
    jsonschema.validate(frame_header(reply), load_schema("result"))
