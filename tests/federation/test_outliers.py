"""The absurd-norm rule: factor × median, but never below a floor relative to ‖θ‖.

The numbers are the measured presence round that motivated the floor (24 rooms, 50 local steps
at lr 0.02 from the pretrained head, ‖θ‖ = 8.54): most rooms are already fitted, so the median
update is ~0.002 and the honest devices with something to learn sit far above 10 × median.
"""

from __future__ import annotations

from federation.replies import outlier_indices

PRESENCE_NORMS = [0.0022, 0.0, 0.022, 0.0027, 0.0, 0.0054, 0.0, 0.2408, 0.0, 0.0017, 0.0295, 0.0002]
THETA_NORM = 8.54


def test_median_rule_alone_rejects_honest_heavy_tailed_updates() -> None:
    assert outlier_indices(PRESENCE_NORMS, factor=10.0) == [2, 7, 10]


def test_floor_keeps_honest_updates_small_next_to_theta() -> None:
    assert outlier_indices(PRESENCE_NORMS, factor=10.0, floor=0.1 * THETA_NORM) == []


def test_floor_still_rejects_an_absurd_update() -> None:
    norms = [*PRESENCE_NORMS, 1e4]
    assert outlier_indices(norms, factor=10.0, floor=0.1 * THETA_NORM) == [len(norms) - 1]


def test_factor_rule_still_applies_above_the_floor() -> None:
    norms = [1.0, 1.1, 0.9, 12.0]
    assert outlier_indices(norms, factor=10.0, floor=0.5) == [3]
