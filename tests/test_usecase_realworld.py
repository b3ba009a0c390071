"""Characters, keywords and presence: device splits, determinism, and a quick real build each.

Quick builds train for 2 epochs on a handful of devices: they prove the pipeline end to end
(real Keras training, real int8 conversion, real TFLM arena, LiteRT metrics) and the budgets;
quality floors are measured by `python -m benchmarks.models`, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from firmware_models.datasets import glyphs
from firmware_models.datasets.building import random_room, simulate_room
from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases import USE_CASES, get_use_case
from firmware_models.usecases.keywords import KeywordsUseCase, speaker_ids

KB64 = 64 * 1024


def test_registered() -> None:
    assert {"characters", "keywords", "presence"} <= set(USE_CASES)


def test_characters_devices_are_writers_with_disjoint_heldout_classes_and_writers() -> None:
    uc = get_use_case("characters")
    train = uc.devices("train", 3, samples_per_device=12, seed=1)
    held = uc.devices("heldout", 2, samples_per_device=10, seed=1)
    assert train[0].x.shape == (12, 28, 28, 1) and train[0].x.dtype == np.float32
    assert train[0].y.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert {d.meta["writer"] for d in train} <= set(range(glyphs.N_TRAIN_WRITERS))
    assert {d.meta["writer"] for d in held} <= set(range(glyphs.N_TRAIN_WRITERS, glyphs.N_WRITERS))
    train_scripts = {c.split("/")[0] for d in train for c in d.meta["classes"]}
    held_scripts = {c.split("/")[0] for d in held for c in d.meta["classes"]}
    assert held_scripts <= glyphs.TEST_SCRIPTS and not (train_scripts & glyphs.TEST_SCRIPTS)
    again = uc.devices("train", 3, samples_per_device=12, seed=1)
    np.testing.assert_array_equal(train[2].x, again[2].x)
    assert not np.array_equal(train[0].x, uc.devices("train", 1, samples_per_device=12, seed=2)[0].x)


def test_glyph_catalogue_meets_the_issue() -> None:
    cat = glyphs.glyph_catalogue()
    train, test = glyphs.split_classes(cat)
    assert len(cat) >= 200 and len({g.script for g in cat}) >= 5
    assert not {g.name for g in train} & {g.name for g in test}
    assert glyphs.N_WRITERS >= 20


def test_keywords_devices_are_speakers_and_splits_never_share_one(tmp_path: Path) -> None:
    assert not set(speaker_ids("train", 40)) & set(speaker_ids("heldout", 40))
    uc = KeywordsUseCase(cache_dir=tmp_path)
    devs = uc.devices("heldout", 1, samples_per_device=12, seed=0)
    assert devs[0].x.shape == (12, 49, 40, 1)
    assert sorted(devs[0].y.tolist()) == list(range(12))          # every keyword + unknown + silence
    assert len(list(tmp_path.glob("*.wav"))) == 11                 # 10 keywords + 1 unknown word synthesized
    again = uc.devices("heldout", 1, samples_per_device=12, seed=0)  # from the cache, identical
    np.testing.assert_array_equal(devs[0].x, again[0].x)


def test_presence_rooms_differ_and_are_deterministic() -> None:
    uc = get_use_case("presence")
    devs = uc.devices("train", 3, samples_per_device=50, seed=0)
    assert devs[0].x.shape == (50, 30, 6) and set(np.unique(np.concatenate([d.y for d in devs]))) <= {0, 1}
    assert len({d.meta["kind"] for d in devs}) == 3
    np.testing.assert_array_equal(devs[1].x, uc.devices("train", 3, samples_per_device=50, seed=0)[1].x)
    assert {d.device_id for d in devs}.isdisjoint(d.device_id for d in uc.devices("heldout", 3, samples_per_device=5))


def test_simulated_co2_rises_with_people_and_ventilation_removes_it() -> None:
    log = simulate_room(random_room("r", np.random.default_rng(3), "meeting"), days=7, seed=0)
    co2 = log.values[:, 0]
    occupied = log.occupied == 1
    assert np.nanmean(co2[occupied]) > np.nanmean(co2[~occupied]) + 50


@pytest.mark.slow
@pytest.mark.parametrize("name", ["characters", "keywords", "presence"])
def test_quick_build_writes_artifacts_within_budgets(name: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYFLEET_CACHE_DIR", str(tmp_path / "cache"))
    stages: list[float] = []
    card = get_use_case(name).build(tmp_path, seed=0, quick=True, progress=lambda s, f: stages.append(f))
    art = tmp_path / name
    for f in ("model.tflite", "backbone.tflite", "head.npz", "card.json"):
        assert (art / f).is_file(), f
    assert json.loads((art / "card.json").read_text())["name"] == name
    assert card["backbone"]["flash_bytes"] <= KB64 and card["backbone"]["arena_bytes"] <= KB64
    assert card["head"]["params"] <= 4096
    assert 0 < card["metrics"]["int8"]["accuracy"] <= 1 and 0 < card["metrics"]["float"]["accuracy"] <= 1
    assert stages[-1] == 1.0 and stages == sorted(stages)
    backbone = TFLiteModel.from_file(art / "backbone.tflite", backend="litert")
    x = get_use_case(name).devices("heldout", 1, samples_per_device=3, seed=0)[0].x if name != "keywords" else \
        KeywordsUseCase(cache_dir=tmp_path / "cache" / "espeak").devices("heldout", 1, samples_per_device=3)[0].x
    feats = backbone.predict(x)
    with np.load(art / "head.npz") as head:
        assert feats.shape == (3, head["w0"].shape[0])
