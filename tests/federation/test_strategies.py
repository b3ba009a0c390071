"""Strategies over the in-memory transport (real codec, deterministic quadratic devices)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg

from devices.wire.sparse import top_p_encode
from federation.exceptions import StrategyParameterError
from federation.flower_compat import init_task_identity
from federation.grid import FleetGrid
from federation.inprocess_transport import InProcessTransport
from federation.meta_update import linear_epsilon
from federation.strategies import Reptile, TinyMetaFed
from federation.wire import ProtocolCodec
from tests.support.federation import QuadraticDevice, adapted, initial_head

STEPS, LR = 3, 0.1


class Recorder:
    """Wrap a device handler and record the exact bytes it receives and sends."""

    def __init__(self, device: QuadraticDevice) -> None:
        self.device = device
        self.down: list[int] = []
        self.up: list[int] = []

    def __call__(self, payload: bytes) -> bytes | None:
        self.down.append(len(payload))
        reply = self.device(payload)
        if reply is not None:
            self.up.append(len(reply))
        return reply


def make_grid(n: int = 5, **device_kw: object) -> tuple[FleetGrid, dict[str, Recorder]]:
    init_task_identity(1)
    devs = {f"dev-{i}": Recorder(QuadraticDevice(f"dev-{i}", **device_kw)) for i in range(n)}  # type: ignore[arg-type]
    grid = FleetGrid(InProcessTransport(devs), ProtocolCodec({"local-steps": STEPS, "lr": LR}), run_id="run-a")
    return grid, devs


def start(strategy: FedAvg, grid: FleetGrid, rounds: int = 1) -> dict[str, np.ndarray]:
    init = ArrayRecord({k: Array(v) for k, v in initial_head().items()})
    try:
        res = strategy.start(grid=grid, initial_arrays=init, num_rounds=rounds, timeout=10)
    finally:
        grid.transport.close()
    return {k: v.numpy() for k, v in res.arrays.items()}


def test_reptile_moves_theta_by_epsilon_times_mean_delta_exactly() -> None:
    grid, devs = make_grid(5)
    theta = initial_head()
    eps = 0.5
    out = start(Reptile(epsilon=eps, epsilon_floor=eps, num_rounds=1, local_steps=STEPS, local_lr=LR,
                        min_available_nodes=5, min_train_nodes=5), grid)
    for k, t in theta.items():
        phis = [adapted(t, d.device.center[k], STEPS, LR) for d in devs.values()]
        expected = t.astype(np.float64) + eps * np.mean([p.astype(np.float64) - t for p in phis], axis=0)
        np.testing.assert_allclose(out[k], expected.astype(np.float32), rtol=0, atol=1e-6)
        assert not np.allclose(out[k], t)  # the step really moved θ


def test_serial_reptile_samples_one_device_per_round_and_anneals_epsilon() -> None:
    grid, devs = make_grid(4)
    strat = Reptile(epsilon=1.0, epsilon_floor=0.0, num_rounds=4, local_steps=STEPS, local_lr=LR, serial=True,
                    fraction_evaluate=0.0)
    start(strat, grid, rounds=4)
    trained = sum(len(d.up) for d in devs.values())
    assert trained == 4  # one train reply per round, no evaluation
    assert [strat.epsilon_at(r) for r in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    assert grid.ledger.round_summary(3)["phases"]["train"]["sent"] == 1


def test_serial_reptile_with_epsilon_one_takes_the_device_weights() -> None:
    grid, devs = make_grid(3)
    out = start(Reptile(epsilon=1.0, epsilon_floor=1.0, num_rounds=1, local_steps=STEPS, local_lr=LR, serial=True,
                        fraction_evaluate=0.0), grid)
    (trained,) = [d for d in devs.values() if d.up]
    for k, t in initial_head().items():
        np.testing.assert_allclose(out[k], adapted(t, trained.device.center[k], STEPS, LR), atol=1e-6)


def test_stock_fedavg_averages_weighted_by_num_examples_up_to_local_steps() -> None:
    """Weights are the devices' claims, capped by the server at what the task asked for (local-steps x batch 1)."""
    init_task_identity(1)
    claims = [1, 2, 30]  # 30 > local-steps (3): the server grants 3
    devs = {f"dev-{i}": QuadraticDevice(f"dev-{i}", num_examples=n) for i, n in enumerate(claims)}
    grid = FleetGrid(InProcessTransport(devs), ProtocolCodec({"local-steps": STEPS, "lr": LR}), run_id="run-a")
    out = start(FedAvg(min_available_nodes=3, min_train_nodes=3), grid)
    w = np.array([1, 2, STEPS], dtype=np.float64) / (3 + STEPS)
    for k, t in initial_head().items():
        phis = [adapted(t, d.center[k], STEPS, LR) for d in devs.values()]
        np.testing.assert_allclose(out[k], sum(wi * p for wi, p in zip(w, phis, strict=True)), atol=1e-6)


