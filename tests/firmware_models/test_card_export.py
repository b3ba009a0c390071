"""The sine build's artifacts: sizes within budget, card consistent with files, C export round-trips."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from firmware_models.build import save_head
from firmware_models.c_export import c_identifier, c_source_pair, parse_c_array, write_c_source_pair
from firmware_models.exceptions import HeadFileError
from firmware_models.head_format import read_head_npz as load_head

CARD_KEYS = {"schema", "name", "task", "kind", "created", "tools", "flash_bytes", "arena_bytes", "macs", "params",
             "sha256", "inputs", "outputs", "model", "backbone", "head", "ram", "metrics", "data"}


def test_sine_fits_the_budget_and_int8_keeps_quality(sine_build) -> None:  # noqa: ANN001
    card = sine_build.card
    assert card["flash_bytes"] <= 8 * 1024
    assert card["arena_bytes"] <= 8 * 1024
    assert card["macs"] == 1 * 32 + 32 * 32 + 32 * 1
    assert card["params"] == (1 * 32 + 32) + (32 * 32 + 32) + (32 * 1 + 1)
    m = card["metrics"]
    assert m["samples"] > 0 and m["int8_backend"] == "litert"
    assert abs(m["int8"]["mse"] - m["float"]["mse"]) <= 0.10 * m["float"]["mse"]
    # The pooled model has learned the mean function, not a constant (whose MSE would be ~1.3).
    assert m["mean_function"]["float"]["mse"] < 0.3


def test_card_matches_the_files(sine_build) -> None:  # noqa: ANN001
    d: Path = sine_build.directory
    card = sine_build.card
    assert set(card) >= CARD_KEYS
    model = (d / "model.tflite").read_bytes()
    assert card["flash_bytes"] == len(model)
    assert card["sha256"] == hashlib.sha256(model).hexdigest() == card["model"]["sha256"]
    assert card["task"] == "sine" and card["backbone"] is None
    assert card["inputs"][0]["dtype"] == "int8" and card["inputs"][0]["quantization"]["scale"] > 0
    assert card["outputs"][0]["dtype"] == "int8"
    assert card["tools"]["tensorflow"] and card["tools"]["tflite-micro"]
    assert card["data"]["train_devices"] > 0 and card["data"]["generator"].endswith("sine")
    assert card["head"]["layers"] == [1, 32, 32, 1]
    assert card["head"]["sha256"] == hashlib.sha256((d / "head.npz").read_bytes()).hexdigest()
    import json

    assert json.loads((d / "card.json").read_text()) == card


def test_head_npz_has_the_device_format(sine_build) -> None:  # noqa: ANN001
    weights = load_head(sine_build.directory / "head.npz")
    assert [w.shape for w in weights] == [(1, 32), (32,), (32, 32), (32,), (32, 1), (1,)]
    assert all(w.dtype == np.float32 for w in weights)


def test_c_pair_round_trips_the_model_bytes(sine_build) -> None:  # noqa: ANN001
    d: Path = sine_build.directory
    model = (d / "model.tflite").read_bytes()
    cc = (d / "sine_model_data.cc").read_text()
    h = (d / "sine_model_data.h").read_text()
    assert "alignas(16) const unsigned char sine_model_data[]" in cc
    assert f"const unsigned int sine_model_data_len = {len(model)};" in cc
    assert "extern const unsigned char sine_model_data[];" in h
    assert "extern const unsigned int sine_model_data_len;" in h
    assert parse_c_array(cc) == model


def test_c_export_names_and_corruption(tmp_path: Path) -> None:
    assert c_identifier("kws-v2.int8") == "kws_v2_int8" and c_identifier("9lives") == "m_9lives"
    data = bytes(range(256)) * 3 + b"\x00"
    h, cc = write_c_source_pair(data, tmp_path / "c", "my-model")
    assert h.name == "my_model_model_data.h" and parse_c_array(cc.read_text()) == data
    _, text = c_source_pair(b"\x01\x02\x03", "t")
    with pytest.raises(ValueError, match="declared length 3 != array length 2"):
        parse_c_array(text.replace("0x02, ", ""))


def test_head_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(HeadFileError, match="missing.npz: head file not found"):
        load_head(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(HeadFileError, match="junk.npz: not a head.npz"):
        load_head(tmp_path / "junk.npz")
    with pytest.raises(HeadFileError, match="inconsistent shapes"):
        save_head(tmp_path / "h.npz", [np.zeros((1, 4)), np.zeros(4), np.zeros((3, 1)), np.zeros(1)])
    w = [np.ones((2, 3), np.float32), np.zeros(3, np.float32)]
    assert [a.tolist() for a in load_head(save_head(tmp_path / "ok.npz", w))] == [a.tolist() for a in w]
