"""`tinyfleet firmware generate` end to end: registry match -> project -> `make host-test size` -> lineage.

The registry is real (embedded Oxigraph through the CLI), the model is the session's real sine
build, and the generated projects are built with the real toolchains: gcc for `host-test` (golden
vectors from the numpy learner and the Python decoder), arm-none-eabi-gcc for `size`, and gcc +
libmosquitto for the Linux agent. Refusals are one `error:` line with exit code 1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from devices.boards import get_board
from devices.wire.thing_description import thing_description
from firmware_models.exceptions import TinyFleetError
from registry import add_device, lineage, open_store
from tests.conftest import require_c_tools
from tests.support.cli import clean_environment, invoke
from tests.support.models import SineBuild
from tinyfleet.firmware import generate

ROOT = Path(__file__).resolve().parents[2]
Cli = Callable[..., Result]
DEVICES = {"fw-nano": "nano33ble", "fw-pi": "rpi4", "fw-uno": "uno", "fw-esp": "esp32"}


@pytest.fixture(scope="module")
def store(sine_build: SineBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fwreg")
    st = root / "store"
    with clean_environment(tmp_path_factory.mktemp("cwd")):
        proc = invoke("registry", "add-model", str(sine_build.directory / "model.tflite"), "--card",
                      str(sine_build.directory / "card.json"), "--store", str(st), "--json")
    assert proc.exit_code == 0, proc.stderr
    with open_store(st) as opened:  # devices in-process: `registry add-device` has its own CLI tests
        for device_id, board in DEVICES.items():
            add_device(opened, thing_description(device_id=device_id, fleet="lab", board=get_board(board),
                                                 use_case="sine", host="127.0.0.1", port=1883,
                                                 sensors=("scalar-signal",)))
    return st


def _generate(cli: Cli, store: Path, models: Path, out: Path, board: str, *extra: str) -> Result:
    return cli("firmware", "generate", "--model", "sine", "--board", board, "--models", str(models), "--out",
               str(out), "--store", str(store), "--broker", "mqtt://broker.lab:1883", *extra)


def _make(project: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(project), *targets], capture_output=True, text=True, timeout=300,
                          check=False)


def test_cortex_m_project_passes_host_test_and_size(cli: Cli, store: Path, sine_build: SineBuild,
                                                    tmp_path: Path) -> None:
    require_c_tools("gcc", "arm", "make")
    out = tmp_path / "nano"
    proc = _generate(cli, store, sine_build.directory.parent, out, "fw-nano", "--json")
    assert proc.exit_code == 0, proc.stderr
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
    # lineage: model version -> firmware project -> board (`registry lineage --json` prints the same dict)
    with open_store(store) as opened:
        projects = lineage(opened, "sine")["firmware"]
    assert any(p["id"] == doc["project_id"] and p["device_id"] == "fw-nano" and p["family"] == "arduino-nrf52840"
               and p["arena_bytes"] == doc["arena_bytes"] for p in projects), projects


def test_linux_project_builds_the_agent(cli: Cli, store: Path, sine_build: SineBuild, tmp_path: Path) -> None:
    require_c_tools("gcc", "libmosquitto", "make")
    out = tmp_path / "pi"
    proc = _generate(cli, store, sine_build.directory, out, "fw-pi", "--json")
    assert proc.exit_code == 0, proc.stderr
    made = _make(out, "host-test", "agent", "size")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["credentials"] == "credentials.json" and not (out / "credentials.json").exists()
    assert config["device"] == "fw-pi" and config["broker"] == "mqtt://broker.lab:1883"
    refused = subprocess.run([str(out / "build" / "tf-agent"), str(out / "config.json")], capture_output=True,
                             text=True, timeout=30, check=False)
    assert refused.returncode == 2 and "credentials" in refused.stderr  # the separate file is required


def test_refusals_are_one_line_errors(cli: Cli, store: Path, sine_build: SineBuild, tmp_path: Path) -> None:
    why = _generate(cli, store, sine_build.directory, tmp_path / "uno", "fw-uno", "--explain")  # through the CLI
    assert why.exit_code == 1 and why.stdout == ""
    assert why.stderr.startswith("error: board fw-uno cannot run model sine: ")
    assert "too little RAM: 2048 B < 2576 B needed" in why.stderr
    assert len(why.stderr.strip().splitlines()) == 1 and not (tmp_path / "uno").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = {  # the same function, called directly
        "add --explain for the reasons": dict(board="fw-uno", out=tmp_path / "uno"),
        "no firmware template for board Espressif ESP32": dict(board="fw-esp", out=tmp_path / "esp"),
        "Xtensa LX6": dict(board="fw-esp", out=tmp_path / "esp"),
        "sha256": dict(board="fw-nano", out=tmp_path / "x", models_dir=tmp_path),
        "no device named 'no-such-board'": dict(board="no-such-board", out=tmp_path / "y"),
        "exists and is not empty (pass --force": dict(board="fw-nano", out=taken),
    }
    with open_store(store) as opened:
        for expected, kw in cases.items():
            args = {"models_dir": sine_build.directory, **kw}
            with pytest.raises(TinyFleetError, match=re.escape(expected)) as info:
                generate(opened, model="sine", **args)  # type: ignore[arg-type]
            assert "\n" not in str(info.value) and info.value.exit_code == 1
    assert (taken / "keep.txt").read_text() == "mine" and sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "uno").exists() and not (tmp_path / "esp").exists()


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
