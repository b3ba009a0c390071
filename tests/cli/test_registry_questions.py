"""`tinyfleet registry match --ram/--flash/--sensor` and `registry models` in-process, on the embedded
store and on `oxigraph serve`, with --json (issue #18 item 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from registry.namespaces import REGISTRY_GRAPH
from registry.store import open_store
from tests.support.published import legacy_files
from tests.support.registry import OxigraphServer
from tinyfleet.cli.main import app


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(params=["embedded", "remote"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """Store options with the legacy How-to-Manage graph imported."""
    if request.param == "embedded":
        opts = ["--store", str(tmp_path / "reg")]
    else:
        server: OxigraphServer = request.getfixturevalue("oxigraph_server")
        opts = ["--endpoint", f"{server.url}/query", "--update-endpoint", f"{server.url}/update"]
        with open_store(endpoint=opts[1], update_endpoint=opts[3]) as st:
            st.update(f"DROP SILENT GRAPH <{REGISTRY_GRAPH}>")
    for f in legacy_files():
        code, _, err = cli("registry", "import", str(f), *opts, "--json")
        assert code == 0, err
    yield opts
    if request.param == "remote":  # the server is shared by the session: leave it empty
        with open_store(endpoint=opts[1], update_endpoint=opts[3]) as st:
            st.update(f"DROP SILENT GRAPH <{REGISTRY_GRAPH}>")


def test_boards_for_ad_hoc_requirements(where: list[str]) -> None:
    code, out, err = cli("registry", "match", "--ram", "116kB", "--flash", "531kB", "--sensor", "accelerometer",
                         "--sensor", "gyroscope", *where, "--json")
    assert code == 0, err
    assert [(r["name"], r["ram_bytes"], r["ram_needed_bytes"], r["flash_bytes"]) for r in json.loads(out)] == [
        ("Arduino-Nano-BLE-33-Tinyml-Kit_1", 187_000, 116_000, 785_000), ("Arduino-Nano-BLE-33_1", 172_000, 116_000,
                                                                          628_000)]
    code, out, _ = cli("registry", "match", "--ram", "127kB", "--flash", "576kB", "--sensor", "camera", *where,
                       "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["Arduino-Nano-BLE-33-Tinyml-Kit_1"]
    code, out, _ = cli("registry", "match", "--ram", "127kB", "--sensor", "camera", *where)  # the table for people
    assert code == 0 and "devices with RAM >= 127kB, camera" in out and "785000" in out


def test_models_for_a_sensor_or_task_ordered_by_accuracy(where: list[str]) -> None:
    code, out, err = cli("registry", "models", "--sensor", "camera", "--ram", "127kB", "--flash", "576kB", *where,
                         "--json")
    assert code == 0, err
    assert [(r["name"], r["ram_needed_bytes"], r["flash_needed_bytes"]) for r in json.loads(out)] == [
        ("Person_Detection", 94_128, 236_072), ("Visual_Alarm_Clock", 116_480, 531_624)]
    code, out, _ = cli("registry", "models", "--sensor", "microphone", "--order-by", "accuracy", *where, "--json")
    assert [(r["name"], r["value"]) for r in json.loads(out)] == [
        ("Micro_Speech_Yes_No_3", 0.932), ("Micro_Speech_Yes_No_1", 0.921), ("ARM_CNN_Small_keyword_spotting", 0.914),
        ("Micro_Speech_Forward_Backward", 0.0)]
    code, out, _ = cli("registry", "models", "--task", "classification", "--order-by", "ram", *where, "--json")
    rams = [r["ram_needed_bytes"] for r in json.loads(out)]
    assert code == 0 and rams == sorted(rams) and len(rams) == 8
    code, out, _ = cli("registry", "models", "--sensor", "microphone", "--order-by", "accuracy", *where)
    assert code == 0 and "0.932" in out


def test_bad_requirements_are_one_line_usage_errors(tmp_path: Path) -> None:
    store = ["--store", str(tmp_path / "reg")]
    for args, code, words in ((["match", "--ram", "12 parsecs"], 2, "is not a size"),
                              (["match", "--model", "x", "--ram", "1kB"], 2, "exactly one of"),
                              (["match", "--ram", "1kB", "--explain"], 2, "--explain needs"),
                              (["match", "--sensor", "Not A Kind"], 2, "sensor kind"),
                              (["match"], 2, "exactly one of")):
        got, out, err = cli("registry", *args, *store, "--json")
        assert got == code and out == "", (args, got, err)
        assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1
