"""Sparse tensors on the wire: uint16 indices for small tensors, uint32 still accepted, doc decoder agrees."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from devices.exceptions import ProtocolError
from devices.wire.protocol import (
    SparseTensor,
    decode_frame,
    encode_result,
    load_schema,
    sparse_index_dtype,
    sparse_nbytes,
)
from devices.wire.sparse import top_p_encode

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _doc_reader() -> object:
    """`read_sparse` exactly as docs/protocol.md prints it."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```python\n(def read_sparse\(t, body\):\n.*?)```", text, re.S)
    assert block is not None, "docs/protocol.md lost its read_sparse example"
    ns: dict[str, object] = {"np": np}
    exec(block.group(1), ns)  # noqa: S102 - the documentation's own code, run to keep it true
    return ns["read_sparse"]


def _frame(*tensors: tuple[str, SparseTensor]) -> bytes:
    return encode_result({"v": 1, "type": "task.train", "id": "t1"}, device="dev-1", metrics={"num-examples": 5.0},
                         tensors=list(tensors))


def _split(frame: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<I", frame)
    return json.loads(frame[4:4 + n]), frame[4 + n:]


def _sparse(shape: tuple[int, ...], p: float, seed: int = 0) -> tuple[np.ndarray, SparseTensor]:
    delta = np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)
    idx, vals = top_p_encode(delta, p)
    return delta, SparseTensor(idx, vals, shape)


@pytest.mark.parametrize(("shape", "index_dtype"), [((32, 32), "uint16"), ((7,), "uint16"),
                                                     ((256, 256), "uint16"), ((257, 256), "uint32")])
def test_index_dtype_follows_size_and_round_trips(shape: tuple[int, ...], index_dtype: str) -> None:
    # Prepare: an odd nnz exercises the uint16 padding
    delta, st = _sparse(shape, 0.01 if np.prod(shape) > 1000 else 0.3)
    nnz = len(st.indices)
    # Execute
    frame = _frame(("w", st))
    header, body = _split(frame)
    decoded = decode_frame(frame).tensors[0][1]
    # Assert: declared dtype, exact byte count, same entries back, through our decoder and the doc's
    entry = header["tensors"][0]
    assert entry.get("index_dtype", "uint32") == index_dtype == sparse_index_dtype(int(np.prod(shape)))
    idx_size = 2 if index_dtype == "uint16" else 4
    assert entry["nbytes"] == sparse_nbytes(nnz, index_dtype=index_dtype, value_itemsize=4)
    assert entry["nbytes"] == nnz * idx_size + (-nnz * idx_size) % 4 + 4 * nnz
    assert isinstance(decoded, SparseTensor)
    np.testing.assert_array_equal(decoded.indices, st.indices)
    np.testing.assert_array_equal(decoded.values, st.values)
    doc_dense = _doc_reader()(entry, body)  # type: ignore[operator]
    np.testing.assert_array_equal(doc_dense, decoded.to_dense())
    np.testing.assert_array_equal(doc_dense[doc_dense != 0], delta.reshape(-1)[np.sort(st.indices)])


def test_uint16_saves_a_quarter_of_a_float32_update() -> None:
    _, st = _sparse((32, 32), 0.1)  # 103 entries
    frame16 = _frame(("w1", st))
    h16, _ = _split(frame16)
    assert h16["tensors"][0]["nbytes"] == 2 * 104 + 4 * 103  # 103 indices padded to 104
    assert h16["tensors"][0]["nbytes"] < 0.78 * 103 * 8


def _legacy_uint32_frame(st: SparseTensor) -> bytes:
    """A frame as written before index_dtype existed: uint32 indices, no index_dtype key."""
    body = np.asarray(st.indices, "<u4").tobytes() + np.asarray(st.values, "<f4").tobytes()
    hdr, _ = _split(_frame())
    hdr["tensors"] = [{"name": "w1", "dtype": "float32", "shape": list(st.shape), "encoding": "sparse",
                       "nnz": len(st.indices), "offset": 0, "nbytes": len(body)}]
    h = json.dumps(hdr).encode()
    return struct.pack("<I", len(h)) + h + body + b"\0" * (-len(body) % 8)


def test_uint32_frames_without_index_dtype_still_decode() -> None:
    _, st = _sparse((32, 32), 0.1)
    frame = _legacy_uint32_frame(st)
    decoded = decode_frame(frame).tensors[0][1]
    assert isinstance(decoded, SparseTensor)
    np.testing.assert_array_equal(decoded.indices, st.indices)
    header, body = _split(frame)
    np.testing.assert_array_equal(_doc_reader()(header["tensors"][0], body), decoded.to_dense())  # type: ignore[operator]


def _tamper(frame: bytes, **entry: object) -> bytes:
    header, body = _split(frame)
    header["tensors"][0].update(entry)
    h = json.dumps(header).encode()
    return struct.pack("<I", len(h)) + h + body


@pytest.mark.parametrize(("change", "message"), [
    ({"index_dtype": "uint8"}, "index_dtype must be uint16 or uint32; got 'uint8'"),
    ({"index_dtype": ["uint16"]}, "index_dtype must be uint16 or uint32"),
    ({"index_dtype": "uint32"}, r"does not match .* \(uint32 indices\)"),
    ({"shape": [300, 300], "index_dtype": "uint16"}, "uint16 indices cannot address shape"),
])
def test_bad_index_dtype_is_a_one_line_protocol_error(change: dict, message: str) -> None:
    _, st = _sparse((32, 32), 0.1)
    frame = _tamper(_frame(("w1", st)), **change)
    with pytest.raises(ProtocolError, match=message) as err:
        decode_frame(frame)
    assert "\n" not in str(err.value)


def test_result_with_uint16_sparse_tensors_matches_the_schema() -> None:
    _, st = _sparse((32, 32), 0.1)
    frame = encode_result({"v": 1, "type": "task.train", "id": "t1", "run": "r", "round": 1}, device="dev-1",
                          metrics={"num-examples": 50, "train-loss": 0.1}, tensors=[("w1", st)],
                          extra={"encoding": "delta", "local-layers": [2]})
    header, _ = _split(frame)
    jsonschema.validate(header, load_schema("result"))
    bad = json.loads(json.dumps(header))
    bad["tensors"][0]["index_dtype"] = "int16"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, load_schema("result"))
