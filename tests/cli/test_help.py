"""Every command explains itself: `--help` works and shows an example, through the real console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from tinyfleet.cli.main import app

TINYFLEET = str(Path(sys.executable).with_name("tinyfleet"))


def _leaf_commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out.append(path)

    walk(root, [])
    return out


COMMANDS = _leaf_commands()


def test_every_documented_group_exists() -> None:
    groups = {c[0] for c in COMMANDS}
    assert {"models", "registry", "broker", "devices", "federate", "demo", "doctor", "firmware"} <= groups


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_has_an_example(command: list[str]) -> None:
    cmd = typer.main.get_command(app)
    for name in command:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    text = cmd.help or ""
    assert "Example: tinyfleet " + " ".join(command) in text, f"tinyfleet {' '.join(command)} --help has no example"


def test_help_through_console_script() -> None:
    # subprocess: the installed console script's entry point is what this checks
    proc = subprocess.run([TINYFLEET, "federate", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Example:" in proc.stdout
    bad = subprocess.run([TINYFLEET, "models", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "No such command" in bad.stderr
