"""Binary frames: ``u32 LE header_len | UTF-8 JSON header | data section`` with dense and sparse tensors.

Frames carry tasks and results. The header's ``tensors`` list names every tensor with dtype,
shape, byte offset (from the start of the data section, 8-byte aligned) and byte count; values are
raw little-endian. A sparse tensor (Top-P update) stores ``nnz`` flat indices followed by ``nnz``
values; the indices are uint16 (``"index_dtype": "uint16"``, index block zero-padded to 4 bytes)
when the tensor has at most 65,536 entries, else uint32 (the default when ``index_dtype`` is
absent). Decoding checks every field before touching the data, so a device or server survives
anything a peer sends: each defect is a `ProtocolError` with a protocol error code.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from devices.exceptions import ProtocolError
from devices.wire.keys import FRAME_TYPES, PROTOCOL_VERSION, ConfigKey, ErrorCode, MessageType

MAX_HEADER_BYTES = 65536
"""A header larger than this is refused before JSON parsing (bounded memory on a device)."""
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
ALIGN = 8
INDEX_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
"""Sparse index dtypes; ``index_dtype`` absent means uint32 (frames written before uint16 existed)."""
UINT16_MAX_ENTRIES = 65536
"""Largest tensor (in entries) whose sparse indices travel as uint16."""

DTYPES: dict[str, np.dtype] = {name: np.dtype(name).newbyteorder("<") for name in (
    "float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64")}
"""Wire dtypes (numpy names); always little-endian."""


# --------------------------------------------------------------------------------------------- tensors
@dataclass(frozen=True)
class SparseTensor:
    """A tensor of `shape` that is zero except at flat (C-order) `indices`."""

    indices: np.ndarray  # unsigned flat indices, unique (ascending not required); uint32 after decoding
    values: np.ndarray
    shape: tuple[int, ...]

    def to_dense(self) -> np.ndarray:
        """The dense array (zeros elsewhere)."""
        out = np.zeros(int(np.prod(self.shape, dtype=np.int64)), dtype=self.values.dtype)
        out[self.indices.astype(np.int64)] = self.values
        return out.reshape(self.shape)


Tensor = np.ndarray | SparseTensor


@dataclass
class Frame:
    """One decoded task or result: the JSON header and its tensors, in header order."""

    header: dict[str, Any]
    tensors: list[tuple[str, Tensor]] = field(default_factory=list)

    @property
    def type(self) -> str:
        return str(self.header["type"])

    @property
    def id(self) -> str:
        return str(self.header["id"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.header.get("config") or {})

    def arrays(self) -> list[np.ndarray]:
        """All tensors as dense arrays (sparse ones expanded)."""
        return [t.to_dense() if isinstance(t, SparseTensor) else t for _, t in self.tensors]


def _pad(n: int) -> int:
    return (-n) % ALIGN


def encode_frame(header: Mapping[str, Any], tensors: Iterable[tuple[str, Tensor]] = ()) -> bytes:
    """Serialize `header` plus `tensors` into one frame (the header's ``tensors`` key is filled in).

    Parameters
    ----------
    header : mapping
        Must contain ``v``, ``type`` and ``id``; any ``tensors`` entry is replaced.
    tensors : iterable of (name, ndarray or SparseTensor)
        Dense arrays must have a wire dtype (see `DTYPES`); they are written little-endian.
    """
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, t in tensors:
        if isinstance(t, SparseTensor):
            index_dtype = sparse_index_dtype(math.prod(t.shape))
            idx = np.ascontiguousarray(t.indices, dtype=INDEX_DTYPES[index_dtype]).tobytes()
            val_dt = _wire_dtype(t.values.dtype, name)
            vals = np.ascontiguousarray(t.values, dtype=val_dt).tobytes()
            body = idx + b"\0" * ((-len(idx)) % 4) + vals
            entry = {"name": name, "dtype": val_dt.name, "shape": [int(s) for s in t.shape], "encoding": "sparse",
                     "nnz": int(len(t.indices)), "offset": offset, "nbytes": len(body)}
            if index_dtype != "uint32":
                entry["index_dtype"] = index_dtype
        else:
            arr = np.asarray(t)
            dt = _wire_dtype(arr.dtype, name)
            body = np.ascontiguousarray(arr, dtype=dt).tobytes()
            entry = {"name": name, "dtype": dt.name, "shape": [int(s) for s in arr.shape], "offset": offset,
                     "nbytes": len(body)}
        entries.append(entry)
        chunks.append(body + b"\0" * _pad(len(body)))
        offset += len(body) + _pad(len(body))
    hdr = dict(header)
    hdr["tensors"] = entries
    hjson = json.dumps(hdr, separators=(",", ":"), allow_nan=False).encode()
    return struct.pack("<I", len(hjson)) + hjson + b"".join(chunks)


def sparse_index_dtype(size: int) -> str:
    """The index dtype a sparse tensor of `size` entries travels with: uint16 up to 65,536 entries, else uint32."""
    return "uint16" if size <= UINT16_MAX_ENTRIES else "uint32"


def sparse_nbytes(nnz: int, *, index_dtype: str, value_itemsize: int) -> int:
    """Bytes of a sparse tensor: index block (padded to a multiple of 4 bytes) + values.

    The padding keeps float32 values 4-byte aligned after uint16 indices, so a microcontroller
    can read them in place; uint32 indices need none, so older frames keep their exact size.
    """
    idx = nnz * INDEX_DTYPES[index_dtype].itemsize
    return idx + (-idx) % 4 + nnz * value_itemsize


def _wire_dtype(dtype: np.dtype, name: str) -> np.dtype:
    key = np.dtype(dtype).name
    if key not in DTYPES:
        raise ProtocolError(f"tensor {name!r}: dtype {key} cannot travel (use one of {', '.join(DTYPES)})",
                            code=ErrorCode.MALFORMED)
    return DTYPES[key]


def decode_frame(payload: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Parse and check one frame; every defect raises `ProtocolError` with a protocol error code.

    Checks, in order: size, header length, JSON, protocol version (``bad-version``), type, id,
    the tensor table (dtype, shape, offsets inside the data section, byte counts; ``malformed``),
    sparse indices in range and unique. Values are not checked for NaN here (a deploy chunk is
    bytes); `check_finite` does that for weights.
    """
    n = len(payload)
    if n > max_bytes:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {max_bytes} bytes", code=ErrorCode.TOO_LARGE)
    if n < 4:
        raise ProtocolError(f"frame of {n} bytes is shorter than its 4-byte length prefix")
    (hlen,) = struct.unpack_from("<I", payload, 0)
    if hlen > MAX_HEADER_BYTES or 4 + hlen > n:
        raise ProtocolError(f"header length {hlen} does not fit a frame of {n} bytes (max {MAX_HEADER_BYTES})")
    try:
        header = json.loads(payload[4:4 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON ({exc.__class__.__name__}: {exc})") from None
    check_header(header)
    data = memoryview(payload)[4 + hlen:]
    tensors = []
    for e in header.get("tensors", []):
        tensor = _read_tensor(e, data, header.get("id"))  # checks 'name' first: no KeyError on a nameless entry
        tensors.append((str(e["name"]), tensor))
    return Frame(header, tensors)


def request_id(header: Any) -> str | None:
    """The correlation id of a header, if it has a usable one (truncated to 128 characters)."""
    if isinstance(header, dict) and isinstance(header.get("id"), str):
        return str(header["id"])[:128]
    return None


def check_header(header: Any) -> None:
    """Check the common header fields and the per-type fields of a frame header."""
    rid = request_id(header)
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    v = header.get("v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {v!r} is not supported (this side speaks v{PROTOCOL_VERSION})",
                            code=ErrorCode.BAD_VERSION, request_id=rid)
    mtype = header.get("type")
    if mtype not in FRAME_TYPES:
        raise ProtocolError(f"unknown message type {mtype!r} (expected one of {', '.join(FRAME_TYPES)})",
                            code=ErrorCode.UNKNOWN_TYPE, request_id=rid)
    if rid is None or not 1 <= len(header["id"]) <= 128:
        raise ProtocolError("header has no correlation id ('id': 1-128 characters)", request_id=None)
    for key in ("run",):
        if key in header and header[key] is not None and not isinstance(header[key], str):
            raise ProtocolError(f"header field {key!r} must be a string", request_id=rid)
    if "round" in header and header["round"] is not None and not is_int(header["round"], 0):
        raise ProtocolError("header field 'round' must be an integer >= 0", request_id=rid)
    tensors = header.get("tensors", [])
    if not isinstance(tensors, list) or not all(isinstance(e, dict) for e in tensors):
        raise ProtocolError("header field 'tensors' must be a list of objects", request_id=rid)
    if mtype == MessageType.RESULT:
        _check_result_header(header, rid)
    else:
        config = header.get("config", {})
        if not isinstance(config, dict):
            raise ProtocolError("header field 'config' must be an object", request_id=rid)
        check_config(mtype, config, request_id=rid)


def _check_result_header(header: dict[str, Any], rid: str | None) -> None:
    if not (header.get("reply-to") is None or isinstance(header.get("reply-to"), str)):
        raise ProtocolError("result field 'reply-to' must be a string or null", request_id=rid)
    if not isinstance(header.get("ok"), bool):
        raise ProtocolError("result field 'ok' must be true or false", request_id=rid)
    if not isinstance(header.get("device"), str):
        raise ProtocolError("result field 'device' must be a string", request_id=rid)
    metrics = header.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and is_number(val) for k, val in metrics.items()):
        raise ProtocolError("result field 'metrics' must map names to finite numbers", request_id=rid)
    if not header["ok"]:
        err = header.get("error")
        if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("reason"), str)):
            raise ProtocolError("failed result needs 'error': {'code': str, 'reason': str}", request_id=rid)


