"""Quick real build of the keywords use case (artifacts, budgets, device path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.usecases import check_quick_build


@pytest.mark.slow
def test_keywords_quick_build_within_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_quick_build("keywords", tmp_path, monkeypatch)
