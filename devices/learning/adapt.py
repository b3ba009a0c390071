"""Few-shot adaptation of a new device: the one procedure devices run and the evaluation judges.

A device that joins the fleet gets a meta-learned head and K labelled shots. It then

1. optionally re-fits the head's last layer in closed form on the shots (`readout_lambda`; the
   ridge readout of `devices.learning.readout`: TinyMetaFed's local layer is never meta-learned,
   so a device must reconstruct it before the shared layers are of any use);
2. takes `steps` SGD steps on the shots, all layers, each of kind `step`:

   * ``"batch"``: one step on the mean loss of all K shots (`MLPHead.batch_sgd_step`; the reading
     of "k gradient steps" in MAML and Reptile's few-shot sine benchmark);
   * ``"sample"``: one batch-1 online step on one shot (`MLPHead.sgd_steps`), visiting the shots
     in shuffled passes, which is how a device trains in a federated round.

Every step clips each layer's gradient to `clip_norm`, as the device learner does. A step that
would make the head non-finite leaves it unchanged and ends the adaptation (a device keeps the
last good head; `AdaptResult.diverged` says so).

The agent's ``task.adapt`` handler and `federation.fewshot` both call `adapt`, so a method is
judged with the procedure its devices run; the benchmark picks `steps`, `lr`, `step` and
`readout_lambda` per method on validation devices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from devices.exceptions import HeadDivergedError, LearnerInputError
from devices.learning.learner import OnlineLearner
from devices.learning.readout import fit_readout
from firmware_models.memory_budget import adaptation_floats as _adaptation_floats

StepKind = Literal["batch", "sample"]
STEP_KINDS: tuple[StepKind, ...] = ("batch", "sample")
DEFAULT_CLIP_NORM = 10.0


@dataclass(frozen=True)
class AdaptConfig:
    """How a new device adapts (what the ``task.adapt`` config carries).

    Parameters
    ----------
    steps : int
        SGD steps after the optional readout (0: readout only, or nothing).
    lr : float
        Learning rate of those steps.
    step : {"batch", "sample"}
        What one step is (see the module docstring).
    readout_lambda : float or None
        Ridge lambda of the closed-form last-layer fit before the steps; None skips it.
    clip_norm : float or None
        Per-layer gradient-norm clip.
    """

    steps: int = 10
    lr: float = 0.01
    step: StepKind = "batch"
    readout_lambda: float | None = None
    clip_norm: float | None = DEFAULT_CLIP_NORM

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise LearnerInputError(f"adaptation steps must be an integer >= 0; got {self.steps!r}")
        if isinstance(self.lr, bool) or not (np.isfinite(self.lr) and self.lr > 0):
            raise LearnerInputError(f"adaptation lr must be a positive number; got {self.lr!r}")
        if self.step not in STEP_KINDS:
            raise LearnerInputError(f"adaptation step must be one of {', '.join(STEP_KINDS)}; got {self.step!r}")
        lam = self.readout_lambda
        if lam is not None and (isinstance(lam, bool) or not (np.isfinite(lam) and lam > 0)):
            raise LearnerInputError(f"readout lambda must be a positive number; got {lam!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain settings for reports."""
        return {"steps": int(self.steps), "lr": float(self.lr), "step": self.step,
                "readout_lambda": None if self.readout_lambda is None else float(self.readout_lambda),
                "clip_norm": self.clip_norm}

    @classmethod
    def from_task_config(cls, config: Mapping[str, Any], *, default_lr: float) -> AdaptConfig:
        """Read ``steps``, ``lr``, ``adapt-step`` and ``readout-lambda`` of a ``task.adapt`` config."""
        from devices.wire.keys import ConfigKey

        lam = config.get(ConfigKey.READOUT_LAMBDA)
        return cls(steps=int(config[ConfigKey.STEPS]), lr=float(config.get(ConfigKey.LR, default_lr)),
                   step=str(config.get(ConfigKey.ADAPT_STEP, "sample")),  # type: ignore[arg-type]
                   readout_lambda=None if lam is None else float(lam))


def adaptation_floats(layer_sizes: list[int], config: AdaptConfig) -> int:
    """Floats `adapt` holds besides the learner's own (memory report ``adaptation``)."""
    return _adaptation_floats(list(layer_sizes), readout=config.readout_lambda is not None,
                              batch_steps=config.step == "batch" and config.steps > 0)


@dataclass
class AdaptResult:
    """What an adaptation did: shots, steps taken, shot loss before/after, divergence, each step's loss."""

    shots: int
    steps_taken: int
    loss_before: float
    loss_after: float
    diverged: bool = False
    step_losses: list[float] = field(default_factory=list)
    """The loss each step saw before it (batch: the shots' mean loss; sample: the one sample's)."""


StepCallback = Callable[[int], None]
"""Called with k after the readout (k = 0) and after each step k = 1..steps (the evaluation's curve)."""


def adapt(learner: OnlineLearner, x_shots: np.ndarray, y_shots: np.ndarray, config: AdaptConfig, *,
          on_step: StepCallback | None = None) -> AdaptResult:
    """Adapt `learner.head` to the shots with `config` (changes the head in place).

    Parameters
    ----------
    learner : OnlineLearner
        The device's learner (features through its frozen backbone; its rng orders sample steps).
    x_shots, y_shots : np.ndarray
        The K raw shots and their targets.
    config : AdaptConfig
    on_step : callable, optional
        Observes the head after the readout and after every step (evaluation curves).
    """
    head = learner.head
    feats = learner.features(x_shots)
    y = np.asarray(y_shots)
    if len(y) != len(feats) or len(feats) == 0:
        raise LearnerInputError(f"adaptation needs K >= 1 shots with one target each; got {len(feats)} / {len(y)}")
    with np.errstate(over="ignore", invalid="ignore"):
        before = float(np.mean(head.losses(feats, y)))
    if config.readout_lambda is not None:
        fit_readout(head, feats, y, config.readout_lambda)
    if on_step is not None:
        on_step(0)
    order = np.concatenate([learner.rng.permutation(len(feats)) for _ in range(-(-config.steps // len(feats)))]) \
        if config.step == "sample" and config.steps else np.zeros(0, np.intp)
    taken, diverged, losses = 0, False, []
    for k in range(1, config.steps + 1):
        try:
            if config.step == "batch":
                losses.append(float(head.batch_sgd_step(feats, y, config.lr, clip_norm=config.clip_norm)))
            else:
                losses.append(float(head.sgd_steps(feats, y, order[k - 1:k], config.lr, clip_norm=config.clip_norm)[0]))
        except HeadDivergedError:
            diverged = True
            break
        taken = k
        if on_step is not None:
            on_step(k)
    if diverged and on_step is not None:  # the head stays as it was: later points repeat the last good one
        for k in range(taken + 1, config.steps + 1):
            on_step(k)
    learner.samples_seen_ += taken if config.step == "sample" else taken * len(feats)
    with np.errstate(over="ignore", invalid="ignore"):
        after = float(np.mean(head.losses(feats, y)))
    return AdaptResult(shots=int(len(feats)), steps_taken=taken, loss_before=before, loss_after=after,
                       diverged=diverged, step_losses=losses[:taken])


__all__ = ["DEFAULT_CLIP_NORM", "STEP_KINDS", "AdaptConfig", "AdaptResult", "StepKind", "adapt", "adaptation_floats"]
