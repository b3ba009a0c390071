"""Devices honour what a strategy asks (FedProx's proximal term, client-side clipping) or refuse it.

The proximal SGD of the device is compared with a numpy computation that materialises every
gradient (`MLPHead.loss_and_grads`, a separate code path from the in-place hot loop) and adds
FedProx's μ·(w − w_global); the agent tests run real agents on a real Mosquitto.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from broker.process import BrokerInfo
from devices.exceptions import LearnerInputError, ProtocolError
from devices.learning.head import MLPHead
from devices.link.address import BrokerAddress
from devices.link.fleet_client import FleetClient
from devices.wire import protocol as p
from devices.wire.protocol import ConfigKey, ErrorCode, MessageType, MetricKey
from tests.support.devices import sine_agent, start_hub

TRAIN = {ConfigKey.LOCAL_STEPS: 12, ConfigKey.LR: 0.05, ConfigKey.SERVER_ROUND: 1, ConfigKey.SEED: 3}


def proximal_sgd_reference(head: MLPHead, feats: np.ndarray, targets: np.ndarray, order: np.ndarray, lr: float,
                           mu: float) -> list[np.ndarray]:
    """w ← w − lr·(∇loss(w) + μ·(w − w₀)), one sample per step, gradients materialised in float64."""
    work = MLPHead([w.astype(np.float64) for w in head.get_weights()], kind=head.kind, dtype=np.float64)
    anchor = [w.copy() for w in work.get_weights()]
    for i in order:
        _, grads = work.loss_and_grads(feats[i], targets[i])
        work.set_weights([w - lr * (g + mu * (w - w0))
                          for w, g, w0 in zip(work.get_weights(), grads, anchor, strict=True)])
    return work.get_weights()


@pytest.mark.parametrize("mu", [0.0, 0.5, 3.0])
def test_proximal_sgd_matches_the_numpy_formula(mu: float) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(10, 3)).astype(np.float32)
    targets = rng.normal(size=(10, 2)).astype(np.float32)
    order = rng.integers(0, 10, 40)
    head = MLPHead.init([3, 8, 2], kind="regression", seed=1)
    expected = proximal_sgd_reference(head, feats, targets, order, 0.05, mu)
    head.sgd_steps(feats, targets, order, 0.05, proximal_mu=mu)
    for got, want in zip(head.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_proximal_term_pulls_toward_the_anchor_and_rejects_bad_mu() -> None:
    rng = np.random.default_rng(1)
    feats, targets = rng.normal(size=(8, 1)).astype(np.float32), rng.normal(size=(8, 1)).astype(np.float32)
    start = MLPHead.init([1, 8, 1], kind="regression", seed=0)
    drift = {}
    for mu in (0.0, 1.0, 10.0):
        h = start.copy()
        h.sgd_steps(feats, targets, np.arange(200) % 8, 0.05, proximal_mu=mu)
        drift[mu] = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(h.get_weights(), start.get_weights(),
                                                                      strict=True)))
    assert drift[0.0] > drift[1.0] > drift[10.0] > 0
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(LearnerInputError, match="proximal_mu"):
            start.copy().sgd_steps(feats, targets, np.arange(3), 0.05, proximal_mu=bad)  # type: ignore[arg-type]


def test_protocol_checks_the_new_keys() -> None:
    ok = {**TRAIN, ConfigKey.PROXIMAL_MU: 0.0, ConfigKey.CLIPPING_NORM: 0.5, ConfigKey.REQUIRED: ["proximal-mu"]}
    p.check_config(MessageType.TRAIN, ok)
    for key, bad in ((ConfigKey.PROXIMAL_MU, -0.1), (ConfigKey.PROXIMAL_MU, True), (ConfigKey.CLIPPING_NORM, 0),
                     (ConfigKey.REQUIRED, "proximal-mu"), (ConfigKey.REQUIRED, [1]), (ConfigKey.SEED, -1)):
        with pytest.raises(ProtocolError, match=key) as info:
            p.check_config(MessageType.TRAIN, {**TRAIN, key: bad})
        assert info.value.code == ErrorCode.BAD_CONFIG
    assert p.unsupported_required(MessageType.TRAIN, {ConfigKey.REQUIRED: ["proximal-mu", "lr"]}) == []
    assert p.unsupported_required(MessageType.EVALUATE, {ConfigKey.REQUIRED: ["proximal-mu"]}) == ["proximal-mu"]
    assert p.unsupported_required(MessageType.TRAIN, {ConfigKey.REQUIRED: ["x-new", "lr"]},
                                  implemented=frozenset()) == ["lr", "x-new"]


@pytest.fixture()
def address(mosquitto: BrokerInfo) -> BrokerAddress:
    return BrokerAddress(mosquitto.host, mosquitto.port)


def test_devices_refuse_required_keys_they_do_not_implement(address: BrokerAddress, tmp_path: Path) -> None:
    full = sine_agent("req-full", address, tmp_path / "a", fleet="req")
    old = sine_agent("req-old", address, tmp_path / "b", fleet="req", lacks_config=(ConfigKey.PROXIMAL_MU,))
    hub = start_hub(address, full, old)
    try:
        with FleetClient(address, fleet="req", client_id="srv-req") as fc:
            w = full.learner.head.get_weights()
            prox = {**TRAIN, ConfigKey.PROXIMAL_MU: 1.0, ConfigKey.REQUIRED: [ConfigKey.PROXIMAL_MU]}
            tasks = {d: p.encode_task(MessageType.TRAIN, config=prox, weights=w) for d in ("req-full", "req-old")}
            replies = fc.request(tasks, timeout=10)
            assert replies["req-full"] is not None and replies["req-full"].header["ok"]
            refused = replies["req-old"]
            assert refused is not None and not refused.header["ok"]
            assert refused.header["error"]["code"] == ErrorCode.UNSUPPORTED_CONFIG
            assert "proximal-mu" in refused.header["error"]["reason"]
            assert old.learner.samples_seen_ == 0  # refused, not trained as plain SGD
            # a key nobody implements, on evaluate too
            for mtype, cfg in ((MessageType.TRAIN, TRAIN), (MessageType.EVALUATE, {})):
                tid, frame = p.encode_task(mtype, config={**cfg, ConfigKey.REQUIRED: ["x-secure-aggregation"]},
                                           weights=w)
                reply = fc.request({"req-full": (tid, frame)}, timeout=10)["req-full"]
                assert reply is not None and reply.header["error"]["code"] == ErrorCode.UNSUPPORTED_CONFIG
            # unknown keys that are NOT required are still ignored (Flower strategies add their own)
            tid, frame = p.encode_task(MessageType.TRAIN, config={**TRAIN, "x-hint": 1}, weights=w)
            reply = fc.request({"req-full": (tid, frame)}, timeout=10)["req-full"]
            assert reply is not None and reply.header["ok"]
    finally:
        hub.stop()


def test_client_side_clipping_bounds_the_update_and_reports_the_norm_bit(address: BrokerAddress,
                                                                         tmp_path: Path) -> None:
    agent = sine_agent("clip-01", address, tmp_path, fleet="clip")
    hub = start_hub(address, agent)
    try:
        with FleetClient(address, fleet="clip", client_id="srv-clip") as fc:
            theta = agent.learner.head.get_weights()

            def train(extra: dict) -> tuple[list[np.ndarray], dict]:
                tid, frame = p.encode_task(MessageType.TRAIN, config={**TRAIN, **extra}, weights=theta)
                reply = fc.request({"clip-01": (tid, frame)}, timeout=10)["clip-01"]
                assert reply is not None and reply.header["ok"], reply and reply.header
                return reply.arrays(), reply.header["metrics"]

            free, m_free = train({})
            assert MetricKey.NORM_BIT not in m_free
            norm = np.sqrt(sum(np.sum((a.astype(np.float64) - t) ** 2) for a, t in zip(free, theta, strict=True)))
            clipped, m_clip = train({ConfigKey.CLIPPING_NORM: float(norm) / 4})
            assert m_clip[MetricKey.NORM_BIT] == 1.0
            for c, f, t in zip(clipped, free, theta, strict=True):  # same direction, a quarter of the length
                np.testing.assert_allclose(c - t, (f - t) / 4, rtol=1e-4, atol=1e-6)
            same, m_same = train({ConfigKey.CLIPPING_NORM: float(norm) * 2})
            assert m_same[MetricKey.NORM_BIT] == 0.0
            for s, f in zip(same, free, strict=True):
                np.testing.assert_array_equal(s, f)
    finally:
        hub.stop()