_CONFIG_RULES: dict[str, dict[str, tuple[str, bool]]] = {
    # key: (rule, required)
    MessageType.TRAIN: {ConfigKey.SERVER_ROUND: ("int>=0", False), ConfigKey.LOCAL_STEPS: ("int>=1", True),
                        ConfigKey.LR: ("num>0", True), ConfigKey.TOP_P: ("fraction", False),
                        ConfigKey.LOCAL_LAYERS: ("int-list", False), ConfigKey.RECONSTRUCT_STEPS: ("int>=0", False),
                        ConfigKey.SEED: ("seed", False), ConfigKey.PROXIMAL_MU: ("num>=0", False),
                        ConfigKey.CLIPPING_NORM: ("num>0", False), ConfigKey.REQUIRED: ("key-list", False)},
    MessageType.EVALUATE: {ConfigKey.SERVER_ROUND: ("int>=0", False), ConfigKey.SEED: ("seed", False),
                           ConfigKey.LOCAL_LAYERS: ("int-list", False), ConfigKey.REQUIRED: ("key-list", False)},
    MessageType.ADAPT: {ConfigKey.SHOTS: ("int>=1", True), ConfigKey.STEPS: ("int>=0", True),
                        ConfigKey.LR: ("num>0", False), ConfigKey.SERVER_ROUND: ("int>=0", False),
                        ConfigKey.REQUIRED: ("key-list", False)},
    MessageType.DEPLOY: {ConfigKey.ARTIFACT: ("artifact", True), ConfigKey.SHA256: ("sha256", True),
                         ConfigKey.SIZE: ("int>=1", True), ConfigKey.CHUNK_INDEX: ("int>=0", True),
                         ConfigKey.CHUNK_COUNT: ("int>=1", True), ConfigKey.ARENA_BYTES: ("int>=0", False),
                         ConfigKey.REQUIRED: ("key-list", False)},
}
MAX_STEPS = 100_000
ARTIFACTS = ("backbone.tflite", "model.tflite")


