"""Checks a device reply must pass before it may reach a strategy's aggregate.

A device can send anything: the wrong number or shape of arrays, NaN, a huge update (a broken or
hostile device), metrics Flower cannot average. Flower's own consistency check raises out of
`Strategy.start` and would end the whole run, so the Grid runs these checks first and turns every
violation into an error reply (a counted failure) with a short reason.

Two reply encodings exist for training replies:

* ``dense``: the same array keys and shapes that were sent (FedAvg, Reptile);
* ``top-p``: for every sent key ``k`` the pair ``k.idx`` (uint32 flat indices) and ``k.val``
  (float32 values) of the update φ − θ (TinyMetaFed's selective communication).

Numbers are checked in the type they are used in: tensors after conversion to float32 (a float64
1e300 is finite but becomes inf), metrics against the float32 range. Beyond single replies, the
round-level rules live here too: update norms and metric values far from the round's median, and
the weights (`num-examples`) the server grants, which it decides, not the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from devices.exceptions import SparseEncodingError
from devices.wire.protocol import (
    ERROR_CODES,
    REQUIRED_METRICS,
    SPARSE_INDEX_SUFFIX,
    SPARSE_VALUE_SUFFIX,
    ConfigKey,
    Encoding,
    MessageType,
    MetricKey,
    weight_names,
)
from devices.wire.sparse import top_p_decode

WEIGHT_KEY = MetricKey.NUM_EXAMPLES
ENCODING_KEY = "reply-encoding"
DENSE, TOP_P = Encoding.DENSE, Encoding.TOP_P
IDX_SUFFIX, VAL_SUFFIX = SPARSE_INDEX_SUFFIX, SPARSE_VALUE_SUFFIX
MAX_EXAMPLES = 10**9
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_TEXT = 200
"""Longest device-chosen text (an error reason) that reaches a log line or a Flower error message."""


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
        if not _finite_float32(value):
            raise RejectedReply("non-finite", f"{phase} metric {key!r} is not a finite float32 number")
        out[key] = value
    missing = [k for k in REQUIRED_METRICS.get(_PHASE_TASKS.get(phase, ""), ()) if k not in out]
    if missing:
        raise RejectedReply("bad-metrics",
                            f"{phase} reply lacks the required metric(s) {', '.join(map(repr, missing))}")
    n = out.get(WEIGHT_KEY)
    if not isinstance(n, int) or not 0 < n <= MAX_EXAMPLES:
        raise RejectedReply("bad-metrics", f"{WEIGHT_KEY!r} must be an integer in [1, {MAX_EXAMPLES}], got {n!r}")
    return out


def _finite_float32(value: int | float) -> bool:
    """Whether `value` is finite and within the float32 range (a huge JSON integer is neither)."""
    try:
        return math.isfinite(value) and abs(value) <= FLOAT32_MAX
    except OverflowError:
        return False


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
            with np.errstate(over="ignore", invalid="ignore"):
                phi32 = phi.astype(np.float32, copy=False)  # checked after conversion: 1e300 becomes inf
            if not np.all(np.isfinite(phi32)):
                raise RejectedReply("non-finite", f"array {key!r} contains NaN or inf as float32")
            sq += float(np.sum((phi32.astype(np.float64) - theta.astype(np.float64)) ** 2))
            out[key] = phi32
        return out, math.sqrt(sq)
    if encoding == TOP_P:
        expected = {k + s for k in sent for s in (IDX_SUFFIX, VAL_SUFFIX)}
        if set(arrays) != expected:
            raise RejectedReply("wrong-keys", f"expected arrays {sorted(expected)}, got {sorted(arrays)}")
        sq = 0.0
        for key, theta in sent.items():
            idx = np.asarray(arrays[key + IDX_SUFFIX])
            with np.errstate(over="ignore", invalid="ignore"):
                val = np.asarray(arrays[key + VAL_SUFFIX]).astype(np.float32, copy=False)
            try:
                top_p_decode(idx, val, theta.shape)
            except SparseEncodingError as exc:
                reason = "non-finite" if "NaN" in str(exc) else "bad-sparse"
                raise RejectedReply(reason, f"array {key!r}: {exc}") from None
            sq += float(np.sum(val.astype(np.float64) ** 2))
        out = {k: np.asarray(v) for k, v in arrays.items()}
        out.update({k + VAL_SUFFIX: np.asarray(arrays[k + VAL_SUFFIX]).astype(np.float32, copy=False) for k in sent})
        return out, math.sqrt(sq)
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


def metric_outlier_indices(values: Sequence[float], *, factor: float, min_replies: int = 3) -> list[int]:
    """Indices of metric values (loss, ...) whose magnitude exceeds `factor` × max(|median|, 1).

    Why so loose: honest losses differ by orders of magnitude between devices (a sine of amplitude
    0.1 against one of 5), so only absurd values are refused; the floor of 1 keeps a round whose
    median is ~0 (accuracy 0, a fitted loss) from rejecting every non-zero value.
    """
    if len(values) < min_replies:
        return []
    med = abs(float(np.median(np.asarray(values, dtype=np.float64))))
    limit = factor * max(med, 1.0)
    return [i for i, v in enumerate(values) if abs(v) > limit]


def granted_examples(claimed: int, cap: int | None) -> int:
    """The weight the server grants a train reply: what the device claims, at most what the task asked.

    A device trains `local-steps` online steps on one sample each (batch 1, docs/protocol.md), so it
    cannot have learned from more examples in this round; claiming 10^9 must not buy the model.
    """
    return claimed if cap is None else max(1, min(claimed, int(cap)))


def evaluation_weight_cap(claims: Sequence[int]) -> int:
    """The most examples one evaluation reply may weigh: the round's lower median claim.

    Evaluation sets are the devices' own (no task says how large), so the yardstick is the fleet:
    with a lower median even one attacker of two weighs no more than the honest device.
    """
    ordered = sorted(int(c) for c in claims)
    return ordered[(len(ordered) - 1) // 2] if ordered else 1



def device_error_reason(code: str) -> str:
    """The ledger reason of a device's error reply: ``device-error:<code>`` for protocol codes, else ``other``.

    Why not the code as sent: it is device-chosen text (60,000 characters were tried) that would land
    verbatim in metrics.jsonl, `--json` output and logs.
    """
    return f"device-error:{code if code in ERROR_CODES else 'other'}"


def one_line(text: str, limit: int = MAX_TEXT) -> str:
    """Device-chosen text (an error reason) cut to one printable line of at most `limit` characters."""
    flat = "".join(c if c.isprintable() else " " for c in text[:limit])
    return flat + ("…" if len(text) > limit else "")


def expected_reply(sent: dict[str, np.ndarray], config: Mapping[str, object]) -> dict[str, np.ndarray]:
    """The arrays a train reply must answer: all that were sent except the device's local layers."""
    local = config.get(ConfigKey.LOCAL_LAYERS)
    keep = {f"{p}{i}" for i in (local if isinstance(local, list | tuple) else ()) if isinstance(i, int)
            for p in ("w", "b")}
    return {k: v for k, v in sent.items() if k not in keep}


def as_sent(arrays: dict[str, np.ndarray], sent_keys: list[str]) -> dict[str, np.ndarray]:
    """Give a device's result tensors back the keys the strategy used.

    Devices name result tensors by position (``w0, b0, w1, ...``, and ``w0.idx``/``w0.val`` for a
    sparse update), whatever the task's tensors were called; a Flower user's
    ``ArrayRecord([w, b])`` has keys ``"0", "1"``. Without this, every reply to such a strategy
    would be rejected as ``wrong-keys``.
    """
    canonical = weight_names(len(sent_keys))
    if sent_keys == canonical:
        return arrays
    back = dict(zip(canonical, sent_keys, strict=True))
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        base, dot, suffix = name.partition(".")
        out[back.get(base, base) + dot + suffix] = value
    return out
