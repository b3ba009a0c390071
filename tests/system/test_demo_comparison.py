"""The demo's comparison (quick settings): its best method must be far from chance on new devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from federation.compare import Budget
from federation.session import initial_parameters
from firmware_models.usecases import get_use_case
from tests.support.models import SineBuild
from tinyfleet.demo import DemoOptions, compare_methods


def test_quick_demo_best_method_is_far_from_chance(tmp_path: Path, sine_build: SineBuild) -> None:
    opts = DemoOptions.quick_defaults(tmp_path)
    uc = get_use_case("sine")
    models = sine_build.directory.parent
    fleet = uc.devices("train", 10, samples_per_device=64, seed=opts.seed)  # the quick demo's eligible devices
    initial = initial_parameters("sine", models_dir=models, seed=opts.seed)
    lines: list[str] = []
    out = compare_methods(opts, uc, fleet, initial, models, Budget(rounds=opts.rounds, per_round=8), initial,
                          "tinymetafed", lines.append)
    best = out["methods"][out["best"]]
    # chance for regression: the best constant guess per device, i.e. the variance of its targets
    new = uc.devices("heldout", opts.newcomers, samples_per_device=opts.shots + 50, seed=opts.seed + 7)
    chance = float(np.mean([np.var(d.y[opts.shots:]) for d in new]))
    assert best["ci95"][1] < 0.5 * chance, (out["best"], best, chance)
    assert out["methods"]["scratch"]["mean"] > best["mean"]
    assert any("best on the new devices" in line for line in lines)
