"""Concept drift: streams do what they say, and the online learner recovers after a drift."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from devices.learning.drift import (
    phase_ramp,
    phase_step,
    presence_demo,
    presence_stream,
    run_drift,
    schedule_step,
    sine_demo,
    sine_stream,
)
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner


def test_sine_stream_follows_its_phase() -> None:
    samples = list(sine_stream(20, phase=phase_step(0.0, math.pi, 10), amplitude=2.0, seed=3))
    for t, (x, y) in enumerate(samples):
        assert x.shape == (1,) and y.shape == (1,) and -5 <= x[0] <= 5
        np.testing.assert_allclose(y, 2.0 * np.sin(x + (0.0 if t < 10 else math.pi)), atol=1e-5)
    ramp = phase_ramp(0.0, 1.0, start=100, length=50)
    assert (ramp(0), ramp(100), ramp(125), ramp(150), ramp(999)) == (0.0, 0.0, 0.5, 1.0, 1.0)


def test_presence_stream_labels_follow_the_schedule() -> None:
    for sched in ((8.0, 17.0), (22.0, 6.0)):  # day shift and a night shift that wraps midnight
        for feats, label in presence_stream(300, schedule=lambda t, s=sched: s, seed=1):
            hour = (math.degrees(math.atan2(feats[0], feats[1])) / 15.0) % 24.0
            start, end = sched
            inside = start <= hour < end if start <= end else (hour >= start or hour < end)
            if min(abs(hour - start), abs(hour - end)) > 1e-3:
                assert label == int(inside), (hour, sched)
    labels = [y for _, y in presence_stream(2000, schedule=schedule_step((8, 17), (13, 22), 1000), seed=2)]
    assert 0.3 < np.mean(labels) < 0.45  # 9 of 24 hours occupied


@pytest.mark.parametrize("demo", ["sine-step", "presence"])
def test_online_learner_recovers_from_drift(demo: str) -> None:
    report = sine_demo(seed=0) if demo == "sine-step" else presence_demo(seed=0)
    assert report.right_after > 5 * report.before            # the drift really hurts ...
    assert report.recovered <= 3 * report.before              # ... and the learner gets back
    assert report.recovered < 0.25 * report.right_after
    assert report.frozen_end > 10 * report.recovered          # a frozen head would not
    assert report.recovery_samples is not None and report.recovery_samples < 2000
    assert report.recovers


def test_run_drift_needs_samples_on_both_sides() -> None:
    learner = OnlineLearner(MLPHead.init([1, 4, 1], kind="regression", seed=0))
    with pytest.raises(ValueError, match=r"need at least window=50 samples before and after the drift at 80"):
        run_drift(learner, sine_stream(100, phase=phase_step(0, 1, 80)), drift_at=80, window=50)


def test_demo_cli_prints_only_json() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.drift", "--json"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"sine-step", "sine-ramp", "presence-schedule"}
    assert all(v["recovers"] for v in data.values())
