"""Configuration precedence: tinyfleet.toml < TINYFLEET_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyfleet import config


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TINYFLEET_BROKER", raising=False)
    monkeypatch.delenv("TINYFLEET_CONFIG", raising=False)
    config.set_config_path(None)


def test_precedence_file_env_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.setting("broker") is None
    (tmp_path / "tinyfleet.toml").write_text('broker = "mqtt://file:1"\n')
    assert config.setting("broker") == "mqtt://file:1"
    monkeypatch.setenv("TINYFLEET_BROKER", "mqtt://env:2")
    assert config.setting("broker") == "mqtt://env:2"
    assert config.setting("broker", "mqtt://flag:3") == "mqtt://flag:3"
    assert config.effective()["broker"]["source"] == "env TINYFLEET_BROKER"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tinyfleet.toml").write_text("broker = \n")
    with pytest.raises(config.ConfigError, match="tinyfleet.toml: invalid TOML"):
        config.setting("broker")

