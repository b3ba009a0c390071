"""Asynchronous rounds: FedBuff-style buffered aggregation with staleness weights, over any Flower Grid.

Synchronous rounds wait for every sampled device (or a timeout); with microcontrollers that sleep
most of the time, a round lasts as long as its sleepiest device. FedBuff (Nguyen et al., 2022)
instead keeps tasks in flight, folds each reply into a buffer, and updates the model as soon as
`buffer` replies are in; a reply trained from an older model version ``base`` is down-weighted by
its staleness τ = version − base, here ``s(τ) = (1 + τ) ** -alpha`` (FedBuff's and FedAsync's
polynomial choice; ``constant`` turns it off). Replies more than `max_staleness` versions old are
discarded.

The aggregation itself stays the run's strategy (Reptile, FedAvg): each buffered reply φ_i is
rewritten relative to the current parameters, φ'_i = θ_v + s(τ_i)·(φ_i − θ_base_i), and the
strategy's own `aggregate_train` turns the buffer into θ_{v+1}. For Reptile that is
θ_v + ε·mean_i s(τ_i)(φ_i − θ_base_i), FedBuff's server step with Reptile's ε; with τ = 0 it is
exactly the synchronous update.

`BufferedRun` drives a whole run (flat on a `FleetGrid`, or the top level of a hierarchy on
Flower's Grid, where the nodes are gateways); `first_replies` is the one-shot form a gateway uses
for its buffered sub-round.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from devices.wire.protocol import ConfigKey, MetricKey
from federation import flower_compat
from federation.checkpoint import load_checkpoint, save_checkpoint
from federation.coordinator import (
    CHECKPOINT_FILE,
    FINAL_FILE,
    METRICS_FILE,
    append_metrics,
    arrays_sha256,
    read_metrics,
    to_numpy,
    to_record,
    write_metrics,
)
from federation.exceptions import CheckpointError, FederationError, QuorumError
from federation.hierarchy.settings import HierarchyConfig, level_strategy, metric_number
from federation.screening import NORM_KEY

log = logging.getLogger(__name__)

NORM_HISTORY = 32
"""Recently aggregated update norms kept as the yardstick for buffers too small for a median."""

_COUNTS = ("discarded_stale", "failures", "expired", "dispatched")


@dataclass
class _Progress:
    """Where an asynchronous run stands: what each checkpoint keeps so that `BufferedRun.resume` can go on."""

    version: int
    theta: ArrayRecord
    rng: random.Random
    history: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    reasons: Counter[str] = field(default_factory=Counter)
    norms: deque[float] = field(default_factory=lambda: deque(maxlen=NORM_HISTORY))  # recently aggregated norms
    elapsed: float = 0.0
    bytes_before: tuple[int, int] = (0, 0)  # device bytes (up, down) of the process(es) before a resume


ASYNC_STRATEGIES = ("reptile", "fedavg")
"""Strategies whose replies are dense weights (TinyMetaFed's sparse updates are not rewritten)."""


def staleness_weight(tau: int, *, kind: str = "polynomial", alpha: float = 0.5) -> float:
    """Weight of a reply that is `tau` model versions old: ``(1 + tau) ** -alpha`` or 1 (``constant``)."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0; got {tau}")
    return 1.0 if kind == "constant" else float((1.0 + tau) ** -alpha)


def first_replies(grid: Grid, messages: list[Message], *, want: int, timeout: float,
                  poll: float = 0.05) -> list[Message]:
    """Push `messages`; return once `want` valid replies (or all replies) arrived, or at `timeout`.

    The rest are abandoned (`FleetGrid.forget`: counted missing, late answers discarded). On a
    `FleetGrid` the replies then go through the round-level rules of a synchronous phase
    (`FleetGrid.screen`: absurd norms and metrics become counted error replies).
    """
    pushed = grid.push_messages(messages)
    pending = set(pushed)
    ids = set(pending)
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and sum(not m.has_error() for m in out) < want:
        got = list(grid.pull_messages(pending))
        out += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        left = deadline - time.monotonic()
        if not pending or left <= 0 or sum(not m.has_error() for m in out) >= want:
            break
        _wait(grid, pending, min(left, poll * 20), poll)
    _forget(grid, ids)
    screen = getattr(grid, "screen", None)
    if screen is not None:
        out = screen(out, dict(zip(pushed, messages, strict=True)))
    return out


def _wait(grid: Grid, ids: set[str], timeout: float, poll: float) -> None:
    waiter = getattr(grid, "wait_for_replies", None)  # FleetGrid wakes on the reply; Flower's grid is polled
    if waiter is not None:
        waiter(ids, timeout)
    else:
        time.sleep(min(poll, timeout))


def _forget(grid: Grid, ids: Iterable[str]) -> None:
    forget = getattr(grid, "forget", None)
    if forget is not None:
        forget(ids)


@dataclass
class _Task:
    node: int
    version: int
    sent_at: float
    request: Message


class BufferedRun:
    """A FedBuff run: `settings.run.rounds` aggregations of `buffer` replies each.

    Parameters
    ----------
    settings : HierarchyConfig
        ``mode="async"`` settings; on a Flower Grid of gateways, `gateway_buffer` is the buffer.
    grid : Grid
        A `FleetGrid` (nodes are devices) or Flower's Grid in a ServerApp (nodes are gateways).
    run_dir : Path
        Receives ``run.json``, ``metrics.jsonl`` (one line per aggregation), ``checkpoint.npz``,
        ``final.npz`` and, per version, nothing else: old versions live in memory only as long
        as a reply may still refer to them (`max_staleness`).
    poll : float, default=0.05
        Pull period on grids that cannot wake on a reply.
    on_round : callable, optional
        Called with each aggregation's metrics record, after its checkpoint was written.
    """

    def __init__(self, settings: HierarchyConfig, grid: Grid, run_dir: Path, *, poll: float = 0.05,
                 on_round: Callable[[dict[str, Any]], None] | None = None) -> None:
        cfg = settings.run
        if cfg.strategy not in ASYNC_STRATEGIES:
            raise FederationError(f"--mode async supports {', '.join(ASYNC_STRATEGIES)}; "
                                  f"{cfg.strategy!r} sends sparse updates that cannot be re-based")
        self.settings = settings
        self.cfg = cfg
        self.grid = grid
        self.run_dir = Path(run_dir)
        self.poll = poll
        self.on_round = on_round
        self.hierarchical = not hasattr(grid, "ledger")
        # which nodes get a task is decided here, by concurrency and idleness: the strategy sees them all
        self.strategy: Strategy = level_strategy(cfg, serial=False, fraction_train=1.0)
        # flat --buffer 0: a tenth of the devices present at the start (`default_buffer`), resolved in `start`
        self.buffer_size = max(1, (settings.gateway_buffer if self.hierarchical else settings.buffer) or 1)
        if not self.hierarchical:
            flower_compat.init_task_identity(grid.run.run_id)

    # -- the loop ----------------------------------------------------------------------------------
    def start(self, initial: dict[str, np.ndarray]) -> dict[str, Any]:
        cfg = self.cfg
        cfg.save(self.run_dir)
        write_metrics(self.run_dir / METRICS_FILE, [])
        return self._run(_Progress(version=1, theta=to_record(initial), rng=random.Random(cfg.seed)))

    def resume(self) -> dict[str, Any]:
        """Continue from the last checkpointed aggregation.

        What was in flight or buffered when the run stopped is lost (those replies answer requests this
        process never sent and are dropped as unknown); devices are asked again for the checkpointed
        version, so a resumed run is not the same sequence of updates as an uninterrupted one (an
        asynchronous run never is), but every aggregation in metrics.jsonl is one the checkpoint holds.
        """
        progress = read_progress(self.run_dir, self.cfg.run_id, self.cfg.seed)
        write_metrics(self.run_dir / METRICS_FILE, progress.history)  # lines of aggregations the checkpoint lacks go
        if progress.version > self.cfg.rounds:  # killed after the last checkpoint, before final.npz
            return self._finish(progress)
        return self._run(progress)

    def _run(self, p: _Progress) -> dict[str, Any]:
        cfg = self.cfg
        nodes = self._wait_for_nodes(cfg.quorum if not self.hierarchical else self.settings.gateways,
                                     cfg.quorum_timeout)
        if not self.hierarchical and not self.settings.buffer:
            self.buffer_size = default_buffer(len(nodes))
        version, rng, counts, reasons, norms = p.version, p.rng, p.counts, p.reasons, p.norms
        thetas: dict[int, ArrayRecord] = {version: p.theta}
        inflight: dict[str, _Task] = {}
        trained_at: dict[int, int] = {}  # node -> last version it was sent (never the same version twice)
        buffer: list[tuple[Message, int]] = []
        requests: dict[str, Message] = {}  # message id -> request, for the buffered replies (screening)
        t_last = time.monotonic()
        t_start = t_last - p.elapsed  # `elapsed` goes on from where a resumed run stopped
        self._dispatch(version, thetas[version], inflight, trained_at, rng, counts)
        while version <= cfg.rounds:
            self._await(inflight)
            for reply in self._pull(inflight):
                task = inflight.pop(reply.metadata.reply_to_message_id)
                if reply.has_error():
                    counts["failures"] += 1
                    reasons[_reason(reply)] += 1
                    continue
                if version - task.version > self.settings.max_staleness:
                    counts["discarded_stale"] += 1
                    continue
                buffer.append((reply, task.version))
                requests[reply.metadata.reply_to_message_id] = task.request
            self._expire(inflight, counts)
            # a reply left over from an earlier aggregation may have aged past max_staleness meanwhile
            # (and its base version been forgotten): judge staleness again when it is about to be used
            fresh = [(r, base) for r, base in buffer if version - base <= self.settings.max_staleness]
            counts["discarded_stale"] += len(buffer) - len(fresh)
            buffer = fresh
            stuck = not inflight and not self._eligible(version, trained_at)
            if len(buffer) >= self.buffer_size or stuck:
                buffer = self._screen(buffer, requests, norms, counts, reasons)
            if stuck and len(buffer) < self.buffer_size:
                if len(buffer) < max(1, cfg.min_replies):
                    raise FederationError(
                        f"only {len(buffer)} device(s) answered version {version} and no other can (each trains a "
                        f"version once), but --buffer is {self.buffer_size} and --min-replies {cfg.min_replies}")
                log.warning("version %d: no device left to ask; aggregating a partial buffer of %d (< %d)",
                            version, len(buffer), self.buffer_size)
            if len(buffer) >= self.buffer_size or (stuck and buffer):
                used, buffer = buffer[: self.buffer_size], buffer[self.buffer_size:]
                new, record = self._aggregate(version, thetas, used)
                now = time.monotonic()
                record.update({"round": version, "seconds": round(now - t_last, 4),
                               "elapsed": round(now - t_start, 4), "in_flight": len(inflight), **counts,
                               "reasons": dict(sorted(reasons.items()))})
                record.update(self._bytes(version, used, p.bytes_before))
                t_last = now
                if new is not None:
                    version += 1
                    thetas[version] = new
                    for old in [v for v in thetas if v < version - self.settings.max_staleness]:
                        del thetas[old]
                    norms.extend(n for r, _ in used if (n := _norm(r)) is not None)
                else:
                    record["skipped"] = "strategy aggregated nothing"
                for r, _ in used:
                    requests.pop(r.metadata.reply_to_message_id, None)
                p.version, p.theta, p.elapsed = version, thetas[version], record["elapsed"]
                self._record(record, p)
                if version > cfg.rounds:
                    break
            self._dispatch(version, thetas[version], inflight, trained_at, rng, counts)
        _forget(self.grid, list(inflight))
        return self._finish(p)

    def _finish(self, p: _Progress) -> dict[str, Any]:
        cfg = self.cfg
        final = to_numpy(p.theta)
        save_checkpoint(self.run_dir / FINAL_FILE, arrays=final, state={"run_id": cfg.run_id, "round": cfg.rounds})
        return {"run_id": cfg.run_id, "rounds": p.history, "final_sha256": arrays_sha256(final),
                "run_dir": str(self.run_dir), "final": final}

    # -- steps ---------------------------------------------------------------------------------------
    def _wait_for_nodes(self, n: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= max(1, n):
                return nodes
            if time.monotonic() >= deadline:
                raise QuorumError(f"only {len(nodes)} of the {n} required nodes are present after {timeout:g} s")
            time.sleep(self.poll)

    def _dispatch(self, version: int, theta: ArrayRecord, inflight: dict[str, _Task], trained_at: dict[int, int],
                  rng: random.Random, counts: dict[str, int]) -> None:
        """Send θ_version to idle nodes up to the concurrency limit (and capture θ in the strategy).

        `configure_train` is called even when no node is idle: Reptile and FedAvgM remember the
        parameters they last configured, and the next aggregation must be relative to θ_version.
        """
        self._wait_for_nodes(1, self.cfg.quorum_timeout)
        cfg = ConfigRecord({ConfigKey.LOCAL_STEPS: self.cfg.local_steps, ConfigKey.LR: self.cfg.lr,
                            ConfigKey.SEED: self.cfg.seed})
        state = random.getstate()
        random.seed(rng.getrandbits(63))
        try:
            messages = list(self.strategy.configure_train(version, theta, cfg, self.grid))
        finally:
            random.setstate(state)
        busy = {t.node for t in inflight.values()}
        idle = [m for m in messages if m.metadata.dst_node_id not in busy
                and trained_at.get(m.metadata.dst_node_id, 0) < version]
        idle.sort(key=lambda m: m.metadata.dst_node_id)
        rng.shuffle(idle)
        limit = self.settings.concurrency or len(messages)
        chosen = idle[: max(0, limit - len(inflight))]
        if not chosen:
            return
        now = time.monotonic()
        for mid, msg in zip(self.grid.push_messages(chosen), chosen, strict=True):
            inflight[mid] = _Task(msg.metadata.dst_node_id, version, now, msg)
            trained_at[msg.metadata.dst_node_id] = version
        counts["dispatched"] += len(chosen)

    def _eligible(self, version: int, trained_at: dict[int, int]) -> bool:
        """Whether a present node could still be sent `version` (each node trains a version at most once).

        With no node present at all the answer is yes: `_dispatch` waits for one (up to the quorum
        timeout), as devices that sleep may all be away at once.
        """
        nodes = self.grid.get_node_ids()
        return not nodes or any(trained_at.get(n, 0) < version for n in nodes)

    def _screen(self, buffer: list[tuple[Message, int]], requests: dict[str, Message], norms: deque[float],
                counts: dict[str, int], reasons: Counter[str]) -> list[tuple[Message, int]]:
        """The round-level rules of a synchronous phase (`FleetGrid.screen`), applied to the buffer.

        Why: pulling replies one by one skips what `send_and_receive` does after a phase, so an
        absurd but finite update (3e38 in float32) went straight into the aggregate. A buffer of
        fewer than three replies has no median: its norms are judged against the recently
        aggregated update norms (`norms`). On Flower's Grid of gateways there is nothing to do here:
        each gateway screened its devices' replies.
        """
        screen = getattr(self.grid, "screen", None)
        if screen is None or not buffer:
            return buffer
        screened = screen([r for r, _ in buffer], requests, history=list(norms))
        out = []
        for (reply, base), checked in zip(buffer, screened, strict=True):
            if checked.has_error():
                counts["failures"] += 1
                reasons[_reason(checked)] += 1
                requests.pop(reply.metadata.reply_to_message_id, None)
            else:
                out.append((checked, base))
        return out

    def _await(self, inflight: dict[str, _Task]) -> None:
        if inflight:
            _wait(self.grid, set(inflight), 1.0, self.poll)
        else:
            time.sleep(self.poll)

    def _pull(self, inflight: dict[str, _Task]) -> list[Message]:
        replies = list(self.grid.pull_messages(list(inflight)))
        _forget(self.grid, [r.metadata.reply_to_message_id for r in replies])
        return sorted(replies, key=lambda m: m.metadata.src_node_id)

    def _expire(self, inflight: dict[str, _Task], counts: dict[str, int]) -> None:
        """Give up on tasks older than the round timeout (their nodes become idle again)."""
        limit = self.cfg.round_timeout if not self.hierarchical else self.cfg.round_timeout * 2 + 60.0
        now = time.monotonic()
        old = [mid for mid, t in inflight.items() if now - t.sent_at > limit]
        for mid in old:
            del inflight[mid]
        if old:
            _forget(self.grid, old)
            counts["expired"] += len(old)

    def _aggregate(self, version: int, thetas: dict[int, ArrayRecord], used: list[tuple[Message, int]]
                   ) -> tuple[ArrayRecord | None, dict[str, Any]]:
        theta = thetas[version]
        taus = [version - base for _, base in used]
        replies = []
        for (reply, base), tau in zip(used, taus, strict=True):
            w = staleness_weight(tau, kind=self.settings.staleness, alpha=self.settings.staleness_alpha)
            key, rec = next(iter(reply.content.array_records.items()))
            rebased = {k: np.asarray(theta[k].numpy(), np.float64) + w * (
                np.asarray(rec[k].numpy(), np.float64) - np.asarray(thetas[base][k].numpy(), np.float64))
                for k in theta}
            reply.content[key] = ArrayRecord({k: Array(v) for k, v in rebased.items()})
            replies.append(reply)
        record: dict[str, Any] = {"replies": len(used), "staleness_mean": round(float(np.mean(taus)), 4),
                                  "staleness_max": int(max(taus)),
                                  "contributors": [[int(r.metadata.src_node_id), base] for r, base in used]}
        try:
            new, metrics = self.strategy.aggregate_train(version, replies)
        except InconsistentMessageReplies as exc:
            return None, {**record, "skipped": f"strategy rejected the replies: {exc}"}
        for k, v in (metrics or {}).items():
            if isinstance(v, (int, float)) and not k.startswith(("site-", "gateway-")):
                name = k.replace("-", "_")
                record[name if name.startswith("train_") else f"train_{name}"] = v
        if new is not None and not all(np.all(np.isfinite(a.numpy())) for a in new.values()):
            return None, {**record, "skipped": "non-finite aggregate"}
        if MetricKey.TRAIN_LOSS.replace("-", "_") in record:
            record[MetricKey.LOSS] = record[MetricKey.TRAIN_LOSS.replace("-", "_")]
        return new, record

    def _bytes(self, version: int, used: list[tuple[Message, int]], before: tuple[int, int]) -> dict[str, Any]:
        """Bytes so far: the device level from the FleetGrid ledger (plus `before`, what the run's earlier process
        counted up to its last checkpoint), or summed from the gateways' reports."""
        if not self.hierarchical:
            up, down = before
            for v in range(1, version + 1):
                s = self.grid.ledger.round_summary(v)  # type: ignore[attr-defined]
                up, down = up + s["bytes_up"], down + s["bytes_down"]
            return {"bytes_up_total": up, "bytes_down_total": down}
        out: dict[str, Any] = {}
        for key in ("site-bytes-up", "site-bytes-down", "site-replies"):
            out[key.replace("-", "_")] = int(sum(metric_number(next(iter(r.content.metric_records.values())), key)
                                                 for r, _ in used))
        return out

    def _record(self, record: dict[str, Any], p: _Progress) -> None:
        """Append the aggregation's line to metrics.jsonl, then checkpoint the model and what `resume` needs."""
        record["params_sha256"] = arrays_sha256(p.theta)
        p.history.append(record)
        append_metrics(self.run_dir / METRICS_FILE, record)
        progress = {"version": p.version, "records": len(p.history), "counts": dict(p.counts),
                    "reasons": dict(p.reasons), "norms": list(p.norms), "elapsed": p.elapsed,
                    "bytes_total": [int(record.get("bytes_up_total", 0)), int(record.get("bytes_down_total", 0))]}
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, arrays=to_numpy(p.theta),
                        state={"run_id": self.cfg.run_id, "round": record["round"], "mode": "async",
                               "progress": progress})
        log.info("aggregation %d/%d: %s", record["round"], self.cfg.rounds, record)
        if self.on_round is not None:
            self.on_round(record)


