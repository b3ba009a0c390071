"""The TFLM arena figure is the real minimum: exactly it works, 16 bytes less does not."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from firmware_models import arena
from firmware_models.arena import GRANULARITY, measure_arena, probe
from firmware_models.interpreters import TFLiteModel


def test_measured_arena_is_the_smallest_that_allocates_and_invokes(tiny_cnn_tflite: Path) -> None:
    # Execute
    result = measure_arena(tiny_cnn_tflite)
    # Assert: TFLM's own report is a lower bound, and the figure is tight at 16-byte granularity
    assert result.error is None and result.arena_bytes is not None
    assert result.reported_bytes is not None and result.arena_bytes >= result.reported_bytes
    assert probe(tiny_cnn_tflite, result.arena_bytes).ok
    smaller = probe(tiny_cnn_tflite, result.arena_bytes - GRANULARITY)
    assert not smaller.ok and smaller.returncode != 0
    clearly_smaller = probe(tiny_cnn_tflite, result.arena_bytes * 3 // 4)
    assert not clearly_smaller.ok


def test_tflm_runs_in_process_with_exactly_the_measured_arena(sine_build) -> None:  # noqa: ANN001
    arena = sine_build.card["arena_bytes"]
    model = TFLiteModel.from_file(sine_build.directory / "model.tflite", backend="tflm", arena_size=arena)
    q = model.invoke(np.array([[10]], dtype=np.int8))
    assert q.dtype == np.int8 and q.shape == (1, 1)


def test_non_tflm_model_reports_error_instead_of_a_number(tmp_path: Path) -> None:
    # A valid TFLite header but garbage body: TFLM must refuse, and we must not invent a figure.
    path = tmp_path / "garbage.tflite"
    path.write_bytes(b"\x18\x00\x00\x00TFL3" + bytes(200))
    result = measure_arena(path)
    assert result.arena_bytes is None and result.error
    # TFLM's refusal depends on the bytes only: the same bytes under another name are not probed again.
    copy = tmp_path / "same_bytes.tflite"
    copy.write_bytes(path.read_bytes())
    assert measure_arena(copy) == result
    assert hashlib.sha256(path.read_bytes()).hexdigest() in arena._MEASURED
