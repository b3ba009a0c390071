"""Every applicable strategy of flwr 1.41, unmodified, over real Mosquitto through the public `MqttGrid` only.

One broker and one fleet of 7 simulated devices (real `DeviceAgent`s with a 1-8-1 sine head) serve
the whole module; 7 is what Bulyan needs with one assumed malicious node (4f + 3). Each strategy
runs 2 rounds. A round counts as aggregated when the global arrays change and stay finite, with no
failed or missing reply. For FedAvg, FedMedian, FedTrimmedAvg and Krum the first aggregate is
recomputed here in numpy from the replies the Grid delivered; FedProx's device updates are
recomputed from the device's own data with the proximal gradient written out.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from broker.process import BrokerInfo
from devices.agent import DeviceAgent
from devices.learning.head import MLPHead
from devices.link.address import parse_broker_url
from devices.simulator import FleetSimulator
from devices.wire.protocol import ConfigKey, ErrorCode, MetricKey, weight_names
from federation import MqttGrid

N = 7
FLEET = "flwr-all"
STEPS, LR, SEED = 8, 0.02, 5
NOT_APPLICABLE = {"FedXgbBagging": "trains XGBoost trees (serialized boosters), not array models",
                  "FedXgbCyclic": "trains XGBoost trees (serialized boosters), not array models"}


@dataclass
class Seen:
    """A snapshot of one reply as the Grid delivered it (aggregators may empty the records afterwards)."""

    node: int
    error: str | None
    arrays: dict[str, np.ndarray]
    metrics: dict[str, Any]


class RecordingGrid(MqttGrid):
    """The public Grid, keeping what each `send_and_receive` sent and got back (for the numpy checks)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[tuple[list[Message], list[Seen]]] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        sent = list(messages)
        got = super().send_and_receive(sent, timeout=timeout)
        self.exchanges.append((sent, [_snapshot(r) for r in got]))
        return got

    def train_replies(self, server_round: int) -> list[Seen]:
        """Replies of the train phase of `server_round` (exchanges alternate train, evaluate)."""
        return self.exchanges[2 * (server_round - 1)][1]


def _snapshot(reply: Message) -> Seen:
    if reply.has_error():
        return Seen(reply.metadata.src_node_id, reply.error.reason, {}, {})
    arrays = {k: v.numpy().copy() for rec in reply.content.array_records.values() for k, v in rec.items()}
    metrics = {k: v for rec in reply.content.metric_records.values() for k, v in rec.items()}
    return Seen(reply.metadata.src_node_id, None, arrays, metrics)


@dataclass
class Fleet:
    url: str
    sim: FleetSimulator
    theta: dict[str, np.ndarray]

    def agent(self, node_id: int, grid: MqttGrid) -> DeviceAgent:
        return next(a for a in self.sim.agents if a.client_id == grid.device_id(node_id))


@pytest.fixture(scope="module")
def fleet(mosquitto: BrokerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("flwr-fleet")
    (root / "model").mkdir()
    head = MLPHead.init([1, 8, 1], kind="regression", seed=0)
    head.to_npz(root / "model" / "head.npz")
    sim = FleetSimulator(n=N, use_case="sine", address=parse_broker_url(mosquitto.url), state_root=root / "devices",
                         fleet=FLEET, models_dir=root / "model", samples_per_device=16, telemetry_s=0.0, seed=1)
    try:
        assert sim.start(timeout=30) == N
        yield Fleet(mosquitto.url, sim, dict(zip(weight_names(4), head.get_weights(), strict=True)))
    finally:
        sim.stop()


S = {"min_available_nodes": N, "min_train_nodes": N, "min_evaluate_nodes": N}
CLIP = 0.05  # below the devices' typical update norm (~0.1-0.3 at 8 steps), so clipping really happens
STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "FedAvg": lambda: FedAvg(**S),
    "FedAvgM": lambda: FedAvgM(server_learning_rate=0.5, server_momentum=0.9, **S),
    "FedProx": lambda: FedProx(proximal_mu=1.0, **S),
    "FedAdagrad": lambda: FedAdagrad(eta=0.05, **S),
    "FedAdam": lambda: FedAdam(eta=0.05, **S),
    "FedYogi": lambda: FedYogi(eta=0.05, **S),
    "FedMedian": lambda: FedMedian(**S),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.2, **S),
    "Krum": lambda: Krum(num_malicious_nodes=1, **S),
    "MultiKrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3, **S),
    "Bulyan": lambda: Bulyan(num_malicious_nodes=1, **S),
    "QFedAvg": lambda: QFedAvg(client_learning_rate=LR, q=0.2, train_loss_key=MetricKey.TRAIN_LOSS, **S),
    "DifferentialPrivacyServerSideFixedClipping": lambda: DifferentialPrivacyServerSideFixedClipping(
        FedAvg(**S), noise_multiplier=0.1, clipping_norm=CLIP, num_sampled_clients=N),
    "DifferentialPrivacyClientSideFixedClipping": lambda: DifferentialPrivacyClientSideFixedClipping(
        FedAvg(**S), noise_multiplier=0.1, clipping_norm=CLIP, num_sampled_clients=N),
    "DifferentialPrivacyServerSideAdaptiveClipping": lambda: DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(**S), noise_multiplier=0.1, num_sampled_clients=N, initial_clipping_norm=CLIP),
    "DifferentialPrivacyClientSideAdaptiveClipping": lambda: DifferentialPrivacyClientSideAdaptiveClipping(
        FedAvg(**S), noise_multiplier=0.1, num_sampled_clients=N, initial_clipping_norm=CLIP),
}


