"""`tinyfleet broker` in-process (Typer's runner, real Mosquitto): JSON output, status, stop, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from broker.process import _pid_alive

Cli = Callable[..., Result]


def test_broker_start_status_stop(cli: Cli, tmp_path: Path) -> None:
    d = tmp_path / "mq"
    started = cli("broker", "start", "--dir", str(d), "--json")
    assert started.exit_code == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert info["host"] == "127.0.0.1" and info["port"] > 0 and _pid_alive(info["pid"])
        status = json.loads(cli("broker", "status", "--dir", str(d), "--json").stdout)
        assert status["running"] is True and status["port"] == info["port"]
        again = cli("broker", "start", "--dir", str(d))
        assert again.exit_code == 1 and again.stderr.startswith("error: a broker already runs")
    finally:
        stopped = cli("broker", "stop", "--dir", str(d))
    assert stopped.exit_code == 0, stopped.stderr
    assert not _pid_alive(info["pid"])
    assert json.loads(cli("broker", "status", "--dir", str(d), "--json").stdout)["running"] is False


def test_broker_stop_without_broker_is_one_line_error(cli: Cli, tmp_path: Path) -> None:
    res = cli("broker", "stop", "--dir", str(tmp_path / "none"))
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [f"error: no broker runs from {tmp_path / 'none'}"]


def test_missing_config_file_is_usage_error(cli: Cli, tmp_path: Path) -> None:
    res = cli("--config", str(tmp_path / "nope.toml"), "broker", "status", "--dir", str(tmp_path))
    assert res.exit_code == 2
    assert "configuration file not found" in res.stderr and "Traceback" not in res.stderr


def test_unknown_config_key_is_reported_with_file(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tinyfleet.toml").write_text('brokr = "mqtt://127.0.0.1:1"\n')
    monkeypatch.chdir(tmp_path)  # the file is found in the working directory
    res = cli("broker", "status", "--json", "--dir", str(tmp_path))
    assert res.exit_code == 2, res.stdout
    assert "tinyfleet.toml: unknown key(s) brokr" in res.stderr
