"""The tinyfleet wire protocol, version 1: frames, tensors, message builders and checks.

Both sides use this module: the device agent (decode tasks, encode results) and the server (the
Flower grid in `federation/`: encode tasks, decode results). It is Flower-free and TensorFlow-free
on purpose, and `docs/protocol.md` describes the same bytes for implementers in other languages.

Frames (tasks and results) are ``u32 LE header_len | UTF-8 JSON header | data section``. The
header's ``tensors`` list names every tensor with dtype, shape, byte offset (from the start of the
data section, 8-byte aligned) and byte count; values are raw little-endian. A sparse tensor (Top-P
update) stores ``nnz`` flat indices followed by ``nnz`` values; the indices are uint16 (declared as
``"index_dtype": "uint16"``, index block zero-padded to 4 bytes) when the tensor has at most 65,536
entries, which saves 2 of every 8 bytes of a float32 update, else uint32 (the default when
``index_dtype`` is absent). Floats never travel as
JSON lists: a 10k-parameter head is 40 kB binary instead of ~200 kB of text, and an MCU can point
straight into the buffer. TD, presence and telemetry are plain JSON documents, because generic
MQTT/WoT tooling must read them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.exceptions import ProtocolError

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 65536
"""A header larger than this is refused before JSON parsing (bounded memory on a device)."""
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
DEFAULT_CHUNK_BYTES = 48 * 1024
"""Deploy chunk size: with the header it stays below a 64 KiB broker `max_packet_size`."""
ALIGN = 8
INDEX_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
"""Sparse index dtypes; ``index_dtype`` absent means uint32 (frames written before uint16 existed)."""
UINT16_MAX_ENTRIES = 65536
"""Largest tensor (in entries) whose sparse indices travel as uint16."""
SCHEMA_DIR = Path(__file__).with_name("schemas")


class _Constants:
    def __new__(cls, *args: object, **kwargs: object) -> _Constants:
        raise TypeError(f"{cls.__name__} cannot be instantiated.")


class MessageType(_Constants):
    """The ``type`` of every message."""

    TRAIN = "task.train"
    EVALUATE = "task.evaluate"
    DEPLOY = "task.deploy"
    ADAPT = "task.adapt"
    RESULT = "result"
    PRESENCE = "presence"
    TELEMETRY = "telemetry"


TASK_TYPES = (MessageType.TRAIN, MessageType.EVALUATE, MessageType.DEPLOY, MessageType.ADAPT)
FRAME_TYPES = (*TASK_TYPES, MessageType.RESULT)


class ConfigKey(_Constants):
    """Keys of a task's ``config`` object (hyphenated, as in Flower's records)."""

    SERVER_ROUND = "server-round"
    LOCAL_STEPS = "local-steps"
    LR = "lr"
    TOP_P = "top-p"
    LOCAL_LAYERS = "local-layers"
    RECONSTRUCT_STEPS = "reconstruct-steps"
    SHOTS = "shots"
    STEPS = "steps"
    ARTIFACT = "artifact"
    SHA256 = "sha256"
    SIZE = "size"
    CHUNK_INDEX = "chunk-index"
    CHUNK_COUNT = "chunk-count"
    ARENA_BYTES = "arena-bytes"


class MetricKey(_Constants):
    """Keys of a result's ``metrics`` object."""

    NUM_EXAMPLES = "num-examples"
    TRAIN_LOSS = "train-loss"
    LOSS = "loss"
    ACCURACY = "accuracy"
    LOSS_BEFORE = "loss-before"
    LOSS_AFTER = "loss-after"
    TRAIN_SECONDS = "train-seconds"


class ErrorCode(_Constants):
    """``error.code`` values of a failed result."""

    BAD_VERSION = "bad-version"
    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown-type"
    BAD_CONFIG = "bad-config"
    BAD_SHAPE = "bad-shape"
    NOT_FINITE = "not-finite"
    TOO_LARGE = "too-large"
    NO_MODEL = "no-model"
    SHA_MISMATCH = "sha-mismatch"
    SELF_TEST_FAILED = "self-test-failed"
    DOES_NOT_FIT = "does-not-fit"
    INTERNAL = "internal"


ERROR_CODES = tuple(v for k, v in vars(ErrorCode).items() if k.isupper())

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


def _request_id(header: Any) -> str | None:
    if isinstance(header, dict) and isinstance(header.get("id"), str):
        return str(header["id"])[:128]
    return None


def check_header(header: Any) -> None:
    """Check the common header fields and the per-type fields of a frame header."""
    rid = _request_id(header)
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
    if "round" in header and header["round"] is not None and not _is_int(header["round"], 0):
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
            isinstance(k, str) and _is_number(val) for k, val in metrics.items()):
        raise ProtocolError("result field 'metrics' must map names to finite numbers", request_id=rid)
    if not header["ok"]:
        err = header.get("error")
        if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("reason"), str)):
            raise ProtocolError("failed result needs 'error': {'code': str, 'reason': str}", request_id=rid)