def read_progress(run_dir: Path, run_id: str, seed: int) -> _Progress:
    """Where the asynchronous run in `run_dir` stands, from its checkpoint (a one-line CheckpointError if unreadable).

    Separate from `BufferedRun.resume` so that `federate resume` can refuse a broken checkpoint before it starts
    brokers and devices.
    """
    path = run_dir / CHECKPOINT_FILE
    arrays, meta = load_checkpoint(path)
    if meta.get("run_id") != run_id:
        raise CheckpointError(f"{path}: belongs to run {meta.get('run_id')!r}, not {run_id!r}")
    if meta.get("mode") != "async" or not isinstance(meta.get("progress"), dict):
        raise CheckpointError(f"{path}: not the checkpoint of an asynchronous run this tinyfleet can resume")
    saved = meta["progress"]
    try:
        counts = {k: int(saved["counts"][k]) for k in _COUNTS}
        version, records, elapsed = int(saved["version"]), int(saved["records"]), float(saved["elapsed"])
        before = tuple(int(x) for x in saved["bytes_total"])
        if (version < 1 or records < 0 or not math.isfinite(elapsed) or elapsed < 0 or len(before) != 2
                or min(*counts.values(), *before) < 0):
            raise ValueError(f"version {version}, records {records}, elapsed {elapsed}, counts {counts}, "
                             f"bytes {before}")
        return _Progress(version=version, theta=to_record(arrays),
                         history=read_metrics(run_dir / METRICS_FILE)[:records], counts=counts,
                         reasons=Counter({str(k): int(v) for k, v in saved["reasons"].items()}),
                         norms=deque((float(x) for x in saved["norms"]), maxlen=NORM_HISTORY),
                         rng=random.Random(f"{seed}:{version}"), elapsed=elapsed, bytes_before=(before[0], before[1]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unreadable progress of the asynchronous run ({exc})") from None


def _reason(reply: Message) -> str:
    """The short reason of an error reply (the Grid writes ``"<device>: <reason>: <detail>"``)."""
    parts = (reply.error.reason or "").split(": ")
    return parts[1] if len(parts) >= 3 else "error"


def _norm(reply: Message) -> float | None:
    """The update norm the Grid measured for a train reply (``update-norm``), if any."""
    record = next(iter(reply.content.metric_records.values()), None)
    value = record.get(NORM_KEY) if record is not None else None
    return float(value) if isinstance(value, (int, float)) else None


def default_buffer(devices: int) -> int:
    """What ``--buffer 0`` means: a tenth of the devices, at least 1 (FedBuff used 10 of ~1,000 concurrent clients).

    The devices are those present when a flat run starts, or those a gateway sent a task (per site).
    """
    return max(1, math.ceil(devices / 10))
