"""`tinyfleet models ...` and `tinyfleet doctor` in-process (the session's sine build runs the console script)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from firmware_models.c_export import parse_c_array

Cli = Callable[..., Result]

INSPECT_KEYS = {"flash_bytes", "arena_bytes", "macs", "params", "ops", "inputs", "outputs", "sha256"}


def test_build_json_stdout_is_pure_json(sine_build) -> None:  # noqa: ANN001
    assert sine_build.returncode == 0
    assert sine_build.stdout.lstrip().startswith("{")
    assert "Saved artifact" not in sine_build.stdout
    assert json.loads(sine_build.stdout)["name"] == "sine"
    for name in ("model.tflite", "head.npz", "card.json", "sine_model_data.h", "sine_model_data.cc"):
        assert (sine_build.directory / name).is_file(), name


def test_inspect_json_has_the_keys(cli: Cli, tiny_cnn_tflite: Path) -> None:
    proc = cli("models", "inspect", str(tiny_cnn_tflite), "--json")
    assert proc.exit_code == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) >= INSPECT_KEYS
    assert report["macs"] == 3096 and report["flash_bytes"] == tiny_cnn_tflite.stat().st_size
    assert report["arena_bytes"] >= report["arena_reported_bytes"] > 0
    assert [o["op"] for o in report["ops"] if o["macs"]] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]


def test_inspect_table_mentions_the_figures(cli: Cli, tiny_cnn_tflite: Path) -> None:
    proc = cli("models", "inspect", str(tiny_cnn_tflite), "--no-arena")
    assert proc.exit_code == 0, proc.stderr
    assert "3096" in proc.stdout and "DEPTHWISE_CONV_2D" in proc.stdout


@pytest.mark.parametrize("content, problem", [
    (None, "model file not found"),
    (b"", "empty file"),
    ("truncate", "truncated"),
    (b"#!/bin/sh\necho not a model\n", "not a TFLite flatbuffer"),
])
def test_inspect_bad_file_one_line_exit_1(cli: Cli, tmp_path: Path, tiny_cnn_tflite: Path, content: object,
                                          problem: str) -> None:
    path = tmp_path / "bad.tflite"
    if content == "truncate":
        path.write_bytes(tiny_cnn_tflite.read_bytes()[:400])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    proc = cli("models", "inspect", str(path), "--json")
    assert proc.exit_code == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: ") and problem in lines[0]
    assert "Traceback" not in proc.stderr


def test_unknown_task_lists_valid_names_exit_2(cli: Cli, tmp_path: Path) -> None:
    proc = cli("models", "build", "sinus", "--out", str(tmp_path))
    assert proc.exit_code == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "sinus" in proc.stderr and "sine" in proc.stderr.split("valid:")[1] and "all" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_export_writes_a_round_tripping_c_pair(cli: Cli, tmp_path: Path, tiny_cnn_tflite: Path) -> None:
    proc = cli("models", "export", str(tiny_cnn_tflite), "--out", str(tmp_path / "c"), "--name", "cnn", "--json")
    assert proc.exit_code == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["bytes"] == tiny_cnn_tflite.stat().st_size
    assert parse_c_array((tmp_path / "c" / "cnn_model_data.cc").read_text()) == tiny_cnn_tflite.read_bytes()
    assert (tmp_path / "c" / "cnn_model_data.h").is_file()


def test_export_of_a_missing_file_fails_cleanly(cli: Cli, tmp_path: Path) -> None:
    proc = cli("models", "export", str(tmp_path / "none.tflite"), "--out", str(tmp_path / "c"))
    assert proc.exit_code == 1 and "none.tflite: model file not found" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_doctor_json_reports_versions_and_a_working_broker(cli: Cli, mosquitto) -> None:  # noqa: ANN001 - needs mosquitto
    proc = cli("doctor", "--json")
    assert proc.exit_code == 0, proc.stderr
    report = json.loads(proc.stdout)
    for tool in ("tensorflow", "ai-edge-litert", "tflite-micro", "flwr", "rdflib", "paho-mqtt"):
        assert report["versions"][tool], tool
    assert report["mosquitto"]["binary"] and report["mosquitto"]["starts"] is True
    assert report["mosquitto"]["port"] > 0 and report["ok"] is True


def test_doctor_and_inspect_cli_modules_do_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = ("import sys; from tinyfleet.cli import doctor, models; doctor.tool_versions();"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    # subprocess: only a fresh interpreter shows which modules an import pulls in
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
