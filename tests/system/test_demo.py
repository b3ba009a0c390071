"""The end-to-end demo through the real console script, against real Mosquitto, in --quick mode.

The demo runs as its own process on purpose: the test checks that it leaves no process of its own behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from tests.support.cli import CONFIG_VARIABLES
from tests.support.models import SineBuild

TINYFLEET = str(Path(sys.executable).with_name("tinyfleet"))
Cli = Callable[..., Result]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_quick_demo_end_to_end(cli: Cli, tmp_path: Path, sine_build: SineBuild) -> None:
    out = tmp_path / "demo"
    # reuse the session's quick sine build, as the demo itself reuses <out>/models
    shutil.copytree(sine_build.directory, out / "models" / "sine")
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    # subprocess: whatever the demo starts (broker, devices) must be gone when its process ends (checked below)
    proc = subprocess.run([TINYFLEET, "demo", "--quick", "--out", str(out), "--json"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # stdout is exactly one JSON document

    # issue #9: the demo's private broker is secured (no anonymous access, accounts per purpose)
    assert summary["broker"]["secured"] is True and summary["broker"]["anonymous_allowed"] is False
    assert {"fleet-server", "registry-listener", "demo-deploy", "dev-0000"} <= set(summary["broker"]["accounts"])
    assert "allow_anonymous false" in (out / "broker" / "mosquitto.conf").read_text()

    # matchmaking: the Uno (2 KB RAM) and the camera-only board are excluded, with reasons
    excluded = {e["device"]: " ".join(e["reasons"]) for e in summary["matchmaking"]["excluded"]}
    assert any("too little RAM" in why for why in excluded.values())
    assert any("missing sensor: scalar-signal" in why for why in excluded.values())
    eligible = summary["matchmaking"]["eligible"]
    assert len(eligible) + len(excluded) == 16 and not set(eligible) & set(excluded)

    # safe deploy reached every eligible device
    assert summary["deploy"]["outcomes"] == {"swapped": len(eligible)}

    # few-shot: every initialization measured; federated heads beat a scratch head
    rows = {r["init"]: r for r in summary["summary"]}
    assert set(rows) == {"reptile", "fedavg", "scratch"}
    assert rows["reptile"]["loss_10_steps"] < rows["scratch"]["loss_10_steps"]
    assert rows["reptile"]["bytes_up"] > 0 and rows["scratch"]["bytes_up"] == 0

    for plot in summary["plots"]:
        assert Path(plot).stat().st_size > 5000 and Path(plot).read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]["reptile"]["rounds"]) == 8
    # lineage of the deployed version is in the registry the demo left behind
    lineage = cli("registry", "lineage", summary["deploy"]["model_iri"], "--store", str(out / "registry"), "--json")
    assert lineage.exit_code == 0, lineage.stderr
    assert report["runs"]["reptile"]["run_id"] in lineage.stdout
    # everything the demo started is stopped
    assert _processes_mentioning(str(out)) == []


def test_demo_unknown_task_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    proc = cli("demo", "--task", "nope", "--out", str(tmp_path))
    assert proc.exit_code == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown use case 'nope'")
    assert "Traceback" not in proc.stderr
