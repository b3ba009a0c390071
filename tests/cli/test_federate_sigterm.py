"""`kill <pid>` of a flat `federate run --simulate` (sync or async) stops its private Mosquitto and devices too.

The process boundary is the point (Python's default SIGTERM does not unwind `with` blocks), so the
CLI runs as a real subprocess here, as `tests/federation/test_hierarchy.py` does for `--gateways`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.process import read_state
from tests.support.waiting import wait_until


def _processes_mentioning(text: str) -> list[int]:
    """Live processes (not zombies) whose command line contains `text` (the run directory)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            out.append(int(entry.name))
    return out


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigterm_stops_the_private_broker(tmp_path: Path, mode: str) -> None:
    run_dir = tmp_path / "term"
    cli = subprocess.Popen([sys.executable, "-m", "tinyfleet.cli.main", "federate", "run", "--task", "sine",
                            "--rounds", "100000", "--simulate", "2", "--local-steps", "2", "--mode", mode,
                            "--out", str(tmp_path), "--run-id", "term", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        assert wait_until(lambda: _lines(run_dir / "metrics.jsonl") >= 1 or cli.poll() is not None, timeout=180,
                          step=0.1)
        assert cli.poll() is None, cli.communicate()[1].decode()[-2000:]
        info = read_state(run_dir / "broker")
        assert info is not None and _processes_mentioning(str(run_dir))
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    wait_until(lambda: not _processes_mentioning(str(run_dir)), timeout=10, step=0.1)
    leftover = _processes_mentioning(str(run_dir))
    for pid in leftover:  # do not leak into the rest of the suite when this fails
        os.kill(pid, signal.SIGKILL)
    assert leftover == [], "the run's broker survived SIGTERM"
    assert read_state(run_dir / "broker") is None
    assert cli.returncode == 128 + signal.SIGTERM and "Traceback" not in err.decode(), err.decode()[-2000:]
