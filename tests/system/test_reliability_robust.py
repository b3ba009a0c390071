"""Robust aggregation for Reptile: a poisoned device that passes every per-reply check cannot drag the median.

The poisoned device answers with a consistent, finite update 4x the size of an honest one: below
the Grid's norm bound (10x the round's median), so only the aggregation rule can limit it.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from federation.exceptions import StrategyParameterError
from federation.flower_compat import init_task_identity
from federation.grid import FleetGrid
from federation.inprocess_transport import InProcessTransport
from federation.meta_update import reptile_update
from federation.strategies import Reptile
from federation.strategies.registry import build_strategy
from federation.wire import ProtocolCodec
from tests.support.federation import QuadraticDevice, adapted, initial_head

STEPS, LR = 2, 0.1
HONEST = ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"]


def test_update_rules_on_hand_made_numbers() -> None:
    theta = [np.zeros(3, np.float32)]
    phis = [[np.array([1.0, 2.0, 3.0], np.float32)], [np.array([2.0, 2.0, 2.0], np.float32)],
            [np.array([3.0, 2.0, 1.0], np.float32)], [np.array([4.0, 2.0, 0.0], np.float32)],
            [np.array([100.0, -50.0, 9.0], np.float32)]]
    np.testing.assert_allclose(reptile_update(theta, phis, 1.0)[0], [22.0, -8.4, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(reptile_update(theta, phis, 1.0, aggregation="median")[0], [3.0, 2.0, 2.0])
    # trim 0.2 of 5 cuts one value at each end per coordinate: mean of the middle three
    np.testing.assert_allclose(reptile_update(theta, phis, 0.5, aggregation="trimmed-mean", trim=0.2)[0],
                               0.5 * np.array([3.0, 2.0, 2.0]), rtol=1e-6)
    assert reptile_update(theta, phis, 1.0, aggregation="median")[0].dtype == np.float32
    # Krum (f = 1: each update scored by its 2 nearest others) keeps [2, 2, 2], never the outlier
    np.testing.assert_array_equal(reptile_update(theta, phis, 1.0, aggregation="krum", num_malicious_nodes=1)[0],
                                  [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="aggregation must be one of mean, median, trimmed-mean, krum; got 'max'"):
        reptile_update(theta, phis, 1.0, aggregation="max")
    with pytest.raises(ValueError, match=r"trim must be in \[0, 0.5\)"):
        reptile_update(theta, phis, 1.0, aggregation="trimmed-mean", trim=0.5)


def poison(hdr, tensors):  # type: ignore[no-untyped-def]
    """Push every weight 4x as far as an honest device would, in a fixed direction."""
    return [(k, (v + 4.0 * np.sign(v + 1e-3) * np.abs(v).mean()).astype(np.float32)) for k, v in tensors]


def one_round(aggregation: str) -> tuple[dict[str, np.ndarray], dict]:
    init_task_identity(1)
    devs = {d: QuadraticDevice(d) for d in HONEST}
    devs["zz-poison"] = QuadraticDevice("zz-poison", sabotage=poison)
    grid = FleetGrid(InProcessTransport(devs), ProtocolCodec({"local-steps": STEPS, "lr": LR}), run_id="robust")
    strat = Reptile(epsilon=1.0, epsilon_floor=1.0, num_rounds=1, local_steps=STEPS, local_lr=LR,
                    aggregation=aggregation, trim=0.2, min_available_nodes=6, min_train_nodes=6,
                    fraction_evaluate=0.0)
    try:
        res = strat.start(grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in initial_head().items()}),
                          num_rounds=1, timeout=5.0)
    finally:
        grid.transport.close()
    return {k: v.numpy() for k, v in res.arrays.items()}, grid.ledger.round_summary(1)["phases"]["train"]


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def test_median_and_trimmed_mean_resist_a_poisoned_device_the_mean_does_not() -> None:
    theta = initial_head()
    honest = {k: np.mean([adapted(t, QuadraticDevice(d).center[k], STEPS, LR) for d in HONEST], axis=0)
              for k, t in theta.items()}
    results = {}
    for agg in ("mean", "median", "trimmed-mean"):
        final, train = one_round(agg)
        assert (train["replies"], train["failures"]) == (6, 0)  # the poison passed every per-reply check
        results[agg] = distance(final, honest)
    # honest-only mean as the yardstick: the mean is dragged, the robust rules stay several times closer
    assert results["mean"] > 3 * results["median"], results
    assert results["mean"] > 3 * results["trimmed-mean"], results


def test_robust_options_are_validated_with_the_parameter_template() -> None:
    with pytest.raises(StrategyParameterError, match="The 'aggregation' parameter of Reptile must be one of "
                                                     "'mean', 'median', 'trimmed-mean', 'krum'. Got 'avg' instead."):
        Reptile(aggregation="avg")
    with pytest.raises(StrategyParameterError, match=r"The 'trim' parameter of Reptile must be a float in the "
                                                     r"range \[0, 0.5\). Got 0.6 instead."):
        Reptile(aggregation="trimmed-mean", trim=0.6)
    s = build_strategy("tinymetafed", {"aggregation": "median"}, num_rounds=2)
    assert s.aggregation == "median"  # type: ignore[attr-defined]
