"""The top level of a hierarchical run: a Flower ServerApp whose nodes are gateways, on Flower's own Grid.

It runs under a real ``flower-superlink`` (``flwr run``) and drives the same strategy classes as a
flat run (`federation.strategies`), with the same round structure as `federation.coordinator`:
configure_train → send → aggregate_train → configure_evaluate → send → aggregate_evaluate, one
metrics line and one checkpoint per round, ``final.npz`` at the end. What differs:

* the nodes are gateway SuperNodes, each answering with its site's aggregate (`gateway`);
* every gateway takes part in every round (the run's sampling fraction applies inside the sites);
* Flower's `Grid.send_and_receive` polls every 3 s; this loop pushes and pulls itself every
  `POLL_S` so that a round is not rounded up to Flower's poll period;
* each round's metrics carry both levels: device-level counts and MQTT bytes summed over the
  sites (reported by the gateways) and the top level's array payload bytes.

The run's outcome is also written to ``status.json`` in the run directory, which is how
`tinyfleet federate run --gateways N` (another process) learns that the run finished or failed.
"""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from devices.wire.protocol import ConfigKey
from federation.checkpoint import load_checkpoint, save_checkpoint
from federation.coordinator import (
    CHECKPOINT_FILE,
    FINAL_FILE,
    METRICS_FILE,
    RunConfig,
    append_metrics,
    arrays_sha256,
    close_round,
    metric_fields,
    to_numpy,
    to_record,
)
from federation.exceptions import QuorumError
from federation.hierarchy.gateway import SITE_METRICS, TIMING_METRICS
from federation.hierarchy.settings import HierarchyConfig, level_strategy, metric_number

log = logging.getLogger(__name__)

INITIAL_FILE, STATUS_FILE = "initial.npz", "status.json"
POLL_S = 0.1
"""How often the top level pulls replies from the SuperLink (Flower's own loop sleeps 3 s)."""

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls in the ``flwr-serverapp`` process."""
    settings, run_dir = HierarchyConfig.from_run_config(context.run_config)
    write_status(run_dir, "running", flower_run_id=int(context.run_id))
    try:
        if settings.mode == "async":
            from federation.buffered import BufferedRun

            result = BufferedRun(settings, grid, run_dir, poll=POLL_S).start(load_initial(run_dir))
        else:
            result = TopLevel(settings, grid, run_dir).start(load_initial(run_dir))
    except Exception as exc:
        write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
    write_status(run_dir, "finished", final_sha256=result["final_sha256"], rounds=len(result["rounds"]))


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """Replace ``status.json`` atomically (the CLI polls it from another process)."""
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"state": state, "time": time.time(), **fields}, sort_keys=True) + "\n")
    tmp.replace(path)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def load_initial(run_dir: Path) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(Path(run_dir) / INITIAL_FILE)
    return arrays


def top_strategy(cfg: RunConfig) -> Strategy:
    """The run's strategy with its own ε schedule, sampling every gateway each round."""
    return level_strategy(cfg, serial=False, fraction_train=1.0)


def payload_bytes(messages: Iterable[Message]) -> int:
    """Array payload of Flower messages (the bulk of what crosses the SuperLink; framing excluded)."""
    total = 0
    for m in messages:
        if m.has_content():
            for rec in m.content.array_records.values():
                total += sum(len(a.data) for a in rec.values())
    return total


def poll_send_and_receive(grid: Grid, messages: list[Message], *, timeout: float, poll: float = POLL_S,
                          arrivals: dict[str, float] | None = None) -> list[Message]:
    """`Grid.send_and_receive` with a short poll period: push, then pull until all replied or `timeout`.

    `arrivals`, if given, receives the epoch time each reply was pulled (by the id it answers) and,
    under key ``"push"``, when the messages were pushed.
    """
    if arrivals is not None:
        arrivals["push"] = time.time()
    pending = set(grid.push_messages(messages))
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        out += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if arrivals is not None:
            arrivals.update({m.metadata.reply_to_message_id: time.time() for m in got})
        if pending:
            time.sleep(poll)
    return out


