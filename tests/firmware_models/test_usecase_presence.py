"""Quick real build of the presence use case (artifacts, budgets, device path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.usecases import check_quick_build


@pytest.mark.slow
def test_presence_quick_build_within_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_quick_build("presence", tmp_path, monkeypatch)
