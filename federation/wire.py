"""The Grid's codec on top of the devices' wire protocol (`devices.wire.protocol`, docs/protocol.md).

Flower array keys travel as tensor names (the head's ``w0, b0, w1, ...``). A sparse result tensor
(TinyMetaFed's Top-P update of layer ``k``) becomes the two arrays ``k.idx`` (uint32) and ``k.val``
(float32) inside Flower, because an `ArrayRecord` holds dense arrays only; the strategy decodes
them with `devices.wire.sparse.top_p_decode`, the one implementation of the selection rule.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from devices.exceptions import ProtocolError
from devices.wire import protocol
from federation.exceptions import FederationError
from federation.replies import IDX_SUFFIX, VAL_SUFFIX
from federation.transport import Codec, CodecError, TaskSpec, WireReply

_TASK_TYPES = {"train": protocol.MessageType.TRAIN, "evaluate": protocol.MessageType.EVALUATE}
_REASONS = {protocol.ErrorCode.NOT_FINITE: "non-finite", protocol.ErrorCode.TOO_LARGE: "too-large",
            protocol.ErrorCode.BAD_VERSION: "bad-version"}
"""Ledger reasons for protocol error codes (the Grid's reason vocabulary, docs/federation.md); others: malformed."""

MEANINGFUL_KEYS: tuple[str, ...] = (protocol.ConfigKey.PROXIMAL_MU, protocol.ConfigKey.CLIPPING_NORM)
"""Config keys that carry a strategy's meaning: when a task has one, it is listed under ``required``.

Devices ignore unknown config keys by design, so without this a device that does not implement
FedProx's ``proximal-mu`` would train plain SGD and FedProx would silently run as FedAvg (measured
before this existed: round 1 of FedProx(μ=1) equalled FedAvg's to 1.2e-7). Keys whose loss already
fails loudly (``top-p``, ``local-layers``: the reply's arrays no longer match) are not listed, to keep
task headers small. A strategy can require further keys by setting ``config["required"]`` itself.
"""


class ProtocolCodec(Codec):
    """Encode Flower tasks as protocol-v1 frames and decode device results.

    Parameters
    ----------
    task_defaults : mapping, optional
        Config merged under every train task's own config (``local-steps`` and ``lr``, which the
        protocol requires for training), so that a stock strategy given no train config still
        produces valid tasks. Evaluate tasks get only what the strategy sets.
    max_bytes : int
        Results larger than this are refused before parsing.
    """

    def __init__(self, task_defaults: Mapping[str, Any] | None = None, *,
                 max_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES) -> None:
        self.task_defaults = dict(task_defaults or {})
        self.max_bytes = max_bytes

    def encode_task(self, task: TaskSpec) -> bytes:
        """One task frame; a config the protocol refuses is a server-side mistake and raises."""
        mtype = _TASK_TYPES[task.task_type]
        defaults = self.task_defaults if mtype == protocol.MessageType.TRAIN else {}
        config = {**defaults, **{k: _plain(v) for k, v in task.config.items()}}
        required = config.get(protocol.ConfigKey.REQUIRED, [])
        if isinstance(required, list):  # anything else is refused by the protocol's check below
            marked = sorted({*map(str, required), *(k for k in MEANINGFUL_KEYS if k in config)})
            if marked:
                config[protocol.ConfigKey.REQUIRED] = marked
        tensors = [(k, np.asarray(v, np.float32)) for k, v in task.arrays.items()]
        try:
            _, frame = protocol.encode_task(mtype, config=config, run=task.run_id, server_round=int(task.server_round),
                                            task_id=task.message_id, extra_tensors=tensors)
            return frame
        except ProtocolError as exc:
            raise FederationError(f"cannot encode the {task.task_type} task of round {task.server_round}: {exc}") \
                from None

    def decode_reply(self, payload: bytes) -> WireReply:
        """Decode one result frame; framing, version, tensor table and NaN checks are the protocol's."""
        try:
            frame = protocol.decode_result(payload, max_bytes=self.max_bytes)
        except ProtocolError as exc:
            raise CodecError(f"{exc.code}: {exc}", _reply_to_of(payload),
                             reason=_REASONS.get(exc.code, "malformed")) from None
        hdr = frame.header
        reply_to = hdr.get("reply-to")
        if not isinstance(reply_to, str):
            raise CodecError("result names no request ('reply-to')")
        arrays: dict[str, np.ndarray] = {}
        for name, tensor in frame.tensors:
            if isinstance(tensor, protocol.SparseTensor):
                arrays[name + IDX_SUFFIX] = np.asarray(tensor.indices, np.uint32)
                arrays[name + VAL_SUFFIX] = np.asarray(tensor.values, np.float32)
            else:
                arrays[name] = tensor
        if len(arrays) != len(frame.tensors) + sum(isinstance(t, protocol.SparseTensor) for _, t in frame.tensors):
            raise CodecError("result repeats a tensor name", reply_to)
        error = None
        if not hdr["ok"]:
            error = (str(hdr["error"]["code"]), str(hdr["error"]["reason"]))
        run, rnd = hdr.get("run"), hdr.get("round")
        return WireReply(correlation_id=reply_to, run_id=run if isinstance(run, str) else None,
                         server_round=int(rnd) if rnd is not None else None, device_id=str(hdr["device"]),
                         metrics=_metrics(hdr.get("metrics") or {}), arrays=arrays, error=error)


def _metrics(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol sends every metric as a JSON number; counts come back as whole floats."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k == protocol.MetricKey.NUM_EXAMPLES and isinstance(v, float) and v.is_integer():
            v = int(v)
        out[k] = v
    return out


def _plain(value: Any) -> Any:
    """Flower config values to JSON-able values (lists stay lists, numpy scalars become Python)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _reply_to_of(payload: bytes) -> str | None:
    """Best effort: the request id named by a result whose body is broken (to fail that request)."""
    try:
        (hlen,) = struct.unpack_from("<I", payload, 0)
        if hlen > protocol.MAX_HEADER_BYTES:
            return None
        hdr = json.loads(payload[4:4 + hlen].decode("utf-8"))
        rt = hdr.get("reply-to") if isinstance(hdr, dict) else None
        return rt if isinstance(rt, str) and len(rt) <= 128 else None
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