def wait_for_gateways(grid: Grid, n: int, timeout: float) -> list[int]:
    """Block until `n` gateway SuperNodes are connected; `QuorumError` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() >= deadline:
            raise QuorumError(f"only {len(nodes)} of the {n} gateways are connected to the SuperLink "
                              f"after {timeout:g} s")
        time.sleep(POLL_S)


def harmonize(replies: list[Message]) -> list[Message]:
    """Keep the metric keys every valid reply has (Flower refuses differing key sets)."""
    valid = [r for r in replies if not r.has_error()]
    if len(valid) < 2:
        return replies
    recs = [next(iter(r.content.metric_records.values())) for r in valid]
    common = set.intersection(*(set(r) for r in recs))
    for rec in recs:
        for key in [k for k in rec if k not in common]:
            del rec[key]
    return replies


class TopLevel:
    """Synchronous rounds over gateway nodes (see the module docstring)."""

    def __init__(self, settings: HierarchyConfig, grid: Grid, run_dir: Path) -> None:
        self.settings = settings
        self.cfg = settings.run
        self.grid = grid
        self.run_dir = Path(run_dir)
        self.strategy = top_strategy(self.cfg)

    def start(self, initial: dict[str, np.ndarray]) -> dict[str, Any]:
        cfg = self.cfg
        self.cfg.save(self.run_dir)
        (self.run_dir / METRICS_FILE).write_text("")
        wait_for_gateways(self.grid, self.settings.gateways, cfg.quorum_timeout)
        arrays = to_record(initial)
        history: list[dict[str, Any]] = []
        rng = np.random.default_rng(cfg.seed)
        # a gateway's sub-round lasts up to one device timeout plus its own start (a fresh process)
        timeout = cfg.round_timeout + cfg.quorum_timeout + 60.0
        for rnd in range(1, cfg.rounds + 1):
            t0 = time.monotonic()
            record: dict[str, Any] = {"round": rnd}
            train_cfg = ConfigRecord({ConfigKey.LOCAL_STEPS: cfg.local_steps, ConfigKey.LR: cfg.lr,
                                      ConfigKey.SEED: cfg.seed})
            random.seed(int(rng.integers(2**63)))
            msgs = list(self.strategy.configure_train(rnd, arrays, train_cfg, self.grid))
            arrivals: dict[str, float] = {}
            replies = sorted(poll_send_and_receive(self.grid, msgs, timeout=timeout, arrivals=arrivals),
                             key=lambda m: m.metadata.src_node_id)
            record.update(_level_fields("train", msgs, replies, arrivals))
            new, metrics = self._aggregate(rnd, harmonize(replies))
            if new is not None:
                arrays = new
            else:
                record["skipped"] = "no gateway aggregate"
            record.update(metric_fields("train", metrics, SITE_METRICS + TIMING_METRICS))
            emsgs = list(self.strategy.configure_evaluate(rnd, arrays, ConfigRecord({ConfigKey.SEED: cfg.seed}),
                                                          self.grid))
            earrivals: dict[str, float] = {}
            ereplies = sorted(poll_send_and_receive(self.grid, emsgs, timeout=timeout, arrivals=earrivals),
                              key=lambda m: m.metadata.src_node_id)
            record.update(_level_fields("eval", emsgs, ereplies, earrivals))
            if any(not r.has_error() for r in ereplies):
                try:
                    record.update(metric_fields("eval", self.strategy.aggregate_evaluate(rnd, harmonize(ereplies)),
                                                SITE_METRICS + TIMING_METRICS))
                except InconsistentMessageReplies as exc:
                    record["eval_skipped"] = str(exc)
            history.append(close_round(record, arrays, t0))
            append_metrics(self.run_dir / METRICS_FILE, record)
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, arrays=to_numpy(arrays),
                            state={"run_id": cfg.run_id, "round": rnd, "strategy": cfg.strategy})
            log.info("round %d/%d: %s", rnd, cfg.rounds, record)
        final = to_numpy(arrays)
        save_checkpoint(self.run_dir / FINAL_FILE, arrays=final, state={"run_id": cfg.run_id, "round": cfg.rounds})
        return {"run_id": cfg.run_id, "rounds": history, "final_sha256": arrays_sha256(final),
                "run_dir": str(self.run_dir), "final": final}

    def _aggregate(self, rnd: int, replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not any(not r.has_error() for r in replies):
            return None, None
        try:
            return self.strategy.aggregate_train(rnd, replies)
        except InconsistentMessageReplies as exc:
            log.warning("round %d: strategy rejected the gateway replies: %s", rnd, exc)
            return None, None


def _level_fields(phase: str, sent: list[Message], replies: list[Message], arrivals: dict[str, float]
                  ) -> dict[str, Any]:
    """Both levels' counts of one phase: gateways at the top, devices summed over the sites.

    The timing split (slowest gateway of the phase): ``delivery`` = push until the gateway
    process started (Flower's SuperLink → SuperNode → SuperExec path), ``startup`` = process start
    until the handler ran (imports), ``site`` = the handler (connect + sub-round), ``return`` =
    handler end until the top level pulled the reply.
    """
    ok = [r for r in replies if not r.has_error()]
    p = "" if phase == "train" else "eval_"
    out: dict[str, Any] = {f"{p}gateways": len(sent), f"{p}gateway_replies": len(ok),
                           f"{p}gateway_failures": len(replies) - len(ok),
                           f"{p}top_bytes_down": payload_bytes(sent), f"{p}top_bytes_up": payload_bytes(ok)}
    sums = dict.fromkeys(SITE_METRICS, 0.0)
    slowest = 0.0
    for r in ok:
        rec = next(iter(r.content.metric_records.values()))
        for k in SITE_METRICS:
            sums[k] += metric_number(rec, k)
        slowest = max(slowest, metric_number(rec, "site-seconds"))
    out.update({f"{p}devices": int(sums["site-devices"]), f"{p}sampled": int(sums["site-sampled"]),
                f"{p}replies": int(sums["site-replies"]), f"{p}failures": int(sums["site-failures"]),
                f"{p}missing": int(sums["site-missing"]), f"{p}bytes_up": int(sums["site-bytes-up"]),
                f"{p}bytes_down": int(sums["site-bytes-down"]), f"{p}site_seconds_max": round(slowest, 4)})
    split = {"delivery": 0.0, "startup": 0.0, "site": 0.0, "return": 0.0}
    for r in ok:
        rec = next(iter(r.content.metric_records.values()))
        start, enter, end = (metric_number(rec, k) for k in TIMING_METRICS)
        pulled = arrivals.get(r.metadata.reply_to_message_id, 0.0)
        if start and pulled:
            for k, v in (("delivery", start - arrivals.get("push", start)), ("startup", enter - start),
                         ("site", end - enter), ("return", pulled - end)):
                split[k] = max(split[k], round(v, 3))
    out.update({f"{p}gateway_{k}_s": v for k, v in split.items()})
    times = [t for k, t in arrivals.items() if k != "push"]
    if times and "push" in arrivals:
        out[f"{p}phase_s"] = round(max(times) - arrivals["push"], 3)
    errors = [r.error.reason for r in replies if r.has_error()]
    if errors:
        out[f"{p}gateway_errors"] = errors[:4]
    return out


