"""Round-level screening of replies: what can only be judged against the other replies of a phase.

`federation.replies` checks one reply on its own (keys, shapes, float32 range, metrics). Some
rules need the whole phase: an update norm or a metric value far from the round's median (one
device must not move the yardstick it is judged by), the evaluation weights the server grants
(the round's lower median claim) and the metric keys Flower can average (the ones every valid
reply has). The Grid applies these after a phase's wait and turns each `Refusal` into a counted
error reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from federation.replies import WEIGHT_KEY, evaluation_weight_cap, metric_outlier_indices, outlier_indices

NORM_KEY = "update-norm"
MIN_MEDIAN = 3
"""Fewer replies than this have no round median: nothing is judged (sync) or a recent median is used (async)."""


@dataclass(frozen=True)
class Refusal:
    """Reply `index` of a phase must become an error: `reason` (a ledger label) and `detail`."""

    index: int
    reason: str
    detail: str


def metrics_of(reply: Message) -> MetricRecord:
    """The one MetricRecord of a valid reply (the Grid builds every reply with exactly one)."""
    return next(iter(reply.content.metric_records.values()))


def scalar(value: object) -> float:
    """A metric value as a float (the Grid only ever stores scalars, `federation.replies.check_metrics`)."""
    return float(value) if isinstance(value, (int, float)) else float("nan")


def norm_outliers(replies: list[Message], theta_norm: float, *, factor: float, floor_ratio: float,
                  history: Sequence[float] = ()) -> list[Refusal]:
    """Train replies whose update norm exceeds `factor` × the round's median and `floor_ratio` × ‖θ‖.

    `history`: update norms accepted recently (asynchronous runs, `federation.buffered`). A buffer
    of fewer than `MIN_MEDIAN` replies has no median worth the name, so its norms are judged
    against the median of this history instead (when it holds at least `MIN_MEDIAN` norms);
    without it such a buffer would let any finite update through.
    """
    ok = [i for i, r in enumerate(replies) if not r.has_error() and NORM_KEY in metrics_of(r)]
    norms = [scalar(metrics_of(replies[i])[NORM_KEY]) for i in ok]
    floor = floor_ratio * theta_norm
    if len(norms) < MIN_MEDIAN and len(history) >= MIN_MEDIAN:
        med = float(np.median(np.asarray(history, dtype=np.float64)))
        limit = max(factor * max(med, 1e-12), floor)
        return [Refusal(ok[j], "absurd-norm", f"update norm {n:.3g} > {factor:g} x recent median {med:.3g} and > "
                                              f"{floor_ratio:g} x |theta| ({floor:.3g})")
                for j, n in enumerate(norms) if not n <= limit]
    bad = outlier_indices(norms, factor=factor, floor=floor)
    med = float(np.median(norms)) if norms else 0.0
    return [Refusal(ok[j], "absurd-norm", f"update norm {norms[j]:.3g} > {factor:g} x median {med:.3g} and > "
                                          f"{floor_ratio:g} x |theta| ({floor:.3g})") for j in bad]


def parameter_norm(record: ArrayRecord | None) -> float:
    """‖θ‖ of the parameters a request carried, over its float arrays only.

    Why float only: the int8 codes of a delta-q8 downlink (TinyMetaFed) are not parameters.
    """
    arrays = [v.numpy() for v in record.values()] if record is not None else []
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays if a.dtype.kind == "f")))


def phase_refusals(replies: list[Message], theta_norm: float, *, norm_factor: float, norm_floor: float,
                   metric_factor: float, history: Sequence[float] = ()) -> list[Refusal]:
    """Every round-level refusal of a phase (`norm_outliers`, then `metric_outliers`), one per reply at most."""
    refusals = norm_outliers(replies, theta_norm, factor=norm_factor, floor_ratio=norm_floor, history=history)
    refused = {r.index for r in refusals}
    return refusals + [r for r in metric_outliers(replies, factor=metric_factor) if r.index not in refused]


def metric_outliers(replies: list[Message], *, factor: float) -> list[Refusal]:
    """Replies with a metric value (loss, ...) beyond `factor` × max(|round median|, 1).

    Why: Flower averages the metrics of the valid replies, so one device could otherwise set the
    round's reported loss (and every decision taken on it) to whatever it likes.
    """
    ok = [(i, metrics_of(r)) for i, r in enumerate(replies) if not r.has_error()]
    keys: set[str] = set.intersection(*(set(m) for _, m in ok)) - {WEIGHT_KEY, NORM_KEY} if ok else set()
    bad: dict[int, str] = {}
    for key in sorted(keys):
        values = [scalar(m[key]) for _, m in ok]
        med = abs(float(np.median(values)))
        for j in metric_outlier_indices(values, factor=factor):
            bad.setdefault(ok[j][0], f"metric {key!r} = {values[j]:.3g} > {factor:g} x max(|median| {med:.3g}, 1)")
    return [Refusal(i, "absurd-metric", why) for i, why in sorted(bad.items())]


def cap_evaluation_weights(replies: list[Message]) -> None:
    """Grant no evaluation reply more examples than the round's lower median claim (the server decides)."""
    records = [metrics_of(r) for r in replies if not r.has_error()]
    if len(records) < 2:
        return
    cap = evaluation_weight_cap([int(scalar(m[WEIGHT_KEY])) for m in records])
    for m in records:
        m[WEIGHT_KEY] = min(int(scalar(m[WEIGHT_KEY])), cap)


def harmonize_metrics(replies: list[Message]) -> None:
    """Keep only metric keys every valid reply has: Flower aborts the run on differing key sets."""
    records = [metrics_of(r) for r in replies if not r.has_error()]
    if len(records) < 2:
        return
    common = set.intersection(*(set(m) for m in records))
    for m in records:
        for key in [k for k in m if k not in common]:
            del m[key]
