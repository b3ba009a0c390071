"""The tinyfleet wire protocol, version 1: the one module both sides import.

The device agent decodes tasks and encodes results with it; the server (the Flower grid in
`federation/`) encodes tasks and decodes results. It is Flower-free and TensorFlow-free on purpose,
and `docs/protocol.md` describes the same bytes for implementers in other languages. The names
(`keys`) and the binary frame codec (`frames`) live in their own modules and are re-exported here,
so callers write ``from devices.wire.protocol import ...`` for everything.

Floats never travel as JSON lists: a 10k-parameter head is 40 kB binary instead of ~200 kB of text,
and an MCU can point straight into the buffer. TD, presence and telemetry are plain JSON documents,
because generic MQTT/WoT tooling must read them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devices.exceptions import ProtocolError
from devices.wire.frames import (
    ALIGN,
    ARTIFACTS,
    DEFAULT_MAX_FRAME_BYTES,
    DTYPES,
    INDEX_DTYPES,
    MAX_HEADER_BYTES,
    MAX_STEPS,
    UINT16_MAX_ENTRIES,
    Frame,
    SparseTensor,
    Tensor,
    check_config,
    check_finite,
    check_header,
    decode_frame,
    encode_frame,
    frame_header,
    implemented_config,
    is_int,
    request_id,
    sparse_index_dtype,
    sparse_nbytes,
    unsupported_required,
)
from devices.wire.keys import (
    ERROR_CODES,
    FRAME_TYPES,
    METRIC_KEYS,
    PROTOCOL_VERSION,
    REQUIRED_METRICS,
    SPARSE_INDEX_SUFFIX,
    SPARSE_VALUE_SUFFIX,
    TASK_TYPES,
    ConfigKey,
    Encoding,
    ErrorCode,
    MessageType,
    MetricKey,
    ReplyEncoding,
)
from firmware_models.head_format import weight_names

__all__ = [
    "ALIGN", "ARTIFACTS", "ConfigKey", "DEFAULT_CHUNK_BYTES", "DEFAULT_MAX_FRAME_BYTES", "DTYPES", "ERROR_CODES",
    "Encoding", "ErrorCode", "FRAME_TYPES", "Frame", "INDEX_DTYPES", "MAX_HEADER_BYTES", "MAX_STEPS", "METRIC_KEYS",
    "MessageType", "MetricKey", "PROTOCOL_VERSION", "REQUIRED_METRICS", "ReplyEncoding", "SCHEMA_DIR",
    "SPARSE_INDEX_SUFFIX", "SPARSE_VALUE_SUFFIX", "SparseTensor", "TASK_TYPES", "Tensor", "UINT16_MAX_ENTRIES",
    "check_config", "check_finite", "check_header", "decode_frame", "decode_json_document", "decode_result",
    "encode_deploy", "encode_frame", "encode_result", "encode_task", "frame_header", "implemented_config",
    "load_schema", "new_id",
    "presence_payload", "request_id", "sha256_hex", "sparse_index_dtype", "sparse_nbytes", "telemetry_payload",
    "unsupported_required", "weight_names",
]

DEFAULT_CHUNK_BYTES = 48 * 1024
"""Deploy chunk size: with the header it stays below a 64 KiB broker `max_packet_size`."""
SCHEMA_DIR = Path(__file__).with_name("schemas")


# --------------------------------------------------------------------------------------------- builders
def new_id() -> str:
    """A fresh correlation id (random UUID4, 32 hex digits)."""
    return uuid.uuid4().hex


def encode_task(mtype: str, *, config: Mapping[str, Any] | None = None, weights: Sequence[np.ndarray] = (),
                run: str | None = None, server_round: int | None = None, task_id: str | None = None,
                extra_tensors: Sequence[tuple[str, Tensor]] = ()) -> tuple[str, bytes]:
    """Build a task frame; returns ``(correlation id, bytes)``. Weights travel dense, named w0, b0, ...

    The one task builder: the federation grid's codec calls it once per device (passing its named
    arrays as `extra_tensors`) and remembers the id. The config is checked against the task type's
    rules first, so a server can never send a task the protocol refuses.
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
    and ``task`` are copied from the request so the server can route the reply without state. ``run``
    and ``round`` are always present (null when the task had none): the coordinator rejects a
    reply without them, so the result schema requires them. Integer metrics (``num-examples``)
    stay JSON integers; everything else travels as a float.
    """
    req = dict(request or {})
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": MessageType.RESULT, "id": new_id(),
                              "reply-to": request_id(req), "device": device,
                              "task": req.get("type") if req.get("type") in TASK_TYPES else None,
                              "run": req.get("run") if isinstance(req.get("run"), str) else None,
                              "round": req.get("round") if is_int(req.get("round"), 0) else None,
                              "ts": round(time.time(), 3), "ok": error is None,
                              "metrics": {k: _metric_value(v) for k, v in (metrics or {}).items()}}
    if error is not None:
        code, reason = error
        header["error"] = {"code": code, "reason": reason[:500]}
    if extra:
        header.update(extra)
    return encode_frame(header, tensors)


def _metric_value(value: Any) -> int | float:
    """A metric as it travels: integers (Python or numpy) stay integers, other numbers become floats."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


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
    """A JSON Schema shipped in ``devices/wire/schemas/`` (e.g. ``"task.train"``, ``"result"``, ``"presence"``)."""
    path = SCHEMA_DIR / f"{name}.schema.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such schema")
    return json.loads(path.read_text())