def check_config(mtype: str, config: Mapping[str, Any], *, request_id: str | None = None) -> None:
    """Check a task's config against the rules of its type (unknown keys are allowed and ignored)."""
    for key, (rule, required) in _CONFIG_RULES.get(mtype, {}).items():
        if key not in config:
            if required:
                raise ProtocolError(f"{mtype}: config key {key!r} is required", code=ErrorCode.BAD_CONFIG,
                                    request_id=request_id)
            continue
        val = config[key]
        ok = {
            "int>=0": lambda x: is_int(x, 0) and x <= MAX_STEPS * 1000,
            "int>=1": lambda x: is_int(x, 1) and x <= 1 << 40,
            "num>0": lambda x: is_number(x) and 0 < x <= 1e3,
            "num>=0": lambda x: is_number(x) and 0 <= x <= 1e3,
            "seed": lambda x: is_int(x, 0) and x < 1 << 63,
            "key-list": lambda x: isinstance(x, list) and len(x) <= 64 and all(
                isinstance(k, str) and 0 < len(k) <= 64 for k in x),
            "fraction": lambda x: is_number(x) and 0 < x <= 1,
            "int-list": lambda x: isinstance(x, list) and len(x) <= 64 and all(is_int(i, 0) for i in x),
            "artifact": lambda x: x in ARTIFACTS,
            "sha256": lambda x: isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x),
        }[rule](val)
        if not ok:
            raise ProtocolError(f"{mtype}: config {key!r}={val!r} is invalid (expected {rule})",
                                code=ErrorCode.BAD_CONFIG, request_id=request_id)
    for key in (ConfigKey.LOCAL_STEPS, ConfigKey.STEPS, ConfigKey.RECONSTRUCT_STEPS):
        if key in config and mtype != MessageType.DEPLOY and config[key] > MAX_STEPS:
            raise ProtocolError(f"{mtype}: config {key!r}={config[key]} exceeds {MAX_STEPS}",
                                code=ErrorCode.BAD_CONFIG, request_id=request_id)
    if mtype == MessageType.DEPLOY and config[ConfigKey.CHUNK_INDEX] >= config[ConfigKey.CHUNK_COUNT]:
        raise ProtocolError(f"{mtype}: chunk-index {config[ConfigKey.CHUNK_INDEX]} is not below chunk-count "
                            f"{config[ConfigKey.CHUNK_COUNT]}", code=ErrorCode.BAD_CONFIG, request_id=request_id)


