"""`tinyfleet firmware generate` end to end: registry match -> project -> `make host-test size` -> lineage.

The registry is real (embedded Oxigraph through the CLI), the model is the session's real sine
build, and the generated projects are built with the real toolchains: gcc for `host-test` (golden
vectors from the numpy learner and the Python decoder), arm-none-eabi-gcc for `size`, and gcc +
libmosquitto for the Linux agent. Refusals are one `error:` line with exit code 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from devices.boards import get_board
from devices.wire.thing_description import thing_description
from tests.conftest import require_c_tools
from tests.support.models import SineBuild, run_cli

ROOT = Path(__file__).resolve().parents[2]
DEVICES = {"fw-nano": "nano33ble", "fw-pi": "rpi4", "fw-uno": "uno", "fw-esp": "esp32"}


@pytest.fixture(scope="module")
def store(sine_build: SineBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fwreg")
    st = root / "store"
    proc = run_cli("registry", "add-model", str(sine_build.directory / "model.tflite"), "--card",
                   str(sine_build.directory / "card.json"), "--store", str(st), "--json")
    assert proc.returncode == 0, proc.stderr
    for device_id, board in DEVICES.items():
        td = thing_description(device_id=device_id, fleet="lab", board=get_board(board), use_case="sine",
                               host="127.0.0.1", port=1883, sensors=("scalar-signal",))
        path = root / f"{device_id}.json"
        path.write_text(json.dumps(td))
        proc = run_cli("registry", "add-device", str(path), "--store", str(st))
        assert proc.returncode == 0, proc.stderr
    return st


def _generate(store: Path, models: Path, out: Path, board: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("firmware", "generate", "--model", "sine", "--board", board, "--models", str(models), "--out",
                   str(out), "--store", str(store), "--broker", "mqtt://broker.lab:1883", *extra)


def _make(project: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(project), *targets], capture_output=True, text=True, timeout=300,
                          check=False)


def test_cortex_m_project_passes_host_test_and_size(store: Path, sine_build: SineBuild, tmp_path: Path) -> None:
    require_c_tools("gcc", "arm")
    out = tmp_path / "nano"
    proc = _generate(store, sine_build.directory.parent, out, "fw-nano", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["family"] == "arduino-nrf52840" and doc["ops"] == ["FULLY_CONNECTED"]
    assert doc["arena_measured_bytes"] == sine_build.card["arena_bytes"]
    assert doc["arena_bytes"] == doc["arena_measured_bytes"] + doc["arena_margin_bytes"]
    assert doc["arena_margin_bytes"] >= 1024
    made = _make(out, "host-test", "size")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    summary = json.loads(next(ln for ln in made.stdout.splitlines() if ln.startswith('{"learner_ok"')))
    assert summary["learner_ok"] and summary["codec_ok"] and summary["max_abs_weight_diff"] <= 1e-5
    size = json.loads((out / "build" / "size.json").read_text())
    assert set(size) == {"text", "data", "bss"} and size["data"] + size["bss"] <= 8 * 1024
    main = (out / "src" / "main.cpp").read_text()
    assert "resolver.AddFullyConnected();" in main and "MicroMutableOpResolver<1>" in main
    assert f"kArenaBytes = {doc['arena_bytes']};" in main
    assert "tensorflow/tflite-micro" in (out / "platformio.ini").read_text()
    fleet = (out / "src" / "fleet_config.h").read_text()
    assert '"fw-nano"' in fleet and '"lab"' in fleet and '"broker.lab"' in fleet
    # credentials: read at build time from a separate (git-ignored) file, never written into the tree
    (out / "credentials.json").write_text(json.dumps({"username": "fw-nano", "password": "s3cret-Q7"}))
    flags = subprocess.run([sys.executable, "tools/credentials_flags.py"], cwd=out, capture_output=True, text=True,
                           timeout=30, check=False)
    assert flags.returncode == 0 and '-DTF_MQTT_PASSWORD=\\"s3cret-Q7\\"' in flags.stdout, flags
    assert "credentials.json" in (out / ".gitignore").read_text().splitlines()
    tracked = [p for p in out.rglob("*") if p.is_file() and p.name != "credentials.json" and "build" not in p.parts]
    assert not [p for p in tracked if b"s3cret-Q7" in p.read_bytes()]
    # lineage: model version -> firmware project -> board
    lin = run_cli("registry", "lineage", "sine", "--store", str(store), "--json")
    assert lin.returncode == 0, lin.stderr
    projects = json.loads(lin.stdout)["firmware"]
    assert any(p["id"] == doc["project_id"] and p["device_id"] == "fw-nano" and p["family"] == "arduino-nrf52840"
               and p["arena_bytes"] == doc["arena_bytes"] for p in projects), projects


def test_linux_project_builds_the_agent(store: Path, sine_build: SineBuild, tmp_path: Path) -> None:
    require_c_tools("gcc")
    out = tmp_path / "pi"
    proc = _generate(store, sine_build.directory, out, "fw-pi", "--json")
    assert proc.returncode == 0, proc.stderr
    made = _make(out, "host-test", "agent", "size")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["credentials"] == "credentials.json" and not (out / "credentials.json").exists()
    assert config["device"] == "fw-pi" and config["broker"] == "mqtt://broker.lab:1883"
    refused = subprocess.run([str(out / "build" / "tf-agent"), str(out / "config.json")], capture_output=True,
                             text=True, timeout=30, check=False)
    assert refused.returncode == 2 and "credentials" in refused.stderr  # the separate file is required


def test_refusals_are_one_line_errors(store: Path, sine_build: SineBuild, tmp_path: Path) -> None:
    small = _generate(store, sine_build.directory, tmp_path / "uno", "fw-uno")
    assert small.returncode == 1 and small.stderr.startswith("error: board fw-uno cannot run model sine")
    assert "--explain" in small.stderr and not (tmp_path / "uno").exists()
    why = _generate(store, sine_build.directory, tmp_path / "uno", "fw-uno", "--explain")
    assert why.returncode == 1 and "too little RAM: 2048 B < 2576 B needed" in why.stderr
    esp = _generate(store, sine_build.directory, tmp_path / "esp", "fw-esp")
    assert esp.returncode == 1 and "no firmware template" in esp.stderr and "Xtensa" in esp.stderr
    wrong = _generate(store, tmp_path, tmp_path / "x", "fw-nano")
    assert wrong.returncode == 1 and "sha256" in wrong.stderr
    unknown = _generate(store, sine_build.directory, tmp_path / "y", "no-such-board")
    assert unknown.returncode == 1 and "no device named 'no-such-board'" in unknown.stderr
    for proc in (small, why, esp, wrong, unknown):
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    busy = _generate(store, sine_build.directory, taken, "fw-nano")
    assert busy.returncode == 1 and "--force" in busy.stderr and (taken / "keep.txt").read_text() == "mine"


def test_package_data_ships_every_c_file() -> None:
    """`firmware generate` must work from a wheel: every non-Python file under devices/c is package data.

    (Checked against pyproject's globs, offline; `pip wheel .` was also run by hand: the wheel lists
    devices/c/src, agent, mcu, tests, fuzz and templates.)
    """
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["devices.c"]
    c_dir = ROOT / "devices" / "c"
    shipped = {p for g in globs for p in c_dir.glob(g) if p.is_file()}
    needed = {p for p in c_dir.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
              and "__pycache__" not in p.parts}
    assert needed and needed <= shipped, sorted(str(p.relative_to(c_dir)) for p in needed - shipped)
    assert "*.rq" in config["tool"]["setuptools"]["package-data"]["*"]  # registry/queries/firmware_projects.rq
