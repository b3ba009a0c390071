"""Concept drift on a device: drifting sample streams and a prequential recovery measurement.

A device deployed for months sees its world change: the sine it regresses shifts phase, the room it
watches gets a new occupancy schedule. TinyOL's claim is that a head that keeps learning online
recovers. `run_drift` measures exactly that on any `OnlineLearner` and stream: the prequential
loss (scored before each sample is learnt) just before the drift, right after it, at the end, and
how many samples recovery took.

Streams are plain iterators of ``(x, y)`` single samples (no batch axis), so any data source
(a sensor, a CSV replay, another use case) can be plugged in. Run the demo with
``python -m benchmarks.drift`` (numpy only, no TensorFlow).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner

Sample = tuple[np.ndarray, Any]


def phase_step(before: float, after: float, at: int) -> Callable[[int], float]:
    """A phase that jumps from `before` to `after` at sample `at` (abrupt drift)."""
    return lambda t: before if t < at else after


def phase_ramp(before: float, after: float, start: int, length: int) -> Callable[[int], float]:
    """A phase that moves linearly from `before` to `after` over `length` samples from `start` (gradual drift)."""
    def phase(t: int) -> float:
        frac = min(max((t - start) / max(length, 1), 0.0), 1.0)
        return before + frac * (after - before)
    return phase


def sine_stream(n: int, *, phase: Callable[[int], float], amplitude: float = 1.0, x_range: float = 5.0,
                noise: float = 0.0, seed: int = 0) -> Iterator[Sample]:
    """``y = amplitude * sin(x + phase(t)) (+ noise)`` with ``x ~ U(-x_range, x_range)``, one sample per t."""
    rng = np.random.default_rng(seed)
    for t in range(n):
        x = rng.uniform(-x_range, x_range, 1).astype(np.float32)
        y = amplitude * np.sin(x + phase(t)) + (rng.normal(0.0, noise, 1) if noise else 0.0)
        yield x, np.asarray(y, dtype=np.float32)


def presence_stream(n: int, *, schedule: Callable[[int], tuple[float, float]], co2_signal: float = 0.25,
                    noise: float = 0.35, seed: int = 0) -> Iterator[Sample]:
    """A room's occupancy from time of day and a noisy CO2 reading (2 classes: empty 0, occupied 1).

    Each sample is a reading at a random time of day; the room is occupied when the hour lies in
    ``schedule(t) = (start_hour, end_hour)``. Features: ``[sin(2 pi h / 24), cos(2 pi h / 24), co2]``
    with CO2 only weakly tied to occupancy, so the head must learn the schedule, and a schedule
    change (a new tenant, daylight saving, shift work) is a real concept drift.
    """
    rng = np.random.default_rng(seed)
    for t in range(n):
        hour = rng.uniform(0.0, 24.0)
        start, end = schedule(t)
        occupied = int(start <= hour < end) if start <= end else int(hour >= start or hour < end)
        angle = 2.0 * math.pi * hour / 24.0
        co2 = co2_signal * occupied + rng.normal(0.0, noise)
        yield np.array([math.sin(angle), math.cos(angle), co2], dtype=np.float32), occupied


def schedule_step(before: tuple[float, float], after: tuple[float, float],
                  at: int) -> Callable[[int], tuple[float, float]]:
    """Occupancy hours that change from `before` to `after` at sample `at`."""
    return lambda t: before if t < at else after


@dataclass(frozen=True)
class DriftReport:
    """Prequential losses around a drift (all means over `window` samples).

    Attributes
    ----------
    before : float
        Mean loss over the `window` samples just before the drift.
    right_after : float
        Mean loss over the `window` samples just after the drift.
    recovered : float
        Mean loss over the last `window` samples of the stream.
    recovery_samples : int or None
        Samples after the drift until the windowed loss is back within `factor` x `before`
        (None if it never is).
    frozen_end : float
        Mean loss over the last `window` samples of a copy of the head frozen at the drift: what
        the device would suffer without online learning.
    """

    samples: int
    drift_at: int
    window: int
    factor: float
    before: float
    right_after: float
    recovered: float
    recovery_samples: int | None
    frozen_end: float
    us_per_sample: float

    @property
    def recovers(self) -> bool:
        """The end loss is within `factor` of the pre-drift loss and below the right-after-drift loss."""
        return self.recovered <= self.factor * self.before and self.recovered < self.right_after


def run_drift(learner: OnlineLearner, samples: Iterable[Sample], *, drift_at: int, window: int = 200,
              factor: float = 3.0, lr: float | None = None) -> tuple[DriftReport, np.ndarray]:
    """Learn a stream prequentially and report the loss before, right after and long after a drift.

    Returns the report and every per-sample loss (for plots).
    """
    frozen: list[MLPHead] = []
    tail: deque[Sample] = deque(maxlen=window)

    def watch() -> Iterator[Sample]:
        for t, sample in enumerate(samples):
            if t == drift_at:
                frozen.append(learner.head.copy())
            tail.append(sample)
            yield sample

    t0 = time.perf_counter()
    losses = np.fromiter(learner.stream(watch(), lr=lr), dtype=np.float64)
    elapsed = time.perf_counter() - t0
    n = len(losses)
    if not (window <= drift_at <= n - window):
        raise ValueError(f"need at least window={window} samples before and after the drift at {drift_at}; "
                         f"the stream had {n}")
    xs = np.stack([np.asarray(x, dtype=np.float32) for x, _ in tail])
    frozen_end = float(frozen[0].losses(learner.features(xs), np.asarray([y for _, y in tail])).mean())
    before = float(losses[drift_at - window:drift_at].mean())
    after = losses[drift_at:]
    moving = np.convolve(after, np.ones(window) / window, mode="valid")  # moving[s] = mean(after[s:s+window])
    hits = np.nonzero(moving <= factor * before)[0]
    report = DriftReport(samples=n, drift_at=drift_at, window=window, factor=factor, before=before,
                         right_after=float(after[:window].mean()), recovered=float(losses[-window:].mean()),
                         recovery_samples=int(hits[0]) if hits.size else None, frozen_end=frozen_end,
                         us_per_sample=1e6 * elapsed / max(n, 1))
    return report, losses


# ------------------------------------------------------------------------------------- demo
def sine_demo(*, samples: int = 9000, drift_at: int = 5000, mode: str = "step", seed: int = 0,
              window: int = 200) -> DriftReport:
    """Sine regression (MLP 1-32-32-1, the sine head) whose phase moves by pi at `drift_at`.

    ``mode="step"`` jumps (y flips sign); ``mode="ramp"`` moves the phase over 1,000 samples.
    """
    phase = (phase_step(0.0, math.pi, drift_at) if mode == "step"
             else phase_ramp(0.0, math.pi, drift_at, 1000))
    learner = OnlineLearner(MLPHead.init([1, 32, 32, 1], kind="regression", seed=seed), lr=0.01, seed=seed)
    report, _ = run_drift(learner, sine_stream(samples, phase=phase, seed=seed + 1), drift_at=drift_at, window=window)
    return report


def presence_demo(*, samples: int = 9000, drift_at: int = 5000, seed: int = 0, window: int = 200) -> DriftReport:
    """A room whose occupancy moves from 8-17 h to 13-22 h at `drift_at` (head 3-16-2)."""
    learner = OnlineLearner(MLPHead.init([3, 16, 2], kind="classification", seed=seed), lr=0.05, seed=seed)
    stream = presence_stream(samples, schedule=schedule_step((8.0, 17.0), (13.0, 22.0), drift_at), seed=seed + 1)
    report, _ = run_drift(learner, stream, drift_at=drift_at, window=window)
    return report
