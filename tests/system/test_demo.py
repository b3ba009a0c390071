"""The end-to-end demo through the real console script, against real Mosquitto, in --quick mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_models.usecases import get_use_case
from tests.support.models import SineBuild
from tinyfleet.demo import DemoOptions

TINYFLEET = str(Path(sys.executable).with_name("tinyfleet"))


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
def test_quick_demo_end_to_end(tmp_path: Path, sine_build: SineBuild) -> None:
    out = tmp_path / "demo"
    # reuse the session's quick sine build, as the demo itself reuses <out>/models
    shutil.copytree(sine_build.directory, out / "models" / "sine")
    proc = subprocess.run([TINYFLEET, "demo", "--quick", "--out", str(out), "--json"], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "TINYFLEET_BROKER": ""})
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

    # the comparison: every method at the same budget, judged on new devices; the deployed method's MQTT head too
    rows = {r["init"]: r for r in summary["summary"]}
    report = json.loads((out / "report.json").read_text())
    (deployed,) = report["runs"]
    assert set(rows) == {"tinyreptile", "reptile", "tinymetafed", "fedavg", "joint", "scratch", f"{deployed} (MQTT)"}
    assert len({rows[m]["device_steps"] for m in ("tinyreptile", "reptile", "tinymetafed", "fedavg", "joint")}) == 1
    best = rows[report["best"]]
    assert best["metric"] == "mse" and best["ci95"][1] < rows["scratch"]["mean"]
    # issue 13: the best method is far from chance (for regression, the best constant guess per new device:
    # the variance of its targets), so a demo whose backbone or head learned nothing fails here
    opts = DemoOptions.quick_defaults(out)
    new = get_use_case("sine").devices("heldout", opts.newcomers, samples_per_device=50, seed=opts.seed + 7)
    chance = float(np.mean([np.var(d.y) for d in new]))
    assert best["ci95"][1] < 0.5 * chance, (report["best"], best, chance)
    assert rows["tinymetafed"]["bytes_up"] < rows["reptile"]["bytes_up"] and rows["scratch"]["bytes_up"] == 0

    for plot in summary["plots"]:
        assert Path(plot).stat().st_size > 5000 and Path(plot).read_bytes()[:4] == b"\x89PNG"
    run = report["runs"][deployed]
    assert len(run["rounds"]) == (20 * 8 if deployed == "tinyreptile" else 20)
    # lineage of the deployed version is in the registry the demo left behind
    lineage = subprocess.run([TINYFLEET, "registry", "lineage", summary["deploy"]["model_iri"], "--store",
                              str(out / "registry"), "--json"], capture_output=True, text=True, timeout=120)
    assert lineage.returncode == 0, lineage.stderr
    assert run["run_id"] in lineage.stdout
    # everything the demo started is stopped
    assert _processes_mentioning(str(out)) == []


def test_demo_unknown_task_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([TINYFLEET, "demo", "--task", "nope", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown use case 'nope'")
    assert "Traceback" not in proc.stderr
