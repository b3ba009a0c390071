"""The few-shot protocol: episodes of held-out devices, the device's own adaptation, selection, statistics."""

from __future__ import annotations

import numpy as np
import pytest

from devices.learning.adapt import AdaptConfig
from federation.fewshot import (
    curves,
    episodes,
    head_sizes,
    mean_ci,
    paired_ci,
    procedure_grid,
    scratch_head,
    select_procedure,
)
from federation.session import initial_parameters
from firmware_models.usecases import get_use_case


def test_validation_and_test_episodes_are_different_held_out_devices() -> None:
    test = episodes("sine", 5, shots=10, queries=20, seed=0)
    val = episodes("sine", 3, shots=10, queries=20, seed=0, first=5)
    assert len({e.device_id for e in test} | {e.device_id for e in val}) == 8
    assert all(e.shots_x.shape == (10, 1) and e.query_x.shape == (20, 1) for e in test)
    heldout = get_use_case("sine").devices("heldout", 8, samples_per_device=30, seed=0)
    np.testing.assert_array_equal(val[0].shots_x, heldout[5].x[:10])  # exactly the use case's held-out stream


def test_curve_k0_is_the_unadapted_head_and_adaptation_helps() -> None:
    head = initial_parameters("sine", seed=1)
    eps = episodes("sine", 6, shots=10, queries=40, seed=2)
    c = curves(head, eps, kind="regression", config=AdaptConfig(steps=10, lr=0.01, step="batch"))
    assert c.value.shape == (6, 11) and np.all(np.isfinite(c.value))
    from devices.learning.head import MLPHead

    raw = [MLPHead(list(head.values()), kind="regression").evaluate(e.query_x, e.query_y)["mse"] for e in eps]
    np.testing.assert_allclose(c.value[:, 0], raw, rtol=1e-6)
    assert c.value[:, 10].mean() < c.value[:, 0].mean()
    again = curves(head, eps, kind="regression", config=AdaptConfig(steps=10, lr=0.01, step="batch"))
    np.testing.assert_array_equal(c.value, again.value)  # deterministic


def test_selection_picks_the_best_validation_procedure_and_its_step_count() -> None:
    head = initial_parameters("sine", seed=1)
    val = episodes("sine", 6, shots=10, queries=40, seed=3)
    grid = procedure_grid(lrs=[1e-6, 0.01], lambdas=[None], steps=5, kinds=["batch"])
    chosen, table = select_procedure(head, val, kind="regression", grid=grid, max_steps=5)
    assert chosen.lr == 0.01 and chosen.steps >= 1          # a step size that cannot move loses
    assert len(table) == 2 and min(r["value"] for r in table) == pytest.approx(
        curves(head, val, kind="regression", config=AdaptConfig(steps=5, lr=0.01)).value.mean(axis=0).min())
    forced, _ = select_procedure(head, val, kind="regression", max_steps=2, require_readout=True,
                                 grid=procedure_grid(lrs=[0.01], lambdas=[None, 1.0], steps=2, kinds=["batch"]))
    assert forced.readout_lambda == 1.0


def test_intervals_and_paired_differences() -> None:
    m, (lo, hi) = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and lo < 2.5 < hi and hi - 2.5 == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-3)
    d, (dlo, dhi) = paired_ci([2.0, 3.0, 4.0], [1.0, 2.0, 3.1])
    assert d == pytest.approx(0.9667, rel=1e-3) and dlo < d < dhi < 1.1


def test_scratch_head_matches_sizes() -> None:
    head = initial_parameters("sine")
    sizes = head_sizes(head)
    assert sizes == [1, 32, 32, 1]
    assert [w.shape for w in scratch_head("sine", sizes=sizes, seed=0)] == [head[k].shape for k in head]