_CONFIG_RULES: dict[str, dict[str, tuple[str, bool]]] = {
    # key: (rule, required)
    MessageType.TRAIN: {ConfigKey.SERVER_ROUND: ("int>=0", False), ConfigKey.LOCAL_STEPS: ("int>=1", True),
                        ConfigKey.LR: ("num>0", True), ConfigKey.TOP_P: ("fraction", False),
                        ConfigKey.LOCAL_LAYERS: ("int-list", False), ConfigKey.RECONSTRUCT_STEPS: ("int>=0", False)},
    MessageType.EVALUATE: {ConfigKey.SERVER_ROUND: ("int>=0", False)},
    MessageType.ADAPT: {ConfigKey.SHOTS: ("int>=1", True), ConfigKey.STEPS: ("int>=0", True),
                        ConfigKey.LR: ("num>0", False), ConfigKey.SERVER_ROUND: ("int>=0", False)},
    MessageType.DEPLOY: {ConfigKey.ARTIFACT: ("artifact", True), ConfigKey.SHA256: ("sha256", True),
                         ConfigKey.SIZE: ("int>=1", True), ConfigKey.CHUNK_INDEX: ("int>=0", True),
                         ConfigKey.CHUNK_COUNT: ("int>=1", True), ConfigKey.ARENA_BYTES: ("int>=0", False)},
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
            "int>=0": lambda x: _is_int(x, 0) and x <= MAX_STEPS * 1000,
            "int>=1": lambda x: _is_int(x, 1) and x <= 1 << 40,
            "num>0": lambda x: _is_number(x) and 0 < x <= 1e3,
            "fraction": lambda x: _is_number(x) and 0 < x <= 1,
            "int-list": lambda x: isinstance(x, list) and len(x) <= 64 and all(_is_int(i, 0) for i in x),
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


def _is_int(x: Any, lo: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _read_tensor(e: dict[str, Any], data: memoryview, rid: str | None) -> Tensor:
    name = e.get("name")
    where = f"tensor {name!r}"
    if not isinstance(name, str):
        raise ProtocolError("a tensor entry has no string 'name'", request_id=rid)
    dt = DTYPES.get(e.get("dtype"))  # type: ignore[arg-type]
    if dt is None:
        raise ProtocolError(f"{where}: unsupported dtype {e.get('dtype')!r}", request_id=rid)
    shape = e.get("shape")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_int(s, 0) for s in shape)):
        raise ProtocolError(f"{where}: shape must be a list of at most 8 integers >= 0", request_id=rid)
    size = math.prod(shape)
    off, nbytes = e.get("offset"), e.get("nbytes")
    if not (_is_int(off, 0) and _is_int(nbytes, 0) and off + nbytes <= len(data)):
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
    if not (_is_int(nnz, 0) and nnz <= size
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


# --------------------------------------------------------------------------------------------- builders
def new_id() -> str:
    """A fresh correlation id (random UUID4, 32 hex digits)."""
    return uuid.uuid4().hex


def weight_names(n: int) -> list[str]:
    """Wire names of an MLP head's parameters in `MLPHead.get_weights()` order: w0, b0, w1, b1, ..."""
    return [f"{'w' if i % 2 == 0 else 'b'}{i // 2}" for i in range(n)]


def encode_task(mtype: str, *, config: Mapping[str, Any] | None = None, weights: Sequence[np.ndarray] = (),
                run: str | None = None, server_round: int | None = None, task_id: str | None = None,
                extra_tensors: Sequence[tuple[str, Tensor]] = ()) -> tuple[str, bytes]:
    """Build a task frame; returns ``(correlation id, bytes)``. Weights travel dense, named w0, b0, ...

    Server side helper: the federation grid calls this once per device and remembers the id.
    """
    if mtype not in TASK_TYPES:
        raise ValueError(f"not a task type: {mtype!r}")
    tid = task_id or new_id()
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": mtype, "id": tid, "ts": round(time.time(), 3),
                              "config": dict(config or {})}
    if run is not None:
        header["run"] = run
    if server_round is not None:
        header["round"] = int(server_round)
    check_config(mtype, header["config"], request_id=tid)
    tensors = [*zip(weight_names(len(weights)), (np.asarray(w, np.float32) for w in weights), strict=True),
               *extra_tensors]
    return tid, encode_frame(header, tensors)


