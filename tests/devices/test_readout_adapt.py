"""The few-shot procedure of a device: ridge readout, full-batch steps, `adapt`, and their RAM."""

from __future__ import annotations

import numpy as np
import pytest

from devices.exceptions import HeadDivergedError, LearnerInputError
from devices.learning.adapt import AdaptConfig, adapt, adaptation_floats
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.learning.readout import RidgeReadout, cholesky_lower, fit_readout, last_layer_inputs, readout_floats
from firmware_models.memory_budget import account


def _ridge_reference(a: np.ndarray, y: np.ndarray, w0: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The documented formula, solved in float64 by numpy: (Ã^T Ã + Λ) Θ = Ã^T Y + Λ [W0; 0]."""
    aug = np.c_[a, np.ones(len(a))].astype(np.float64)
    reg = np.diag([lam] * a.shape[1] + [0.0])
    theta = np.linalg.solve(aug.T @ aug + reg, aug.T @ y + reg @ np.r_[w0, np.zeros((1, w0.shape[1]))])
    return theta[:-1], theta[-1]


@pytest.mark.parametrize(("n", "h", "m", "lam"), [(10, 32, 1, 0.3), (25, 32, 5, 3.0), (3, 8, 2, 1e-2)])
def test_readout_solves_the_documented_ridge_problem(n: int, h: int, m: int, lam: float) -> None:
    rng = np.random.default_rng(n)
    a = np.maximum(rng.normal(size=(n, h)), 0).astype(np.float32)  # ReLU activations: many exact zeros
    y = rng.normal(size=(n, m)).astype(np.float32)
    w0 = rng.normal(size=(h, m)).astype(np.float32)
    solver = RidgeReadout(w0, lam)
    for i in range(n):  # streamed one shot at a time, as a device does
        solver.add(a[i:i + 1], y[i:i + 1])
    w, b = solver.solve()
    w_ref, b_ref = _ridge_reference(a, y, w0, lam)
    np.testing.assert_allclose(w, w_ref, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(b, b_ref, rtol=2e-3, atol=2e-4)


def test_cholesky_is_exact_and_refuses_an_indefinite_system() -> None:
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    g = (m @ m.T + 6 * np.eye(6)).astype(np.float32)
    low = cholesky_lower(g)
    assert np.allclose(np.triu(low, 1), 0)
    np.testing.assert_allclose(low @ low.T, g, rtol=1e-5, atol=1e-4)
    with pytest.raises(LearnerInputError, match="positive definite"):
        cholesky_lower(np.diag([1.0, -1.0]).astype(np.float32))


def test_large_lambda_keeps_the_prior_and_the_bias_is_free() -> None:
    head = MLPHead.init([1, 16, 1], kind="regression", seed=2)
    prior = head.get_weights()
    x = np.linspace(-3, 3, 10, dtype=np.float32)[:, None]
    fit_readout(head, x, np.full((10, 1), 7.0, np.float32), 1e6)
    np.testing.assert_allclose(head.weights_[2], prior[2], atol=1e-3)   # W pinned to the prior
    np.testing.assert_array_equal(head.weights_[0], prior[0])          # the layers below are untouched
    pred = head.predict(x)
    assert np.abs(pred - 7.0).mean() < 1.0                             # the unregularised bias absorbs the level


def test_classification_readout_separates_shots_of_linearly_separable_classes() -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 4, size=(5, 8))
    feats = np.concatenate([c + rng.normal(0, 0.3, size=(5, 8)) for c in centers]).astype(np.float32)
    labels = np.repeat(np.arange(5), 5)
    head = MLPHead.init([8, 5], kind="classification", seed=0)
    fit_readout(head, feats, labels, 0.1)
    assert head.evaluate(feats, labels)["accuracy"] == 1.0


def test_batch_step_is_the_mean_of_the_per_sample_gradients() -> None:
    rng = np.random.default_rng(4)
    head = MLPHead.init([3, 6, 5, 2], kind="regression", seed=1, dtype=np.float64)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    grads = [head.loss_and_grads(x[i], y[i])[1] for i in range(7)]
    expected = [w - 0.1 * np.mean([g[j] for g in grads], axis=0) for j, w in enumerate(head.get_weights())]
    loss_before = float(np.mean(head.losses(x, y)))
    assert head.batch_sgd_step(x, y, 0.1) == pytest.approx(loss_before)
    for w, e in zip(head.weights_, expected, strict=True):
        np.testing.assert_allclose(w, e, rtol=1e-10, atol=1e-12)


def test_batch_step_clips_each_layer_and_refuses_divergence() -> None:
    head = MLPHead.init([1, 8, 1], kind="regression", seed=2)
    x = np.linspace(-5, 5, 10, dtype=np.float32)[:, None]
    before = head.get_weights()
    head.batch_sgd_step(x, 100 * np.sin(x), 1.0, clip_norm=0.5)
    for layer in range(2):
        step = np.sqrt(sum(np.sum((head.weights_[2 * layer + j] - before[2 * layer + j]) ** 2) for j in (0, 1)))
        assert step <= 0.5 + 1e-5
    saved = head.get_weights()
    with pytest.raises(HeadDivergedError):
        head.batch_sgd_step(x, np.full((10, 1), 1e30, np.float32), 1e30)
    for w, s in zip(head.weights_, saved, strict=True):
        np.testing.assert_array_equal(w, s)


@pytest.mark.parametrize("step", ["batch", "sample"])
def test_adapt_reports_every_step_and_improves_the_shots(step: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(-5, 5, (10, 1)).astype(np.float32)
    y = (2.0 * np.sin(x + 0.5)).astype(np.float32)
    learner = OnlineLearner(MLPHead.init([1, 32, 32, 1], kind="regression", seed=3), None, seed=0)
    seen: list[int] = []
    lam = 1.0 if step == "batch" else None
    out = adapt(learner, x, y, AdaptConfig(steps=12, lr=0.005, step=step, readout_lambda=lam),  # type: ignore[arg-type]
                on_step=seen.append)
    assert seen == list(range(13))
    assert out.steps_taken == 12 and not out.diverged
    assert out.loss_after < out.loss_before


def test_adapt_stops_at_divergence_and_keeps_the_last_good_head() -> None:
    x = np.linspace(-5, 5, 10, dtype=np.float32)[:, None]
    learner = OnlineLearner(MLPHead.init([1, 8, 1], kind="regression", seed=3), None, seed=0)
    seen: list[int] = []
    out = adapt(learner, x, np.full((10, 1), 1e30, np.float32), AdaptConfig(steps=5, lr=1e30, clip_norm=None),
                on_step=seen.append)
    assert out.diverged and out.steps_taken == 0 and seen == [0, 1, 2, 3, 4, 5]
    assert all(np.all(np.isfinite(w)) for w in learner.head.weights_)


@pytest.mark.parametrize("bad", [{"steps": -1}, {"lr": 0.0}, {"step": "epoch"}, {"readout_lambda": -1.0}])
def test_bad_adapt_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(LearnerInputError):
        AdaptConfig(**bad)  # type: ignore[arg-type]


def test_readout_and_batch_steps_are_in_the_memory_report() -> None:
    sizes = [1, 32, 32, 1]
    assert readout_floats(32, 1) == 33 * 33 + 33
    assert adaptation_floats(sizes, AdaptConfig(steps=0, readout_lambda=1.0)) == 33 * 33 + 33
    assert adaptation_floats(sizes, AdaptConfig(steps=5, step="batch")) == 1153   # one accumulated gradient
    assert adaptation_floats(sizes, AdaptConfig(steps=5, step="sample")) == 0
    learner = OnlineLearner(MLPHead.init(sizes, kind="regression", seed=0), None)
    plain = learner.memory_report()
    rep = learner.memory(adaptation_floats=1122, federated_floats=10).as_dict()
    assert rep["adaptation"] == 4 * 1122 and rep["federated"] == 40
    assert rep["total"] == plain["total"] + 4 * 1122 + 40
    direct = account(layer_sizes=sizes, gradient_floats=65, arena=0, backbone_bytes=0, sample_bytes=4,
                     adaptation_floats=1122)
    assert direct.ram == direct.arena + direct.head_weights + direct.gradients + direct.activations + \
        direct.buffer + direct.adaptation


def test_last_layer_inputs_are_the_hidden_activations() -> None:
    head = MLPHead.init([2, 4, 3], kind="classification", seed=0)
    x = np.ones((2, 2), np.float32)
    np.testing.assert_allclose(last_layer_inputs(head, x), np.maximum(x @ head.weights_[0] + head.weights_[1], 0))