def implemented_config(mtype: str) -> frozenset[str]:
    """The config keys this implementation understands for task type `mtype` (every key it checks)."""
    return frozenset(_CONFIG_RULES.get(mtype, {}))


def unsupported_required(mtype: str, config: Mapping[str, Any], *,
                         implemented: frozenset[str] | None = None) -> list[str]:
    """Keys the task lists under ``required`` that the device does not implement (sorted, empty if none).

    Why: unknown config keys are ignored by design (Flower strategies add keys of their own), so a
    strategy whose meaning lives in a key (FedProx's ``proximal-mu``) would otherwise silently run
    as another strategy on a device that does not know the key. The server lists such keys under
    ``required``; a device answers ``unsupported-config`` instead of training something else.
    """
    listed = config.get(ConfigKey.REQUIRED) or []
    known = implemented_config(mtype) if implemented is None else implemented
    return sorted({str(k) for k in listed} - known)


def is_int(x: object, lo: int) -> TypeGuard[int]:
    """A JSON integer >= `lo` (booleans are not integers on the wire)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def is_number(x: Any) -> bool:
    """A finite JSON number (booleans excluded) that a float can hold.

    Why the `OverflowError`: JSON integers are unbounded, and a 400-digit one made `math.isfinite`
    raise out of the decoder instead of a `ProtocolError` (issue #12).
    """
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _read_tensor(e: dict[str, Any], data: memoryview, rid: str | None) -> Tensor:
    name = e.get("name")
    where = f"tensor {name!r}"
    if not isinstance(name, str):
        raise ProtocolError("a tensor entry has no string 'name'", request_id=rid)
    # a list as dtype raises TypeError here, answered as 'internal'; the C decoder's golden vectors expect that
    dt = DTYPES.get(e.get("dtype", ""))
    if dt is None:
        raise ProtocolError(f"{where}: unsupported dtype {e.get('dtype')!r}", request_id=rid)
    shape = e.get("shape")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(is_int(s, 0) for s in shape)):
        raise ProtocolError(f"{where}: shape must be a list of at most 8 integers >= 0", request_id=rid)
    size = math.prod(shape)
    off, nbytes = e.get("offset"), e.get("nbytes")
    if not (is_int(off, 0) and is_int(nbytes, 0) and off + nbytes <= len(data)):
        raise ProtocolError(f"{where}: offset/nbytes ({off}, {nbytes}) outside the {len(data)}-byte data section",
                            request_id=rid)
    raw = data[off:off + nbytes]
    encoding = e.get("encoding", "dense")
    if encoding == "dense":
        if nbytes != size * dt.itemsize:
            raise ProtocolError(f"{where}: {nbytes} bytes do not hold shape {shape} of {dt.name}", request_id=rid)
        return np.frombuffer(raw, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    if encoding != "sparse":
        raise ProtocolError(f"{where}: unknown encoding {encoding!r} (dense or sparse)", request_id=rid)
    index_dtype = e.get("index_dtype", "uint32")
    if not isinstance(index_dtype, str) or index_dtype not in INDEX_DTYPES:
        raise ProtocolError(f"{where}: sparse index_dtype must be uint16 or uint32; got {index_dtype!r}",
                            request_id=rid)
    if index_dtype == "uint16" and size > UINT16_MAX_ENTRIES:
        raise ProtocolError(f"{where}: uint16 indices cannot address shape {shape} ({size} entries)", request_id=rid)
    nnz = e.get("nnz")
    if not (is_int(nnz, 0) and nnz <= size
            and nbytes == sparse_nbytes(nnz, index_dtype=index_dtype, value_itemsize=dt.itemsize)):
        raise ProtocolError(f"{where}: sparse nnz={nnz!r} does not match {nbytes} bytes / shape {shape} "
                            f"({index_dtype} indices)", request_id=rid)
    idt = INDEX_DTYPES[index_dtype]
    idx = np.frombuffer(raw[:nnz * idt.itemsize], dtype=idt).astype(np.uint32)
    vals = np.frombuffer(raw[nbytes - nnz * dt.itemsize:], dtype=dt).astype(dt.newbyteorder("="))
    if nnz and (int(idx.max()) >= size or len(np.unique(idx)) != nnz):
        raise ProtocolError(f"{where}: sparse indices out of range [0, {size}) or repeated", request_id=rid)
    return SparseTensor(idx, vals, tuple(shape))


def check_finite(frame: Frame) -> None:
    """Raise ``not-finite`` if any floating tensor of `frame` holds NaN or infinity."""
    for name, t in frame.tensors:
        vals = t.values if isinstance(t, SparseTensor) else t
        if vals.dtype.kind == "f" and not np.all(np.isfinite(vals)):
            raise ProtocolError(f"tensor {name!r} contains NaN or infinity", code=ErrorCode.NOT_FINITE,
                                request_id=frame.header.get("id"))


def frame_header(payload: bytes) -> dict[str, Any]:
    """The JSON header of a frame without tensor checks (for logging and schema validation)."""
    (hlen,) = struct.unpack_from("<I", payload, 0)
    return json.loads(payload[4:4 + hlen].decode("utf-8"))
