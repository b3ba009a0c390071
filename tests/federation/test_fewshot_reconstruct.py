"""Few-shot judging of TinyMetaFed heads: new devices re-fit their local layers first, shared layers frozen."""

from __future__ import annotations

import numpy as np
import pytest

from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from federation.fewshot import fewshot_curve, reconstruct_local
from federation.session import initial_parameters
from firmware_models.usecases import get_use_case


@pytest.mark.parametrize("step", ["batch", "sample"])
def test_reconstruction_changes_only_the_local_layers(step: str) -> None:
    # Prepare
    dev = get_use_case("sine").devices("heldout", 1, samples_per_device=10, seed=2)[0]
    head = MLPHead(list(initial_parameters("sine", seed=1).values()), kind="regression")
    before = head.get_weights()
    learner = OnlineLearner(head, None, seed=0)
    # Execute
    reconstruct_local(head, learner, (dev.x, dev.y), layers={2}, steps=20, lr=0.05, step=step)  # type: ignore[arg-type]
    # Assert
    after = head.get_weights()
    for i in range(4):
        np.testing.assert_array_equal(after[i], before[i])
    assert not np.array_equal(after[4], before[4])


def test_reconstruction_is_applied_before_step_zero_and_recorded() -> None:
    # Prepare: shared layers from a seed, last layer scrambled (the server's never-trained copy)
    head = initial_parameters("sine", seed=3)
    head["w2"] = np.random.default_rng(0).normal(0, 3, head["w2"].shape).astype(np.float32)
    kwargs = {"task": "sine", "shots": 10, "max_steps": 2, "n_devices": 6, "eval_samples": 40, "seed": 1}
    # Execute
    plain = fewshot_curve(head, **kwargs)
    rec = fewshot_curve(head, reconstruct_layers=[-1], reconstruct_steps=30, **kwargs)
    # Assert: fitting the last layer to the shots first lowers the unadapted held-out loss
    assert rec["loss_mean"][0] < 0.7 * plain["loss_mean"][0]
    assert (rec["reconstruct_layers"], rec["reconstruct_steps"]) == ([2], 30)
    assert (plain["reconstruct_layers"], plain["reconstruct_steps"]) == ([], 0)


@pytest.mark.parametrize(("layers", "steps", "match"), [
    ([0, 1, 2], 5, "leave one shared"),
    ([-1, 2], 5, "distinct layers"),
    ([7], 5, "distinct layers"),
    ([-1], -1, "reconstruct_steps must be an integer >= 0"),
])
def test_bad_reconstruction_settings_are_refused(layers: list[int], steps: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fewshot_curve(initial_parameters("sine"), task="sine", max_steps=1, n_devices=1, eval_samples=5,
                      reconstruct_layers=layers, reconstruct_steps=steps)