def encode_result(request: Mapping[str, Any] | None, *, device: str, metrics: Mapping[str, float] | None = None,
                  tensors: Sequence[tuple[str, Tensor]] = (), error: tuple[str, str] | None = None,
                  extra: Mapping[str, Any] | None = None) -> bytes:
    """Build the reply to `request` (its header, or None if it was unreadable).

    ``ok`` is false exactly when `error` = (code, reason) is given; ``reply-to``, ``run``, ``round``
    and ``task`` are copied from the request so the server can route the reply without state.
    """
    req = dict(request or {})
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": MessageType.RESULT, "id": new_id(),
                              "reply-to": _request_id(req), "device": device,
                              "task": req.get("type") if req.get("type") in TASK_TYPES else None,
                              "ts": round(time.time(), 3), "ok": error is None,
                              "metrics": {k: float(v) for k, v in (metrics or {}).items()}}
    for key in ("run", "round"):
        if key in req and (isinstance(req[key], str) or _is_int(req[key], 0)):
            header[key] = req[key]
    if error is not None:
        code, reason = error
        header["error"] = {"code": code, "reason": reason[:500]}
    if extra:
        header.update(extra)
    return encode_frame(header, tensors)


def decode_result(payload: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Server side: decode a device's reply; raises `ProtocolError` for anything malformed or non-finite."""
    frame = decode_frame(payload, max_bytes=max_bytes)
    if frame.type != MessageType.RESULT:
        raise ProtocolError(f"expected a result, got {frame.type!r}", request_id=frame.header.get("id"))
    check_finite(frame)
    return frame


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 (what deploy checks and telemetry reports as the model hash)."""
    return hashlib.sha256(data).hexdigest()


def encode_deploy(model: bytes, *, artifact: str = "backbone.tflite", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                  arena_bytes: int | None = None, run: str | None = None,
                  task_id: str | None = None) -> tuple[str, list[bytes]]:
    """Split a model into deploy chunks that share one correlation id; returns ``(id, frames)``.

    Every chunk repeats the whole file's sha256 and size, so the device can verify the assembled
    file and ignore chunks of a different deployment.
    """
    if not model:
        raise ValueError("empty model")
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    tid = task_id or new_id()
    count = math.ceil(len(model) / chunk_bytes)
    base = {ConfigKey.ARTIFACT: artifact, ConfigKey.SHA256: sha256_hex(model), ConfigKey.SIZE: len(model),
            ConfigKey.CHUNK_COUNT: count}
    if arena_bytes is not None:
        base[ConfigKey.ARENA_BYTES] = int(arena_bytes)
    frames = []
    for i in range(count):
        part = np.frombuffer(model[i * chunk_bytes:(i + 1) * chunk_bytes], dtype=np.uint8)
        _, frame = encode_task(MessageType.DEPLOY, config={**base, ConfigKey.CHUNK_INDEX: i}, run=run,
                               task_id=tid, extra_tensors=[("chunk", part)])
        frames.append(frame)
    return tid, frames


# --------------------------------------------------------------------------------------------- JSON documents
def presence_payload(device: str, *, online: bool, fleet: str, board: str | None = None,
                     reason: str | None = None) -> bytes:
    """Retained presence document; the Last Will carries the same document with ``online: false``."""
    doc: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": MessageType.PRESENCE, "device": device, "fleet": fleet,
                           "online": online, "ts": round(time.time(), 3)}
    if board:
        doc["board"] = board
    if reason:
        doc["reason"] = reason
    return json.dumps(doc, separators=(",", ":")).encode()


def telemetry_payload(device: str, values: Mapping[str, Any]) -> bytes:
    """A telemetry document (loss, samples seen, memory, model hash, ...)."""
    doc = {"v": PROTOCOL_VERSION, "type": MessageType.TELEMETRY, "device": device, "ts": round(time.time(), 3),
           **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_json_document(payload: bytes, *, expected_type: str, max_bytes: int = 262144) -> dict[str, Any]:
    """Parse a presence/telemetry document and check version and type; raises `ProtocolError`."""
    if len(payload) > max_bytes:
        raise ProtocolError(f"{expected_type} document of {len(payload)} bytes exceeds {max_bytes}",
                            code=ErrorCode.TOO_LARGE)
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{expected_type} document is not UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{expected_type} document is not a JSON object")
    if doc.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"{expected_type} document has protocol version {doc.get('v')!r}",
                            code=ErrorCode.BAD_VERSION)
    if doc.get("type") != expected_type or not isinstance(doc.get("device"), str):
        raise ProtocolError(f"document of type {doc.get('type')!r} (device {doc.get('device')!r}) "
                            f"is not a {expected_type} document")
    return doc


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``devices/schemas/`` (e.g. ``"task.train"``, ``"result"``, ``"presence"``)."""
    path = SCHEMA_DIR / f"{name}.schema.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such schema")
    return json.loads(path.read_text())


def frame_header(payload: bytes) -> dict[str, Any]:
    """The JSON header of a frame without tensor checks (for logging and schema validation)."""
    (hlen,) = struct.unpack_from("<I", payload, 0)
    return json.loads(payload[4:4 + hlen].decode("utf-8"))
