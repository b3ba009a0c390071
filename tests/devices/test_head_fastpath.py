"""The batched SGD loop (`MLPHead.sgd_steps`): same math as single steps, one finiteness check, rollback."""

from __future__ import annotations

import numpy as np
import pytest

from devices.exceptions import HeadDivergedError, LearnerInputError
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner


@pytest.mark.parametrize(("kind", "sizes"), [("regression", [2, 6, 5, 2]), ("classification", [3, 7, 4])])
@pytest.mark.parametrize("which", ["all", "last", "first-and-last"])
def test_sgd_steps_equal_repeated_gradient_steps(kind: str, sizes: list[int], which: str) -> None:
    # Prepare: float64, reference = explicit loss_and_grads + clip rule, step by step
    last = len(sizes) - 2
    trainable = {"all": None, "last": {last}, "first-and-last": {0, last}}[which]
    rng = np.random.default_rng(5)
    feats = rng.normal(0, 1, (7, sizes[0]))
    targets = rng.normal(0, 2, (7, sizes[-1])) if kind == "regression" else rng.integers(0, sizes[-1], 7)
    order = rng.integers(0, 7, 20)
    fast = MLPHead.init(sizes, kind=kind, seed=2, dtype=np.float64)
    ref = fast.copy()
    clip = 0.5
    expected_losses = []
    for i in order:
        loss, grads = ref.loss_and_grads(feats[i], targets[i], layers=trainable)
        expected_losses.append(loss)
        new = []
        for layer in range(ref.n_layers):
            gw, gb = grads[2 * layer], grads[2 * layer + 1]
            norm = np.sqrt(np.sum(gw * gw) + np.sum(gb * gb))
            scale = 0.1 * min(1.0, clip / norm) if norm > 0 else 0.1
            new += [ref.weights_[2 * layer] - scale * gw, ref.weights_[2 * layer + 1] - scale * gb]
        ref.set_weights(new)
    # Execute
    losses = fast.sgd_steps(feats, targets, order, 0.1, trainable=trainable, clip_norm=clip)
    # Assert
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-10)
    for w, e in zip(fast.weights_, ref.weights_, strict=True):
        np.testing.assert_allclose(w, e, rtol=1e-10, atol=1e-12)
    assert not all(np.array_equal(w, o) for w, o in zip(fast.weights_, MLPHead.init(sizes, kind=kind, seed=2,
                                                                                      dtype=np.float64).weights_,
                                                        strict=True))


def test_divergence_mid_loop_restores_weights_before_the_call() -> None:
    # Prepare: a sane first sample, then one whose target overflows float32 in the loss
    head = MLPHead.init([2, 4, 1], kind="regression", seed=0)
    before = head.get_weights()
    feats = np.array([[0.5, -0.5], [1.0, 1.0]], np.float32)
    targets = np.array([[0.3], [1e30]], np.float32)
    # Execute / Assert
    with pytest.raises(HeadDivergedError, match="weights left unchanged"):
        head.sgd_steps(feats, targets, np.array([0, 0, 1, 0]), 0.1)
    for w, o in zip(head.weights_, before, strict=True):
        np.testing.assert_array_equal(w, o)


def test_learner_train_raises_on_divergence_and_keeps_head() -> None:
    head = MLPHead.init([1, 8, 1], kind="regression", seed=0)
    learner = OnlineLearner(head, None, lr=1e6, seed=0, clip_norm=None)  # absurd rate: blows up in a few steps
    before = head.get_weights()
    x = np.linspace(-3, 3, 16, dtype=np.float32)[:, None]
    with pytest.raises(HeadDivergedError):
        learner.train(x, 5 * np.sin(x), 200)
    for w, o in zip(head.weights_, before, strict=True):
        np.testing.assert_array_equal(w, o)


def test_sgd_steps_rejects_bad_order() -> None:
    head = MLPHead.init([1, 3, 1], kind="regression", seed=0)
    with pytest.raises(LearnerInputError, match="step order must index the 2 samples"):
        head.sgd_steps(np.zeros((2, 1)), np.zeros((2, 1)), np.array([0, 2]), 0.1)
