"""benchmarks.fedmeta's own machinery: the per-run device memo and the per-use-case protocol table.

The memo must be invisible in the results (same arrays as generating afresh) and must not outlive
the run (the use case's method is restored, also after an error).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.fedmeta import TASK_PROTOCOL, memoized_devices
from firmware_models.usecases import USE_CASES, get_use_case


def test_memo_serves_identical_devices_and_restores_the_method() -> None:
    # Prepare
    fresh = get_use_case("sine").devices("heldout", 3, samples_per_device=8, seed=4)
    original = type(get_use_case("sine")).devices
    # Execute
    with memoized_devices("sine"):
        first = get_use_case("sine").devices("heldout", 3, samples_per_device=8, seed=4)
        second = get_use_case("sine").devices("heldout", 3, samples_per_device=8, seed=4)
        other_seed = get_use_case("sine").devices("heldout", 3, samples_per_device=8, seed=5)
    # Assert
    assert type(get_use_case("sine")).devices is original
    assert first[0] is second[0]            # served from memory, not generated again
    for a, b in zip(fresh, first, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(other_seed[0].y, first[0].y)   # the seed is part of the key


def test_memo_is_removed_after_an_error() -> None:
    original = type(get_use_case("sine")).devices
    with pytest.raises(RuntimeError), memoized_devices("sine"):
        raise RuntimeError("boom")
    assert type(get_use_case("sine")).devices is original


def test_protocol_table_covers_every_use_case_and_characters_is_5_way_5_shot() -> None:
    assert set(TASK_PROTOCOL) == set(USE_CASES)
    assert TASK_PROTOCOL["characters"]["shots"] == 25   # 5 classes x 5 shots (labels cycle 0..4)
    labels = get_use_case("characters").devices("heldout", 1, samples_per_device=25, seed=0)[0].y
    assert np.bincount(labels).tolist() == [5] * 5
