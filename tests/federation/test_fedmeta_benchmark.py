"""benchmarks.fedmeta end to end on a tiny sine protocol: the issue's summary schema, goals, plots, equal budgets."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import fedmeta, fedmeta_report
from benchmarks.fedmeta_train import METHODS, TaskProtocol

METHOD_KEYS = {"mean", "ci95", "adapt_steps", "adapt_lr", "device_steps", "bytes_up", "bytes_down"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    p = TaskProtocol(task="sine", shots=10, queries=20, fleet=12, rounds=4, per_round=4, local_steps=10,
                     seeds=(0, 1, 2), test_devices=6, val_devices=4, curve_steps=6, max_adapt_steps=3)
    mp = pytest.MonkeyPatch()
    mp.setattr(fedmeta, "ADAPT_LRS", {"regression": (0.01,)})
    mp.setattr(fedmeta, "ADAPT_LAMBDAS", (None, 1.0))
    mp.setattr(fedmeta, "SWEEPS", {"tinyreptile": ({"epsilon": 0.3}, {"epsilon": 1.0}),
                                   "tinymetafed": ({"tmf_local_steps": 10, "tmf_top_p": 0.05},
                                                   {"tmf_local_steps": 20, "tmf_top_p": 0.05})})
    try:
        res = fedmeta.run_task(p, models=None, workers=1, sweep=True)
    finally:
        mp.undo()
    details = {"tasks": {"sine": asdict(res)},
               "settings": {"workers": 1, "cpu_count": 2, "quick": True, "seconds": 1.0}}
    out = tmp_path_factory.mktemp("fedmeta")
    summary = fedmeta_report.write_all(details, out, "fedmeta_tiny")
    return details, summary, out


def test_summary_is_exactly_the_issue_schema(tiny: tuple[dict, dict, Path]) -> None:
    _, summary, out = tiny
    assert json.loads((out / "fedmeta_tiny_summary.json").read_text()) == summary
    task = summary["tasks"]["sine"]
    assert set(task) == {"metric", "shots", "seeds", "test_devices", "methods", "paired"}
    assert task["metric"] == "mse" and task["shots"] == 10 and task["seeds"] == [0, 1, 2] and task["test_devices"] == 6
    assert set(task["methods"]) == set(METHODS)
    for m in task["methods"].values():
        assert set(m) == METHOD_KEYS and m["ci95"][0] <= m["mean"] <= m["ci95"][1] and m["adapt_steps"] <= 3
    for pair in task["paired"].values():
        assert set(pair) == {"mean", "ci95"} and pair["ci95"][0] <= pair["mean"] <= pair["ci95"][1]
    assert "tinyreptile-fedavg" in task["paired"]


def test_budgets_are_equal_and_bytes_are_counted_both_ways(tiny: tuple[dict, dict, Path]) -> None:
    details, summary, _ = tiny
    m = summary["tasks"]["sine"]["methods"]
    assert {m[k]["device_steps"] for k in ("tinyreptile", "reptile", "tinymetafed", "fedavg", "joint")} == {160}
    assert all(m[k]["bytes_up"] > 0 and m[k]["bytes_down"] > 0 for k in ("tinyreptile", "reptile", "fedavg"))
    assert m["tinymetafed"]["bytes_up"] < m["reptile"]["bytes_up"] / 2
    assert m["scratch"]["device_steps"] == 0 and m["scratch"]["bytes_up"] == 0
    runs = details["tasks"]["sine"]["runs"]
    assert [r["rounds"] for r in runs["tinyreptile"]] == [16, 16, 16]   # one device per round, 4x the rounds
    sweep = details["tasks"]["sine"]["sweep"]
    assert [v["values"] for v in sweep["tinyreptile"]["values"]] == [{"epsilon": 0.3}, {"epsilon": 1.0}]
    steps = sweep["tinymetafed"]["chosen"]["tmf_local_steps"]  # 20 local steps: half the rounds, same device steps
    assert {r["rounds"] for r in runs["tinymetafed"]} == {4 if steps == 10 else 2}
    assert [r["rounds"] for r in (v for v in sweep["tinymetafed"]["values"])] == [4, 2]
    assert {r["epsilon"] for r in runs["tinyreptile"]} == {sweep["tinyreptile"]["chosen"]["epsilon"]}
    assert details["tasks"]["sine"]["validation"]["tinymetafed"]["chosen"]["readout_lambda"] == 1.0


def test_goals_plots_and_page(tiny: tuple[dict, dict, Path]) -> None:
    details, _, out = tiny
    goals = {g["goal"]: g for g in details["goals"]}
    assert any(k.startswith("sine: best method MSE") for k in goals)
    assert all(isinstance(g["met"], bool) and g["figure"] for g in goals.values())
    for name in ("fedmeta_tiny_sine_curves.png", "fedmeta_tiny_bytes.png", "fedmeta_tiny_sweeps.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "fedmeta_tiny.md").read_text()
    assert "| tinyreptile-fedavg |" in page and "**met**" in page or "**not met**" in page


def test_runs_made_apart_merge_into_one_details_file(tiny: tuple[dict, dict, Path], tmp_path: Path) -> None:
    details, _, _ = tiny
    dirs = []
    for name, wall in (("sine", 30.0), ("other", 50.0)):
        d = tmp_path / name
        d.mkdir()
        part = {"tasks": {name: details["tasks"]["sine"]}, "settings": {**details["settings"], "seconds": wall}}
        if name == "sine":
            part["mqtt_check"] = {"ok": True}
        (d / "fedmeta_details.json").write_text(json.dumps(part))
        dirs.append(d)
    merged = fedmeta.merge_details(dirs, "fedmeta")
    assert list(merged["tasks"]) == ["sine", "other"] and merged["mqtt_check"] == {"ok": True}
    assert merged["settings"]["seconds"] == 50.0 and "2 runs side by side" in merged["settings"]["note"]