def test_tinymetafed_keeps_local_layers_on_device_and_counts_sparse_bytes() -> None:
    grid, devs = make_grid(4)
    theta = initial_head()
    top_p = 0.25
    out = start(TinyMetaFed(top_p=top_p, local_layers=(-1,), reconstruct_steps=2, epsilon=0.5, epsilon_floor=0.5,
                            num_rounds=1, local_steps=STEPS, local_lr=LR, min_available_nodes=4, min_train_nodes=4),
                grid)
    # the device's own last layer never travelled upwards
    for d in devs.values():
        assert d.device.sent_keys == [["b0", "w0"]]
        assert set(d.device.local) == {"w1", "b1"}  # ...but was reconstructed locally
        np.testing.assert_allclose(d.device.local["w1"], adapted(theta["w1"], d.device.center["w1"], 2, LR))
    np.testing.assert_array_equal(out["w1"], theta["w1"])
    np.testing.assert_array_equal(out["b1"], theta["b1"])
    # shared layers: Reptile step over the decoded Top-P updates
    for k in ("w0", "b0"):
        deltas = []
        for d in devs.values():
            phi = adapted(theta[k], d.device.center[k], STEPS, LR)
            idx, val = top_p_encode(phi - theta[k], top_p)
            dense = np.zeros(theta[k].size, np.float32)
            dense[idx] = val
            deltas.append(dense.reshape(theta[k].shape).astype(np.float64))
        np.testing.assert_allclose(out[k], theta[k] + 0.5 * np.mean(deltas, axis=0), atol=1e-6)
    # bytes on the wire: exactly what the devices received and sent
    phases = grid.ledger.round_summary(1)["phases"]
    assert phases["train"]["bytes_down"] + phases["evaluate"]["bytes_down"] == sum(sum(d.down) for d in devs.values())
    assert phases["train"]["bytes_up"] + phases["evaluate"]["bytes_up"] == sum(sum(d.up) for d in devs.values())


def test_top_p_shrinks_the_uplink() -> None:
    sizes = {}
    for p in (1.0, 0.1):
        grid, _ = make_grid(3)
        start(TinyMetaFed(top_p=p, num_rounds=1, fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3),
              grid)
        sizes[p] = grid.ledger.round_summary(1)["phases"]["train"]["bytes_up"]
    assert sizes[0.1] < sizes[1.0]


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (TinyMetaFed, {"top_p": 1.5},
     "The 'top_p' parameter of TinyMetaFed must be a float in the range (0, 1]. Got 1.5 instead."),
    (TinyMetaFed, {"top_p": 0.0},
     "The 'top_p' parameter of TinyMetaFed must be a float in the range (0, 1]. Got 0.0 instead."),
    (Reptile, {"epsilon": -0.1},
     "The 'epsilon' parameter of Reptile must be a float in the range (0, 1]. Got -0.1 instead."),
    (Reptile, {"epsilon": 0.5, "epsilon_floor": 0.7},
     "The 'epsilon_floor' parameter of Reptile must be a float in the range [0, 0.5]. Got 0.7 instead."),
    (Reptile, {"local_steps": 0}, "The 'local_steps' parameter of Reptile must be an int >= 1. Got 0 instead."),
    (TinyMetaFed, {"reconstruct_steps": 1.5},
     "The 'reconstruct_steps' parameter of TinyMetaFed must be an int >= 0. Got 1.5 instead."),
    (TinyMetaFed, {"local_layers": ()},
     "The 'local_layers' parameter of TinyMetaFed must be a non-empty tuple of ints. Got () instead."),
])
def test_bad_parameters_fail_at_construction_with_sklearn_style_messages(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(StrategyParameterError) as info:
        cls(**kwargs)
    assert str(info.value) == message


def test_tinymetafed_refuses_to_keep_every_layer_local() -> None:
    grid, _ = make_grid(2)
    with pytest.raises(StrategyParameterError, match="leave at least one shared"):
        start(TinyMetaFed(local_layers=(0, 1), num_rounds=1), grid)


def test_linear_epsilon_schedule() -> None:
    assert linear_epsilon(1, 10, epsilon=1.0, epsilon_floor=0.0) == 1.0
    assert linear_epsilon(10, 10, epsilon=1.0, epsilon_floor=0.0) == pytest.approx(0.1)
    assert linear_epsilon(6, 10, epsilon=0.5, epsilon_floor=0.1) == pytest.approx(0.3)
