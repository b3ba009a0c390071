"""Shared check of a quick real build (used by test_usecase_{characters,keywords,presence}.py).

Quick builds train for a few epochs on a handful of devices: they prove the pipeline end to end (real
Keras training, real int8 conversion, real TFLM arena, LiteRT metrics) and the budgets of issue
#4; quality floors are measured by `python -m benchmarks.models`, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from firmware_models.interpreters import TFLiteModel
from firmware_models.usecases import get_use_case
from firmware_models.usecases.keywords import KeywordsUseCase

KB64 = 64 * 1024


def check_quick_build(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Quick-build `name` into tmp_path, check artifacts, budgets, progress and the device path."""
    monkeypatch.setenv("TINYFLEET_CACHE_DIR", str(tmp_path / "cache"))
    stages: list[float] = []
    card = get_use_case(name).build(tmp_path, seed=0, quick=True, progress=lambda s, f: stages.append(f))
    art = tmp_path / name
    for f in ("model.tflite", "backbone.tflite", "head.npz", "card.json"):
        assert (art / f).is_file(), f
    assert json.loads((art / "card.json").read_text())["name"] == name
    assert card["backbone"]["flash_bytes"] <= KB64 and card["backbone"]["arena_bytes"] <= KB64
    assert card["head"]["params"] <= 4096
    assert 0 < card["metrics"]["int8"]["accuracy"] <= 1 and 0 < card["metrics"]["float"]["accuracy"] <= 1
    assert stages[-1] == 1.0 and stages == sorted(stages)
    backbone = TFLiteModel.from_file(art / "backbone.tflite", backend="litert")
    x = get_use_case(name).devices("heldout", 1, samples_per_device=3, seed=0)[0].x if name != "keywords" else \
        KeywordsUseCase(cache_dir=tmp_path / "cache" / "espeak").devices("heldout", 1, samples_per_device=3)[0].x
    feats = backbone.predict(x)
    with np.load(art / "head.npz") as head:
        # held-out presence rooms also carry their shot pool, so a device may hold more than 3 windows
        assert feats.shape == (len(x), head["w0"].shape[0]) and len(x) >= 3
    check_registry_match(name, art)
    return card


def check_registry_match(name: str, art: Path) -> None:
    """The built model goes into the registry with its measured figures, and matchmaking picks a board
    that has its sensors and RAM while excluding the 2 KB Uno with the reasons."""
    from devices.boards import BOARDS, get_board
    from devices.wire.thing_description import thing_description
    from registry.ingest_device import add_device
    from registry.ingest_model import add_model
    from registry.questions import explain_model
    from registry.store import open_store

    card = json.loads((art / "card.json").read_text())
    needed = set(get_use_case(name).sensors)
    fit = next(b for b in BOARDS.values() if needed <= set(b.sensors) and b.ram_bytes >= 64 * 1024)
    store = open_store(memory=True)
    try:
        model = add_model(store, art / "model.tflite", art / "card.json")
        for dev, board in (("fits", fit), ("tiny", get_board("uno"))):
            add_device(store, thing_description(device_id=dev, fleet="t", board=board, use_case=name,
                                                host="127.0.0.1", port=1883, sensors=board.sensors), online=True)
        result = explain_model(store, model)
    finally:
        store.close()
    assert [(e["name"], e["ram_needed_bytes"], e["flash_needed_bytes"]) for e in result["eligible"]] == [
        ("fits", card["arena_bytes"], card["flash_bytes"])]
    (tiny,) = result["excluded"]
    assert tiny["name"] == "tiny" and any("too little RAM" in r for r in tiny["reasons"])
