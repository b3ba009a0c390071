"""Characters, keywords and presence: device splits and determinism of the generators.

The quick real builds live in test_usecase_{characters,keywords,presence}.py (one file each, so
each file stays well under a minute).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from firmware_models.datasets import glyphs
from firmware_models.datasets.building import random_room, simulate_room
from firmware_models.usecases import USE_CASES, get_use_case
from firmware_models.usecases.keywords import KeywordsUseCase, speaker_ids


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
