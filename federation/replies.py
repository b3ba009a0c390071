"""Checks a device reply must pass before it may reach a strategy's aggregate.

A device can send anything: the wrong number or shape of arrays, NaN, a huge update (a broken or
hostile device), metrics Flower cannot average. Flower's own consistency check raises out of
`Strategy.start` and would end the whole run, so the Grid runs these checks first and turns every
violation into an error reply (a counted failure) with a short reason.

Two reply encodings exist for training replies:

* ``dense``: the same array keys and shapes that were sent (FedAvg, Reptile);
* ``top-p``: for every sent key ``k`` the pair ``k.idx`` (uint32 flat indices) and ``k.val``
  (float32 values) of the update φ − θ (TinyMetaFed's selective communication).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from devices.exceptions import SparseEncodingError
from devices.wire.protocol import (
    REQUIRED_METRICS,
    SPARSE_INDEX_SUFFIX,
    SPARSE_VALUE_SUFFIX,
    Encoding,
    MessageType,
    MetricKey,
)
from devices.wire.sparse import top_p_decode

WEIGHT_KEY = MetricKey.NUM_EXAMPLES
ENCODING_KEY = "reply-encoding"
DENSE, TOP_P = Encoding.DENSE, Encoding.TOP_P
IDX_SUFFIX, VAL_SUFFIX = SPARSE_INDEX_SUFFIX, SPARSE_VALUE_SUFFIX
MAX_EXAMPLES = 10**9


class RejectedReply(Exception):
    """A reply failed a check; `reason` is a short, countable label, `detail` the specifics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_PHASE_TASKS = {"train": MessageType.TRAIN, "evaluate": MessageType.EVALUATE}


def check_metrics(metrics: object, *, phase: str) -> dict[str, int | float]:
    """Keep finite scalar metrics; require the phase's metrics (`REQUIRED_METRICS`) and a positive
    integer `num-examples` (Flower weights by it).

    Why required metrics: the Grid keeps only the keys every reply of a phase has, so one device
    that spells its loss differently would erase the round's loss for the whole fleet.
    """
    if not isinstance(metrics, Mapping):
        raise RejectedReply("bad-metrics", f"metrics must be an object, got {type(metrics).__name__}")
    out: dict[str, int | float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RejectedReply("bad-metrics", f"metric {key!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise RejectedReply("non-finite", f"{phase} metric {key!r} is {value}")
        out[key] = value
    missing = [k for k in REQUIRED_METRICS.get(_PHASE_TASKS.get(phase, ""), ()) if k not in out]
    if missing:
        raise RejectedReply("bad-metrics",
                            f"{phase} reply lacks the required metric(s) {', '.join(map(repr, missing))}")
    n = out.get(WEIGHT_KEY)
    if not isinstance(n, int) or not 0 < n <= MAX_EXAMPLES:
        raise RejectedReply("bad-metrics", f"{WEIGHT_KEY!r} must be an integer in [1, {MAX_EXAMPLES}], got {n!r}")
    return out


def check_train_arrays(arrays: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray],
                       encoding: str) -> tuple[dict[str, np.ndarray], float]:
    """Validate reply arrays against what was sent; return them (float32) and ‖update‖₂.

    For ``dense`` the update is φ − θ; for ``top-p`` the sparse values are the update itself.
    """
    if encoding == DENSE:
        if set(arrays) != set(sent):
            raise RejectedReply("wrong-keys", f"expected arrays {sorted(sent)}, got {sorted(arrays)}")
        out: dict[str, np.ndarray] = {}
        sq = 0.0
        for key, theta in sent.items():
            phi = np.asarray(arrays[key])
            if phi.shape != theta.shape:
                raise RejectedReply("wrong-shape", f"array {key!r} has shape {phi.shape}, expected {theta.shape}")
            if phi.dtype.kind != "f":
                raise RejectedReply("wrong-dtype", f"array {key!r} has dtype {phi.dtype}, expected float")
            if not np.all(np.isfinite(phi)):
                raise RejectedReply("non-finite", f"array {key!r} contains NaN or inf")
            phi32 = phi.astype(np.float32, copy=False)
            sq += float(np.sum((phi32.astype(np.float64) - theta.astype(np.float64)) ** 2))
            out[key] = phi32
        return out, math.sqrt(sq)
    if encoding == TOP_P:
        expected = {k + s for k in sent for s in (IDX_SUFFIX, VAL_SUFFIX)}
        if set(arrays) != expected:
            raise RejectedReply("wrong-keys", f"expected arrays {sorted(expected)}, got {sorted(arrays)}")
        sq = 0.0
        for key, theta in sent.items():
            idx, val = np.asarray(arrays[key + IDX_SUFFIX]), np.asarray(arrays[key + VAL_SUFFIX])
            try:
                top_p_decode(idx, val, theta.shape)
            except SparseEncodingError as exc:
                reason = "non-finite" if "NaN" in str(exc) else "bad-sparse"
                raise RejectedReply(reason, f"array {key!r}: {exc}") from None
            sq += float(np.sum(val.astype(np.float64) ** 2))
        return {k: np.asarray(v) for k, v in arrays.items()}, math.sqrt(sq)
    raise RejectedReply("bad-encoding", f"unknown reply encoding {encoding!r}")


def outlier_indices(norms: Sequence[float], *, factor: float, min_replies: int = 3, floor: float = 0.0) -> list[int]:
    """Indices whose update norm exceeds both `factor` × the median norm of the round and `floor`.

    Why the median: one absurd update must not move the yardstick it is judged by. With fewer
    than `min_replies` replies a median says little, so nothing is rejected. Why a floor: when
    most devices already fit their data (a pretrained head on easy rooms), honest updates are
    heavy-tailed — the median is ~0 and the few devices with something to learn would be
    rejected as "absurd" although their update is small next to the parameters themselves.
    """
    if len(norms) < min_replies:
        return []
    med = float(np.median(np.asarray(norms, dtype=np.float64)))
    limit = max(factor * max(med, 1e-12), float(floor))
    return [i for i, n in enumerate(norms) if n > limit]
