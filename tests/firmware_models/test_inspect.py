"""Inspection of real int8 flatbuffers: MACs by hand, params, quantization, bad files, no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firmware_models.exceptions import ModelFileError
from firmware_models.tflite_inspect import inspect_bytes, op_macs, read_model_bytes
from tests.support.models import TINY_CNN_MACS, TINY_CNN_PARAMS


def test_tiny_cnn_macs_match_hand_computed_values(tiny_cnn_tflite: Path) -> None:
    # Execute
    report = inspect_bytes(tiny_cnn_tflite.read_bytes(), source=str(tiny_cnn_tflite))
    # Assert: each MAC-bearing operator once, with the hand-computed count
    by_op = {o.op: o.macs for o in report.ops if o.macs}
    assert by_op == TINY_CNN_MACS
    assert report.macs == sum(TINY_CNN_MACS.values()) == 3096
    assert report.params == TINY_CNN_PARAMS == 301
    assert [o.op for o in report.ops if o.op in TINY_CNN_MACS] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]


def test_tiny_cnn_io_is_full_int8_with_quantization(tiny_cnn_tflite: Path) -> None:
    report = inspect_bytes(tiny_cnn_tflite.read_bytes())
    (inp,), (out,) = report.inputs, report.outputs
    assert (inp.dtype, inp.shape) == ("int8", [1, 8, 8, 2])
    assert (out.dtype, out.shape) == ("int8", [1, 5])
    assert inp.scale is not None and inp.scale > 0 and -128 <= inp.zero_point <= 127
    assert out.scale is not None and out.scale > 0
    assert report.flash_bytes == tiny_cnn_tflite.stat().st_size
    assert len(report.sha256) == 64


def test_op_macs_formulas_on_shapes() -> None:
    # Conv: 10x10x8 output, 3x3 kernel over 4 input channels
    assert op_macs("CONV_2D", [[1, 12, 12, 4], [8, 3, 3, 4], [8]], [[1, 10, 10, 8]]) == 10 * 10 * 8 * 36
    assert op_macs("DEPTHWISE_CONV_2D", [[1, 12, 12, 8], [1, 5, 5, 8], [8]], [[1, 8, 8, 8]]) == 8 * 8 * 8 * 25
    assert op_macs("FULLY_CONNECTED", [[2, 7], [3, 7], [3]], [[2, 3]]) == 2 * 3 * 7
    assert op_macs("TRANSPOSE_CONV", [[4], [6, 3, 3, 2], [1, 5, 5, 2]], [[1, 10, 10, 6]]) == 5 * 5 * 2 * 9 * 6
    assert op_macs("ADD", [[1, 4], [1, 4]], [[1, 4]]) == 0


@pytest.mark.parametrize("content, problem", [
    (None, "model file not found"),
    (b"", "empty file"),
    (b"\x00\x01", "truncated"),
    (b"PK\x03\x04 this is a zip, not a model", "not a TFLite flatbuffer (bad identifier"),
])
def test_bad_files_raise_one_line_naming_the_file(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "bad.tflite"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match="bad.tflite: ") as info:
        read_model_bytes(path)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_every_truncation_of_a_real_model_is_refused(tiny_cnn_tflite: Path) -> None:
    data = tiny_cnn_tflite.read_bytes()
    for cut in range(8, len(data), max(1, len(data) // 97)):
        with pytest.raises(ModelFileError, match="truncated|corrupt"):
            inspect_bytes(data[:cut], source="cut.tflite")


def test_inspection_does_not_import_tensorflow(tiny_cnn_tflite: Path) -> None:
    code = ("import sys; from firmware_models.tflite_inspect import inspect_tflite;"
            f"r = inspect_tflite({str(tiny_cnn_tflite)!r}, measure_arena=False); assert r.macs == 3096;"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
