"""`federate run`'s synopsis, defaults and its answer to a secured broker (issue #14 items 12 and 13)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from broker.process import MosquittoBroker
from devices.wire.topics import DEFAULT_FLEET
from tinyfleet.cli.main import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "federation.md"


def _options(group: str, command: str) -> set[str]:
    click_group = typer.main.get_command(app)
    cmd = click_group.commands[group].commands[command]  # type: ignore[attr-defined]
    return {o for p in cmd.params for o in p.opts if o.startswith("--")} - {"--help"}


@pytest.mark.parametrize("command", ["run", "resume", "status"])
def test_the_synopsis_in_federation_md_lists_every_option(command: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    block = text[text.index("## Commands"):text.index("Where the devices are")]
    synopsis = block[block.index(f"tinyfleet federate {command}"):].split("\ntinyfleet federate")[0]
    listed = set(re.findall(r"--[a-z-]+", synopsis))
    assert _options("federate", command) - listed == set()


@pytest.mark.parametrize(("group", "command"), [("federate", "run"), ("devices", "run"), ("devices", "simulate"),
                                                ("devices", "enroll"), ("devices", "list"),
                                                ("devices", "conformance")])
def test_one_default_fleet_everywhere(group: str, command: str, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    """Without a flag, an environment variable or a tinyfleet.toml every command resolves the same fleet."""
    from tinyfleet import config

    click_group = typer.main.get_command(app)
    cmd = click_group.commands[group].commands[command]  # type: ignore[attr-defined]
    fleet = next(p for p in cmd.params if "--fleet" in p.opts)
    assert fleet.default is None  # resolved at run time: flag > TINYFLEET_FLEET > tinyfleet.toml > default
    monkeypatch.delenv("TINYFLEET_FLEET", raising=False)
    monkeypatch.chdir(tmp_path)
    config.set_config_path(None)
    assert config.setting("fleet", fleet.default) == DEFAULT_FLEET == "default"


def test_simulate_on_a_secured_broker_without_broker_dir_says_what_to_pass(secured: tuple[Path, MosquittoBroker],
                                                                           tmp_path: Path) -> None:
    d, broker = secured
    url = f"mqtt://127.0.0.1:{broker.port}"
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["federate", "run", "--task", "sine", "--rounds", "1", "--simulate", "2",
                                 "--broker", url, "--out", str(tmp_path / "runs"), "--json"])
    assert r.exit_code == 1 and r.stdout == ""
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: only 0 of 2 simulated devices connected to {url} (broker {url} refused sim-00")
    assert "pass --broker-dir DIR (the directory of `tinyfleet broker start --dir DIR`)" in line
    assert time.monotonic() - t0 < 20  # a refusal is final: no waiting out the 30 s quorum timeout

    ok = CliRunner().invoke(app, ["federate", "run", "--task", "sine", "--rounds", "1", "--simulate", "2",
                                  "--broker-dir", str(d), "--out", str(tmp_path / "runs"), "--run-id", "enrolled",
                                  "--local-steps", "5", "--json"])
    assert ok.exit_code == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["rounds"][0]["replies"] == 2


def test_sampling_through_the_registry_uses_its_records(tmp_path: Path) -> None:
    """`--registry DIR`: the registry's device records, not the retained TDs, decide who is sampled."""
    from devices.boards import get_board
    from devices.wire.thing_description import thing_description
    from registry.ingest_device import add_device
    from registry.store import open_store

    store = open_store(tmp_path / "reg")
    try:
        for device_id, use_case in (("sim-0000", "sine"), ("sim-0001", "keywords")):
            add_device(store, thing_description(device_id=device_id, fleet=DEFAULT_FLEET, board=get_board("nano33ble"),
                                                use_case=use_case, host="127.0.0.1", port=1883))
    finally:
        store.close()
    base = ["federate", "run", "--task", "sine", "--rounds", "2", "--simulate", "2", "--registry",
            str(tmp_path / "reg"), "--out", str(tmp_path / "runs"), "--local-steps", "5", "--quorum-timeout", "5",
            "--json"]
    r = CliRunner().invoke(app, [*base, "--run-id", "both"])
    assert r.exit_code == 1
    assert "only 1 of the 2 required devices" in r.stderr
    assert "sim-0001: its registry record declares use case 'keywords', the run learns 'sine'" in r.stderr
    ok = CliRunner().invoke(app, [*base, "--run-id", "one", "--quorum", "1"])
    assert ok.exit_code == 0, ok.stderr[-2000:]
    assert [(r["sampled"], r["replies"]) for r in json.loads(ok.stdout)["rounds"]] == [(1, 1), (1, 1)]