def test_every_flower_strategy_is_covered_or_named_not_applicable() -> None:
    shipped = {n for n in flwr_strategy.__all__ if n not in ("Strategy", "Result")}
    assert shipped == set(STRATEGIES) | set(NOT_APPLICABLE)


def run(fleet: Fleet, strategy: Strategy, *, rounds: int = 2,
        train: dict[str, Any] | None = None) -> tuple[RecordingGrid, list[dict[str, np.ndarray]]]:
    """`strategy.start` over a fresh public Grid; returns the grid and the global arrays after each round."""
    seen: list[dict[str, np.ndarray]] = []

    def record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        seen.append({k: v.numpy().copy() for k, v in arrays.items()})
        return None

    with RecordingGrid(fleet.url, fleet=FLEET, use_case="sine", local_steps=STEPS, lr=LR) as grid:
        grid.wait_for_nodes(N, timeout=30)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(_records(fleet.theta)), num_rounds=rounds, timeout=20,
                       train_config=ConfigRecord({ConfigKey.SEED: SEED, **(train or {})}), evaluate_fn=record)
    return grid, seen


def _records(arrays: dict[str, np.ndarray]) -> dict[str, Array]:
    return {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}


def phis(replies: list[Seen]) -> list[dict[str, np.ndarray]]:
    return [r.arrays for r in replies]


