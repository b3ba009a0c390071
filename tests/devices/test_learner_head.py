"""MLPHead numerics: gradients against finite differences, SGD, partial training, files, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices.exceptions import HeadDivergedError, HeadWeightsError, LearnerInputError
from devices.learning.head import MLPHead


def _numeric_grads(head: MLPHead, feat: np.ndarray, target: object, eps: float = 1e-6) -> list[np.ndarray]:
    """Central differences of the one-sample loss, parameter by parameter (float64 head)."""
    grads = []
    for w in head.weights_:
        g = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            old = w[i]
            w[i] = old + eps
            up = float(head.losses(feat[None], np.asarray([target]))[0])
            w[i] = old - eps
            down = float(head.losses(feat[None], np.asarray([target]))[0])
            w[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize(("kind", "sizes", "target"), [
    ("regression", [3, 5, 4, 2], np.array([0.7, -1.3])),
    ("regression", [1, 8, 1], np.array([2.0])),
    ("classification", [4, 6, 5, 3], 2),
])
def test_gradients_match_finite_differences(kind: str, sizes: list[int], target: object) -> None:
    # Prepare: float64 so the comparison is exact to ~1e-7, biases non-zero so every term is exercised
    head = MLPHead.init(sizes, kind=kind, seed=3, dtype=np.float64)
    rng = np.random.default_rng(7)
    head.set_weights([w + rng.normal(0, 0.1, w.shape) for w in head.get_weights()])
    feat = rng.normal(0, 1, sizes[0])
    # Execute
    loss, grads = head.loss_and_grads(feat, target)
    numeric = _numeric_grads(head, feat, target)
    # Assert
    assert loss > 0
    for g, n in zip(grads, numeric, strict=True):
        assert g.shape == n.shape
        np.testing.assert_allclose(g, n, rtol=1e-5, atol=1e-7)
    assert any(np.abs(g).max() > 1e-3 for g in grads)


def test_sgd_step_is_the_gradient_step() -> None:
    head = MLPHead.init([3, 6, 2], kind="regression", seed=1, dtype=np.float64)
    feat, target = np.array([0.3, -0.8, 1.1]), np.array([1.0, -2.0])
    loss, grads = head.loss_and_grads(feat, target)
    expected = [w - 0.05 * g for w, g in zip(head.get_weights(), grads, strict=True)]
    assert head.sgd_step(feat, target, 0.05) == pytest.approx(loss)
    for w, e in zip(head.weights_, expected, strict=True):
        np.testing.assert_allclose(w, e, rtol=1e-12, atol=1e-12)


def test_sgd_on_sine_lowers_mse() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-5, 5, (200, 1)).astype(np.float32)
    y = 2.0 * np.sin(x + 0.5)
    head = MLPHead.init([1, 32, 32, 1], kind="regression", seed=0)
    before = head.evaluate(x, y)["mse"]
    for _ in range(3000):
        i = rng.integers(len(x))
        head.sgd_step(x[i], y[i], 0.01, clip_norm=10.0)
    after = head.evaluate(x, y)["mse"]
    assert after < 0.15 * before, (before, after)
    assert head.weights_[0].dtype == np.float32


def test_sgd_on_classification_learns_a_separable_task() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 3, (4, 5))
    labels = rng.integers(0, 4, 400)
    feats = centers[labels] + rng.normal(0, 0.5, (400, 5))
    head = MLPHead.init([5, 16, 4], kind="classification", seed=2)
    before = head.evaluate(feats, labels)
    for i in range(400):
        head.sgd_step(feats[i], labels[i], 0.05)
    after = head.evaluate(feats, labels)
    assert set(after) == {"loss", "accuracy"}
    assert after["loss"] < 0.3 * before["loss"]
    assert after["accuracy"] >= 0.95


@pytest.mark.parametrize("trainable", [{0}, {1}, {2}, {0, 2}])
def test_trainable_subset_leaves_other_layers_unchanged(trainable: set[int]) -> None:
    head = MLPHead.init([4, 8, 8, 3], kind="classification", seed=5)
    old = head.get_weights()
    rng = np.random.default_rng(0)
    for _ in range(20):
        head.sgd_step(rng.normal(0, 1, 4), int(rng.integers(3)), 0.1, trainable=trainable)
    for layer in range(3):
        w_same = np.array_equal(head.weights_[2 * layer], old[2 * layer])
        b_same = np.array_equal(head.weights_[2 * layer + 1], old[2 * layer + 1])
        if layer in trainable:
            assert not (w_same and b_same), f"layer {layer} should have changed"
        else:
            assert w_same and b_same, f"layer {layer} must stay frozen"


def test_partial_gradients_equal_the_full_ones_for_those_layers() -> None:
    head = MLPHead.init([3, 7, 5, 2], kind="regression", seed=9, dtype=np.float64)
    feat, target = np.array([0.5, 1.0, -1.0]), np.array([0.2, 0.4])
    _, full = head.loss_and_grads(feat, target)
    _, part = head.loss_and_grads(feat, target, layers={1})
    np.testing.assert_array_equal(part[2], full[2])
    np.testing.assert_array_equal(part[3], full[3])
    for i in (0, 1, 4, 5):
        assert not part[i].any()
    assert head.error_floats() == 7 + 5 + 2
    assert head.error_floats({1, 2}) == 5 + 2
    assert head.layer_params({2}) == 5 * 2 + 2


def test_bad_trainable_index_is_rejected() -> None:
    head = MLPHead.init([2, 3, 1], kind="regression", seed=0)
    with pytest.raises(LearnerInputError, match=r"trainable layer indices must be in 0\.\.1; got \[5\]"):
        head.sgd_step(np.zeros(2), 0.0, 0.1, trainable={5})


def test_clip_norm_bounds_each_layer_update() -> None:
    head = MLPHead.init([2, 4, 1], kind="regression", seed=0)
    old = head.get_weights()
    head.sgd_step(np.array([3.0, -2.0]), 500.0, 0.1, clip_norm=1.0)
    for layer in range(2):
        change = np.sqrt(np.sum((head.weights_[2 * layer] - old[2 * layer]) ** 2)
                         + np.sum((head.weights_[2 * layer + 1] - old[2 * layer + 1]) ** 2))
        assert change <= 0.1 * 1.0 + 1e-6


def test_divergence_raises_and_keeps_weights() -> None:
    head = MLPHead.init([2, 4, 1], kind="regression", seed=0)
    old = head.get_weights()
    with pytest.raises(HeadDivergedError, match="weights left unchanged"):
        head.sgd_step(np.array([1.0, 1.0]), 1e30, 0.1)  # (out - 1e30)^2 overflows float32
    for w, o in zip(head.weights_, old, strict=True):
        np.testing.assert_array_equal(w, o)


def test_npz_round_trip(tmp_path: Path) -> None:
    head = MLPHead.init([3, 4, 2], kind="classification", seed=0)
    path = tmp_path / "sub" / "head.npz"
    head.to_npz(path)
    with np.load(path) as npz:
        assert sorted(npz.files) == ["b0", "b1", "w0", "w1"]
    back = MLPHead.from_npz(path, kind="classification")
    for a, b in zip(back.get_weights(), head.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.layer_sizes == [3, 4, 2]
    assert back.n_params == 3 * 4 + 4 + 4 * 2 + 2
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind


def test_positional_npz_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "head.npz"
    np.savez(path, np.ones((2, 3), np.float32), np.zeros(3, np.float32), np.ones((3, 1), np.float32), np.zeros(1))
    assert MLPHead.from_npz(path, kind="regression").layer_sizes == [2, 3, 1]


def test_bad_head_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(HeadWeightsError, match=r"missing\.npz: head file not found"):
        MLPHead.from_npz(tmp_path / "missing.npz", kind="regression")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(HeadWeightsError, match=r"garbage\.npz: not a head\.npz"):
        MLPHead.from_npz(garbage, kind="regression")
    names = tmp_path / "names.npz"
    np.savez(names, kernel=np.ones((2, 2)))
    with pytest.raises(HeadWeightsError, match=r"names\.npz: expected arrays named w0, b0"):
        MLPHead.from_npz(names, kind="regression")
    chain = tmp_path / "chain.npz"
    np.savez(chain, w0=np.ones((2, 3)), b0=np.zeros(3), w1=np.ones((4, 1)), b1=np.zeros(1))
    with pytest.raises(HeadWeightsError, match=r"chain\.npz: .*w1 has 4 inputs but the previous layer has 3 outputs"):
        MLPHead.from_npz(chain, kind="regression")


def test_constructor_and_set_weights_validate() -> None:
    with pytest.raises(HeadWeightsError, match="head kind must be one of regression, classification"):
        MLPHead([np.ones((1, 1)), np.zeros(1)], kind="ranking")
    with pytest.raises(HeadWeightsError, match="even, non-zero number of arrays"):
        MLPHead([np.ones((1, 1))], kind="regression")
    with pytest.raises(HeadWeightsError, match=r"b0 must have shape \(2,\)"):
        MLPHead([np.ones((1, 2)), np.zeros(3)], kind="regression")
    head = MLPHead.init([2, 3, 1], kind="regression", seed=0)
    ws = head.get_weights()
    with pytest.raises(HeadWeightsError, match=r"head expects 4 arrays \[w0, b0, \.\.\.\]; got 3"):
        head.set_weights(ws[:3])
    with pytest.raises(HeadWeightsError, match=r"head array w1 must have shape \(3, 1\); got \(3, 2\)"):
        head.set_weights([ws[0], ws[1], np.ones((3, 2)), ws[3]])
    bad = [w.copy() for w in ws]
    bad[1][0] = np.nan
    with pytest.raises(HeadWeightsError, match="head array b0 contains NaN or inf"):
        head.set_weights(bad)
    for w, o in zip(head.weights_, ws, strict=True):  # a refused update changes nothing
        np.testing.assert_array_equal(w, o)


def test_bad_features_and_targets() -> None:
    reg = MLPHead.init([2, 3, 1], kind="regression", seed=0)
    with pytest.raises(LearnerInputError, match=r"one feature vector of 2 values; got shape \(3,\)"):
        reg.sgd_step(np.zeros(3), 0.0, 0.1)
    with pytest.raises(LearnerInputError, match="features contain NaN"):
        reg.predict(np.array([[0.0, np.nan]]))
    clf = MLPHead.init([2, 3, 4], kind="classification", seed=0)
    with pytest.raises(LearnerInputError, match=r"class labels must be in 0\.\.3; got 4\.\.4"):
        clf.sgd_step(np.zeros(2), 4, 0.1)
    with pytest.raises(LearnerInputError, match="must be 1 integer label"):
        clf.sgd_step(np.zeros(2), 1.5, 0.1)
    with pytest.raises(LearnerInputError, match="learning rate must be a positive number"):
        clf.sgd_step(np.zeros(2), 1, -0.1)
