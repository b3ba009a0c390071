"""Every use case can be matched: its sensor kinds are spelled the way board profiles spell them."""

from __future__ import annotations

import pytest

from devices.boards import BOARDS
from firmware_models.usecases import USE_CASES, get_use_case


@pytest.mark.parametrize("name", USE_CASES)
def test_some_board_offers_every_sensor_of(name: str) -> None:
    needed = set(get_use_case(name).sensors)
    assert needed, f"{name} declares no sensors"
    offering = [b.name for b in BOARDS.values() if needed <= set(b.sensors)]
    assert offering, f"no board offers all of {sorted(needed)} for {name}"