def stack(ps: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.stack([p[key] for p in ps])


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_stock_strategy_aggregates_every_round(fleet: Fleet, name: str) -> None:
    strategy = STRATEGIES[name]()
    grid, seen = run(fleet, strategy)
    assert len(seen) == 3  # evaluate_fn: before round 1, after rounds 1 and 2
    for rnd in (1, 2):
        phase = grid.ledger.round_summary(rnd)["phases"]["train"]
        assert (phase["sent"], phase["replies"], phase["failures"], phase["missing"]) == (N, N, 0, 0), phase
        before, after = seen[rnd - 1], seen[rnd]
        assert all(np.all(np.isfinite(v)) for v in after.values())
        assert any(not np.array_equal(before[k], after[k]) for k in before), f"round {rnd} kept the old arrays"
    replies = grid.train_replies(1)
    # some Flower aggregators (FedMedian, Krum, ...) rebuild the ArrayRecord from a list, so the keys
    # become "0", "1", ...; compare by position, which is what the Grid does with device replies too
    theta, agg = seen[0], dict(zip(seen[0], seen[1].values(), strict=True))
    if name == "FedAvg":  # equal weights: every device reports num-examples = local steps
        assert {r.metrics[MetricKey.NUM_EXAMPLES] for r in replies} == {STEPS}
        for k in theta:
            np.testing.assert_allclose(agg[k], stack(phis(replies), k).mean(axis=0), rtol=1e-5, atol=1e-7)
    elif name == "FedMedian":
        for k in theta:
            np.testing.assert_allclose(agg[k], np.median(stack(phis(replies), k), axis=0), rtol=1e-6)
    elif name == "FedTrimmedAvg":
        for k in theta:
            s = np.sort(stack(phis(replies), k), axis=0)
            cut = int(0.2 * N)
            np.testing.assert_allclose(agg[k], s[cut:N - cut].mean(axis=0), rtol=1e-5, atol=1e-7)
    elif name == "Krum":  # the reply whose n - f - 2 nearest neighbours are closest, returned as is
        ps = phis(replies)
        flat = np.stack([np.concatenate([p[k].ravel() for k in theta]) for p in ps]).astype(np.float64)
        d = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
        scores = [np.sort(np.delete(d[i], i))[:N - 1 - 2].sum() for i in range(N)]
        best = ps[int(np.argmin(scores))]
        for k in theta:
            np.testing.assert_array_equal(agg[k], best[k])
    elif name == "DifferentialPrivacyClientSideFixedClipping":  # the devices clipped their updates
        norms = [r.metrics["update-norm"] for r in replies]
        assert max(norms) <= CLIP * (1 + 1e-4), norms
        assert any(r.metrics[MetricKey.NORM_BIT] == 1 for r in replies)
    elif name == "DifferentialPrivacyClientSideAdaptiveClipping":  # the norm bits moved the clipping norm
        assert strategy.clipping_norm != CLIP  # type: ignore[attr-defined]


def device_reference(agent: DeviceAgent, theta: dict[str, np.ndarray], mu: float) -> dict[str, np.ndarray]:
    """What a device must return for one FedProx round: batch-1 SGD on its own data, proximal gradient explicit.

    w ← w − lr·(clip(∇ℓ(w)) + μ·(w − θ)), where clip is the device's documented per-layer clip of the
    data gradient (norm ≤ `learner.clip_norm`) and the sample order is the one a seeded round uses:
    shuffled passes drawn from (seed, crc32(device id), round).
    """
    x, y = agent.x_train.reshape(len(agent.x_train), -1), agent.y_train
    rng = np.random.default_rng([SEED, zlib.crc32(agent.client_id.encode()), 1])
    order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-STEPS // len(x)))])[:STEPS]
    keys = list(theta)
    w0 = [theta[k].astype(np.float64) for k in keys]
    head = MLPHead([w.copy() for w in w0], kind="regression", dtype=np.float64)
    clip = agent.learner.clip_norm
    for i in order:
        _, g = head.loss_and_grads(x[i], y[i])
        for layer in range(len(g) // 2):
            norm = np.sqrt(np.sum(g[2 * layer] ** 2) + np.sum(g[2 * layer + 1] ** 2))
            if clip is not None and norm > clip:
                g[2 * layer], g[2 * layer + 1] = g[2 * layer] * clip / norm, g[2 * layer + 1] * clip / norm
        head.set_weights([w - LR * (gw + mu * (w - a))
                          for w, gw, a in zip(head.get_weights(), g, w0, strict=True)])
    return dict(zip(keys, head.get_weights(), strict=True))


def test_fedprox_devices_follow_the_proximal_gradient(fleet: Fleet) -> None:
    mu = 2.0
    plain, _ = run(fleet, FedAvg(**S), rounds=1)
    prox, _ = run(fleet, FedProx(proximal_mu=mu, **S), rounds=1)
    sent = prox.exchanges[0][0][0]
    assert sent.content["config"][ConfigKey.PROXIMAL_MU] == mu  # Flower's FedProx put it there
    by_node = {r.node: r for r in plain.train_replies(1)}
    gaps = []
    for reply in prox.train_replies(1):
        agent = fleet.agent(reply.node, prox)
        got_prox, got_plain = reply.arrays, by_node[reply.node].arrays
        want_prox, want_plain = device_reference(agent, fleet.theta, mu), device_reference(agent, fleet.theta, 0.0)
        for k in fleet.theta:
            np.testing.assert_allclose(got_prox[k], want_prox[k], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(got_plain[k], want_plain[k], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(got_prox[k] - got_plain[k], want_prox[k] - want_plain[k], atol=1e-5)
        gaps.append(max(float(np.abs(got_prox[k] - got_plain[k]).max()) for k in fleet.theta))
    assert min(gaps) > 1e-4, gaps  # the proximal term really changed every device's update


def test_a_device_without_proximal_mu_refuses_fedprox_visibly(fleet: Fleet) -> None:
    old = fleet.sim.agents[0]
    old.config.lacks_config = (ConfigKey.PROXIMAL_MU,)  # as if its firmware predates FedProx support
    try:
        grid, _ = run(fleet, FedProx(proximal_mu=0.5, **S), rounds=1)
    finally:
        old.config.lacks_config = ()
    phase = grid.ledger.round_summary(1)["phases"]["train"]
    assert (phase["replies"], phase["failures"]) == (N - 1, 1)
    assert phase["reasons"] == {f"device-error:{ErrorCode.UNSUPPORTED_CONFIG}": 1}
    errors = [r.error for r in grid.train_replies(1) if r.error is not None]
    assert len(errors) == 1 and old.client_id in errors[0] and "proximal-mu" in errors[0]
