"""Few-shot harness: real OnlineLearner on held-out sine devices."""

from __future__ import annotations

import numpy as np

from federation.fewshot import fewshot_curve, head_sizes, scratch_head
from federation.session import initial_parameters


def test_curve_shape_and_adaptation_lowers_loss() -> None:
    head = initial_parameters("sine", seed=1)
    curve = fewshot_curve(head, task="sine", shots=10, max_steps=10, lr=0.02, n_devices=5, eval_samples=40)
    assert curve["steps"] == list(range(11))
    assert len(curve["loss_mean"]) == 11 and all(np.isfinite(curve["loss_mean"]))
    assert curve["loss_mean"][10] < curve["loss_mean"][0]  # ten online steps on the shots help on held-out data


def test_k0_is_the_unadapted_head_and_is_deterministic() -> None:
    head = initial_parameters("sine", seed=2)
    a = fewshot_curve(head, task="sine", shots=5, max_steps=3, n_devices=3, eval_samples=20, seed=4)
    b = fewshot_curve(head, task="sine", shots=5, max_steps=3, n_devices=3, eval_samples=20, seed=4)
    assert a == b
    zero = fewshot_curve({k: np.zeros_like(v) for k, v in head.items()}, task="sine", shots=5, max_steps=0,
                         n_devices=3, eval_samples=20, seed=4)
    assert zero["loss_mean"][0] > 0.5  # predicting 0 for A sin(x + φ) costs about A²/2


def test_scratch_head_matches_sizes() -> None:
    head = initial_parameters("sine")
    sizes = head_sizes(head)
    assert sizes == [1, 32, 32, 1]
    assert [w.shape for w in scratch_head("sine", sizes=sizes, seed=0)] == [head[k].shape for k in head]
