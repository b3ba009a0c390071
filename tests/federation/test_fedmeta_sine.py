"""Tuned Reptile (the strategy's documented defaults) beats a fresh head on sine few-shot, in-process.

Small and seeded: 60 meta-iterations of 4 simulated devices with the real device learner
(`OnlineLearner.train`, batch-1) and the server's one `reptile_update`; judged by the same
few-shot harness as `benchmarks.fedmeta` (10 shots, 5 full-batch steps) on 20 held-out devices.
"""

from __future__ import annotations

import numpy as np
import pytest

from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from federation.fewshot import batch_sgd_step, fewshot_curve, scratch_head
from federation.meta_update import reptile_update
from federation.session import initial_parameters
from federation.strategies import Reptile
from firmware_models.usecases import get_use_case


def _reptile(rounds: int, per_round: int, seed: int = 0) -> list[np.ndarray]:
    strat = Reptile(num_rounds=rounds)
    uc = get_use_case("sine")
    devs = uc.devices("train", 40, samples_per_device=64, seed=seed)
    theta = list(initial_parameters("sine", seed=seed).values())
    rng = np.random.default_rng(seed)
    for rnd in range(1, rounds + 1):
        phis = []
        for j in rng.choice(len(devs), per_round, replace=False):
            head = MLPHead([w.copy() for w in theta], kind="regression")
            OnlineLearner(head, None, seed=rnd * 1000 + int(j)).train(devs[j].x, devs[j].y, strat.local_steps,
                                                                       lr=strat.local_lr)
            phis.append(head.get_weights())
        theta = reptile_update(theta, phis, strat.epsilon_at(rnd))
    return theta


def test_tuned_reptile_beats_scratch_on_sine_fewshot() -> None:
    theta = _reptile(rounds=60, per_round=4)
    meta = fewshot_curve(theta, task="sine", shots=10, max_steps=5, n_devices=20, seed=3)
    scratch = fewshot_curve(scratch_head("sine", sizes=[1, 32, 32, 1], seed=5), task="sine", shots=10,
                            max_steps=5, n_devices=20, seed=3)
    assert meta["loss_mean"][5] < 0.6 * scratch["loss_mean"][5]
    assert meta["loss_mean"][5] < meta["loss_mean"][0]  # the meta-learned head is made to be adapted


def test_batch_step_follows_the_gradient_of_the_mean_loss() -> None:
    uc = get_use_case("sine")
    dev = uc.devices("heldout", 1, samples_per_device=10, seed=1)[0]
    head = MLPHead(scratch_head("sine", sizes=[1, 8, 8, 1], seed=2), kind="regression", dtype=np.float64)
    x, y = dev.x.astype(np.float64), dev.y.astype(np.float64)
    before = head.get_weights()
    lr = 1e-4
    loss0 = batch_sgd_step(head, x, y, lr, clip_norm=None)
    assert loss0 == pytest.approx(float(np.mean(head.__class__(before, kind="regression",
                                                               dtype=np.float64).losses(x, y))))
    step_sq = sum(float(np.sum((a - b) ** 2)) for a, b in zip(head.get_weights(), before, strict=True))
    loss1 = float(np.mean(head.losses(x, y)))
    # first order: L(θ − lr g) ≈ L(θ) − lr ‖g‖² and ‖Δθ‖² = lr² ‖g‖²
    assert loss1 == pytest.approx(loss0 - step_sq / lr, rel=1e-3)


def test_batch_step_clip_bounds_each_layer_update() -> None:
    uc = get_use_case("sine")
    dev = uc.devices("heldout", 1, samples_per_device=10, seed=1)[0]
    head = MLPHead(scratch_head("sine", sizes=[1, 8, 1], seed=2), kind="regression")
    before = head.get_weights()
    batch_sgd_step(head, dev.x, dev.y * 100, 1.0, clip_norm=0.5)
    for layer in range(2):
        dw = head.weights_[2 * layer] - before[2 * layer]
        db = head.weights_[2 * layer + 1] - before[2 * layer + 1]
        assert np.sqrt(np.sum(dw ** 2) + np.sum(db ** 2)) <= 0.5 + 1e-5
