"""`tinyfleet broker` through the real console script: JSON output, status, stop, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from broker.process import _pid_alive

TINYFLEET = str(Path(sys.executable).with_name("tinyfleet"))


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TINYFLEET, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_broker_start_status_stop(tmp_path: Path) -> None:
    d = tmp_path / "mq"
    started = run("broker", "start", "--dir", str(d), "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert info["host"] == "127.0.0.1" and info["port"] > 0 and _pid_alive(info["pid"])
        status = json.loads(run("broker", "status", "--dir", str(d), "--json").stdout)
        assert status["running"] is True and status["port"] == info["port"]
        again = run("broker", "start", "--dir", str(d))
        assert again.returncode == 1 and again.stderr.startswith("error: a broker already runs")
    finally:
        stopped = run("broker", "stop", "--dir", str(d))
    assert stopped.returncode == 0, stopped.stderr
    assert not _pid_alive(info["pid"])
    assert json.loads(run("broker", "status", "--dir", str(d), "--json").stdout)["running"] is False


def test_broker_stop_without_broker_is_one_line_error(tmp_path: Path) -> None:
    res = run("broker", "stop", "--dir", str(tmp_path / "none"))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"error: no broker runs from {tmp_path / 'none'}"]


def test_missing_config_file_is_usage_error(tmp_path: Path) -> None:
    res = run("--config", str(tmp_path / "nope.toml"), "broker", "status", "--dir", str(tmp_path))
    assert res.returncode == 2
    assert "configuration file not found" in res.stderr and "Traceback" not in res.stderr


def test_unknown_config_key_is_reported_with_file(tmp_path: Path) -> None:
    (tmp_path / "tinyfleet.toml").write_text('brokr = "mqtt://127.0.0.1:1"\n')
    res = run("broker", "status", "--json", "--dir", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2, res.stdout
    assert "tinyfleet.toml: unknown key(s) brokr" in res.stderr
