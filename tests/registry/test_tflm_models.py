"""Models TFLite Micro cannot run, the static arena estimate, identical files with two names (issue #18 items 7, 8).

The hybrid model is built here with the TF converter's dynamic-range quantization (int8 weights,
float activations: what TOCO-era "quantized" models like the published Person_Detection are), so
TFLM really refuses it and its own reason is what the user reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from firmware_models.arena import MAX_ARENA, measure_arena, probe
from firmware_models.tflite_inspect import inspect_tflite
from tinyfleet.cli.main import app

HYBRID_REASON = "Hybrid models are not supported on TFLite Micro."


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def hybrid_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv2D(32, 3x3) + Dense(4) with dynamic-range quantization: int8 weights, float activations."""
    from firmware_models.quiet import quiet_tensorflow_env

    quiet_tensorflow_env()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(32, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(4)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data set: hybrid
    path = tmp_path_factory.mktemp("hybrid") / "hybrid_person_like.tflite"
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def conv_int8_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-int8 CNN bigger than the tiny one: conv 16, depthwise, max-pool, conv 32, dense 10, softmax."""
    from firmware_models.convert import to_full_int8
    from firmware_models.quiet import quiet_tensorflow_env

    quiet_tensorflow_env()
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((24, 24, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.DepthwiseConv2D(3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.Flatten(), keras.layers.Dense(10),
        keras.layers.Softmax()])
    x = np.random.default_rng(3).normal(size=(32, 24, 24, 1)).astype(np.float32)
    path = tmp_path_factory.mktemp("convint8") / "conv_int8.tflite"
    path.write_bytes(to_full_int8(model, x, n_calibration=32))
    return path


def test_a_model_tflm_refuses_is_reported_in_tflms_words(hybrid_tflite: Path, tmp_path: Path) -> None:
    report = inspect_tflite(hybrid_tflite)
    assert report.arena_bytes is None
    assert report.arena_error is not None and "\n" not in report.arena_error
    assert HYBRID_REASON in report.arena_error and "Node CONV_2D (number 0) failed to prepare" in report.arena_error
    assert "does not fit" not in report.arena_error and report.arena_probes == 2  # one generous, one at the maximum
    assert report.arena_estimate_bytes and report.arena_estimate_bytes > report.arena_estimate["planned_bytes"] > 0
    assert not probe(hybrid_tflite, MAX_ARENA).ok  # really refused by TFLM, at any size

    code, out, err = cli("models", "inspect", str(hybrid_tflite))
    assert code == 0 and HYBRID_REASON in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli("models", "inspect", str(hybrid_tflite), "--json")
    assert code == 0 and HYBRID_REASON in json.loads(out)["arena_error"]

    store = ["--store", str(tmp_path / "reg")]
    code, out, err = cli("registry", "add-model", str(hybrid_tflite), *store, "--json")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and HYBRID_REASON in err and "--allow-static-arena" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli("registry", "add-model", str(hybrid_tflite), *store, "--allow-static-arena", "--json")
    assert code == 0, err
    added = json.loads(out)
    assert added["ram_method"] == "static-estimate" and added["ram_needed_bytes"] == report.arena_estimate_bytes
    q = tmp_path / "method.rq"
    q.write_text("SELECT ?method ?why WHERE { ?m tf:ramRequirementMethod ?method ; tf:tflmError ?why ; "
                 "s3n:hasProcedureFeature/ssn-system:inCondition ?c . ?c a tf:RAM ; rdfs:comment ?note . "
                 "FILTER(CONTAINS(?note, 'static estimate')) }")
    code, out, _ = cli("registry", "query", str(q), *store, "--json")
    rows = json.loads(out)["rows"]
    assert code == 0 and len(rows) == 1
    assert rows[0]["method"] == "static-estimate" and HYBRID_REASON in rows[0]["why"]


def test_static_estimate_is_within_10_percent_of_the_measured_arena(  # type: ignore[no-untyped-def]
        sine_build, tiny_cnn_tflite: Path, conv_int8_tflite: Path) -> None:
    sine = sine_build.directory / "model.tflite"  # its build measured the arena already (card.json)
    for path in (sine, tiny_cnn_tflite, conv_int8_tflite):
        report = inspect_tflite(path, measure_arena=False)
        measured = sine_build.card["arena_bytes"] if path == sine else measure_arena(path).arena_bytes
        assert measured, path
        estimate = report.arena_estimate_bytes
        assert estimate is not None
        assert abs(estimate - measured) <= 0.10 * measured, (path.name, estimate, measured)
        # The activation plan itself is TFLM's greedy plan to the byte.
        big = probe(path, 4 * measured, report=True)
        assert big.ok and big.reported_head == report.arena_estimate["planned_bytes"]


def test_identical_files_keep_every_published_name(sine_build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "Micro_Speech_Yes_No_3.tflite", tmp_path / "Micro_Speech_Forward_Backward.tflite"
    shutil.copy(sine_build.directory / "model.tflite", a)
    shutil.copy(sine_build.directory / "model.tflite", b)
    store = ["--store", str(tmp_path / "reg")]
    first = json.loads(cli("registry", "add-model", str(a), *store, "--json")[1])
    second = json.loads(cli("registry", "add-model", str(b), *store, "--json")[1])
    assert first["iri"] == second["iri"]  # the same bytes: one model version
    assert second["name"] == "Micro_Speech_Yes_No_3" and second["aliases"] == ["Micro_Speech_Forward_Backward"]
    again = json.loads(cli("registry", "add-model", str(a), *store, "--json")[1])
    assert again["aliases"] == ["Micro_Speech_Forward_Backward"]  # re-adding loses no name and adds none twice
    (tmp_path / "d.json").write_text(json.dumps({"id": "urn:tinyfleet:device:d", "title": "d",
                                                 "tinyfleet:board": {"tinyfleet:ramBytes": 262_144,
                                                                     "tinyfleet:flashBytes": 1_048_576}}))
    assert cli("registry", "add-device", str(tmp_path / "d.json"), *store)[0] == 0
    for name in ("Micro_Speech_Yes_No_3", "Micro_Speech_Forward_Backward"):
        code, out, err = cli("registry", "match", "--model", name, *store, "--json")
        assert code == 0, err
        assert [r["name"] for r in json.loads(out)] == ["d"]
    hits = json.loads(cli("registry", "search", "forward_backward", *store, "--json")[1])
    assert [h["iri"] for h in hits] == [first["iri"]]
