"""Run coordination: quorum, per-round sampling and deadlines, metrics, checkpoints, resume.

`Strategy.start` runs all rounds in one call and always begins at round 1, so it can neither
checkpoint between rounds nor continue a killed run at round k + 1. The coordinator therefore
drives the same four public hooks in the same order as flwr 1.41's `Strategy.start`
(configure_train → send_and_receive → aggregate_train → configure_evaluate → send_and_receive →
aggregate_evaluate) with these additions:

* quorum: waits (with a deadline) for the expected devices before round 1, because FedAvg's own
  wait has none and samples before it waits;
* determinism: sampling draws from a per-round seed taken from a checkpointed numpy generator,
  and replies are sorted by node id before aggregation (float sums depend on order), so a resumed
  run ends with the same parameters as an uninterrupted one;
* robustness: a round with fewer than `min_replies` valid replies keeps the old parameters, and a
  strategy that rejects the replies (`InconsistentMessageReplies`) fails the round, not the run;
  an aggregate that is not finite never replaces the parameters (finite float32 updates can still
  add up to inf in θ + ε·Δ);
* after every round: one JSONL metrics line and an atomic checkpoint;
* loud failure: a broker lost for longer than the transport's timeout ends the run with a
  `BrokerLostError` that names the command to resume it, and a run in which no round aggregated
  anything ends with `NoProgressError` (exit 1) and no ``final.npz``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from devices.wire.protocol import ConfigKey, MetricKey
from devices.wire.topics import DEFAULT_FLEET
from federation import flower_compat, strategy_state
from federation.checkpoint import load_checkpoint, load_extra_arrays, save_checkpoint
from federation.exceptions import BrokerLostError, CheckpointError, NoProgressError
from federation.grid import FleetGrid
from federation.strategies.registry import build_strategy

log = logging.getLogger(__name__)

RUN_FILE, CHECKPOINT_FILE, METRICS_FILE, FINAL_FILE = "run.json", "checkpoint.npz", "metrics.jsonl", "final.npz"


@dataclass
class RunConfig:
    """Everything needed to start or resume a run; persisted as ``run.json`` in the run directory."""

    run_id: str
    task: str
    strategy: str
    rounds: int
    seed: int = 0
    local_steps: int = 50  # Reptile's documented defaults (federation.strategies.reptile)
    lr: float = 0.02
    strategy_params: dict[str, Any] = field(default_factory=dict)
    round_timeout: float = 30.0
    min_replies: int = 1
    quorum: int = 1
    quorum_timeout: float = 30.0
    fleet: str = DEFAULT_FLEET
    broker: str | None = None
    simulate: int = 0
    samples_per_device: int = 64
    broker_timeout: float = 60.0
    allow_undescribed: bool = False  # sample devices that publish no Thing Description (federation.selection)

    def save(self, run_dir: Path) -> None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise CheckpointError(f"{run_dir}: cannot write the run directory ({exc.strerror or exc})") from None

    @classmethod
    def load(cls, run_dir: Path) -> RunConfig:
        path = Path(run_dir) / RUN_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError:
            raise CheckpointError(f"{run_dir}: not a federated run directory (no {RUN_FILE})") from None
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable run description ({exc})") from None


def arrays_sha256(arrays: ArrayRecord | dict[str, np.ndarray]) -> str:
    """Digest of parameters (names, dtypes, shapes, bytes) to compare runs exactly."""
    h = hashlib.sha256()
    items = arrays.items()
    for k, v in sorted(items):
        a = np.ascontiguousarray(v.numpy() if isinstance(v, Array) else v)
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def wait_for_quorum(grid: FleetGrid, n: int, timeout: float, *, poll: float = 0.05) -> list[int]:
    """Block until `n` allowed devices are present; raise `QuorumError` naming how many came."""
    return grid.wait_for_nodes(n, timeout=timeout, poll=poll)


def strategy_defaults(config: RunConfig) -> dict[str, Any]:
    """Constructor arguments a strategy gets from the run's settings when it takes them and run.json does not set them.

    ``local_steps``/``local_lr`` (Reptile, TinyMetaFed) and Flower's QFedAvg ``client_learning_rate``
    follow ``--local-steps``/``--lr``; QFedAvg reads the protocol's ``train-loss`` metric.
    """
    return {"local_steps": config.local_steps, "local_lr": config.lr, "client_learning_rate": config.lr,
            "train_loss_key": MetricKey.TRAIN_LOSS}


RoundCallback = Callable[[dict[str, Any]], None]


class Coordinator:
    """Drive one federated run in `run_dir` over `grid`.

    Parameters
    ----------
    config : RunConfig
        The run's settings (written to ``run.json`` on a fresh start).
    grid : FleetGrid
        Where the devices are.
    run_dir : Path
        Receives ``run.json``, ``checkpoint.npz`` (after every round), ``metrics.jsonl`` and
        ``final.npz``.
    on_round : callable, optional
        Called with each round's metrics dict (progress bars).
    """

    def __init__(self, config: RunConfig, grid: FleetGrid, run_dir: Path, *,
                 on_round: RoundCallback | None = None) -> None:
        self.config = config
        self.grid = grid
        self.run_dir = Path(run_dir)
        self.on_round = on_round
        self.strategy: Strategy = build_strategy(config.strategy, config.strategy_params, num_rounds=config.rounds,
                                                 defaults=strategy_defaults(config))
        flower_compat.init_task_identity(grid.run.run_id)

    # -- entry points ------------------------------------------------------------------------
    def start(self, initial: dict[str, np.ndarray]) -> dict[str, Any]:
        """Fresh run from `initial` parameters."""
        self.config.save(self.run_dir)  # creates the directory; a CheckpointError if it cannot
        write_metrics(self.run_dir / METRICS_FILE, [])
        rng = np.random.default_rng(self.config.seed)
        return self._loop(initial, 1, rng, history=[])

    def resume(self) -> dict[str, Any]:
        """Continue after the last checkpointed round (metrics lines of later, lost rounds are dropped)."""
        arrays, meta = load_checkpoint(self.run_dir / CHECKPOINT_FILE)
        if meta.get("run_id") != self.config.run_id:
            raise CheckpointError(f"{self.run_dir / CHECKPOINT_FILE}: belongs to run {meta.get('run_id')!r}, "
                                  f"not {self.config.run_id!r}")
        if meta.get("mode", "sync") != "sync":
            raise CheckpointError(f"{self.run_dir / CHECKPOINT_FILE}: the checkpoint of a --mode {meta['mode']} run, "
                                  "not of synchronous rounds")
        try:
            done = int(meta["round"])
            rng = np.random.default_rng()
            rng.bit_generator.state = meta["rng_state"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.run_dir / CHECKPOINT_FILE}: unreadable round state ({exc!r})") from None
        if "strategy_state" in meta:  # server-side optimiser state (FedAdam's moments, FedAvgM's momentum, ...)
            strategy_state.restore(self.strategy, load_extra_arrays(self.run_dir / CHECKPOINT_FILE),
                                   meta["strategy_state"])
        history = [r for r in read_metrics(self.run_dir / METRICS_FILE) if r.get("round", 0) <= done]
        write_metrics(self.run_dir / METRICS_FILE, history)
        return self._loop(arrays, done + 1, rng, history=history)

    # -- the round loop --------------------------------------------------------------------------
    def _loop(self, arrays_np: dict[str, np.ndarray], first: int, rng: np.random.Generator,
              history: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            return self._rounds(arrays_np, first, rng, history)
        except BrokerLostError as exc:
            done = history[-1]["round"] if history else 0
            raise BrokerLostError(f"{exc}; the run stopped after round {done} of {self.config.rounds}: continue it "
                                  f"with `tinyfleet federate resume {self.run_dir}`") from None

    def _rounds(self, arrays_np: dict[str, np.ndarray], first: int, rng: np.random.Generator,
                history: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.config
        wait_for_quorum(self.grid, cfg.quorum, cfg.quorum_timeout)
        arrays = to_record(arrays_np)
        for rnd in range(first, cfg.rounds + 1):
            t0 = time.monotonic()
            round_seed = int(rng.integers(2**63))
            record: dict[str, Any] = {"round": rnd}
            self._require_nodes(cfg.quorum_timeout)
            train_cfg = ConfigRecord({ConfigKey.LOCAL_STEPS: cfg.local_steps, ConfigKey.LR: cfg.lr,
                                      ConfigKey.SEED: cfg.seed})
            msgs = self._sampled(functools.partial(self.strategy.configure_train, rnd, arrays, train_cfg, self.grid),
                                 round_seed)
            replies = self._sorted(self.grid.send_and_receive(messages=msgs, timeout=cfg.round_timeout))
            new_arrays, train_metrics, note = self._aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = new_arrays
            record.update(metric_fields("train", train_metrics))
            if note:
                record["skipped"] = note
            eval_cfg = ConfigRecord({ConfigKey.SEED: cfg.seed})
            emsgs = self._sampled(functools.partial(self.strategy.configure_evaluate, rnd, arrays, eval_cfg,
                                                    self.grid), round_seed + 1)
            ereplies = self._sorted(self.grid.send_and_receive(messages=emsgs, timeout=cfg.round_timeout))
            record.update(metric_fields("eval", self._aggregate_evaluate(rnd, ereplies)))
            record.update(self._ledger_fields(rnd))
            history.append(close_round(record, arrays, t0))
            append_metrics(self.run_dir / METRICS_FILE, record)
            state_arrays, state_kinds = strategy_state.capture(self.strategy)
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, arrays=to_numpy(arrays), extra=state_arrays,
                            state={"run_id": cfg.run_id, "round": rnd, "rng_state": rng.bit_generator.state,
                                   "strategy": cfg.strategy, "strategy_params": cfg.strategy_params,
                                   "strategy_state": state_kinds})
            log.info("round %d/%d: %s", rnd, cfg.rounds, record)
            if self.on_round is not None:
                self.on_round(record)
        if history and all("skipped" in r for r in history):
            reasons = sorted({r["skipped"] for r in history})
            raise NoProgressError(f"no round aggregated an update ({len(history)} of {cfg.rounds} rounds skipped: "
                                  f"{'; '.join(reasons)[:300]}); {self.run_dir} has no final model")
        final = to_numpy(arrays)
        save_checkpoint(self.run_dir / FINAL_FILE, arrays=final, state={"run_id": cfg.run_id, "round": cfg.rounds})
        return {"run_id": cfg.run_id, "rounds": history, "final_sha256": arrays_sha256(final),
                "run_dir": str(self.run_dir), "final": final}

    def _require_nodes(self, timeout: float) -> None:
        """FedAvg's sampler would wait forever for a node; fail with a clear error instead."""
        wait_for_quorum(self.grid, 1, timeout)

    @staticmethod
    def _sampled(configure: Callable[[], Iterable[Message]], seed: int) -> list[Message]:
        """Run a configure hook with Python's `random` (FedAvg samples with it) seeded for this round."""
        saved = random.getstate()
        random.seed(seed)
        try:
            return list(configure())
        finally:
            random.setstate(saved)

    @staticmethod
    def _sorted(replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda m: m.metadata.src_node_id)

    def _valid_count(self, replies: list[Message]) -> int:
        return sum(1 for r in replies if not r.has_error())

    def _aggregate_train(self, rnd: int, replies: list[Message]
                         ) -> tuple[ArrayRecord | None, MetricRecord | None, str | None]:
        n_ok = self._valid_count(replies)
        if n_ok < self.config.min_replies:
            observe = getattr(self.strategy, "observe_train_replies", None)  # per-device state (TinyMetaFed's bases)
            if observe is not None:
                observe(rnd, replies)
            return None, None, f"{n_ok} valid replies < min_replies {self.config.min_replies}"
        try:
            arrays, metrics = self.strategy.aggregate_train(rnd, replies)
        except (InconsistentMessageReplies, AggregationError) as exc:
            return None, None, f"strategy rejected the replies: {exc}"
        if arrays is None:
            return None, None, "the strategy aggregated nothing"
        bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v.numpy()))]
        if bad:
            log.warning("round %d: the aggregate of %d replies is not finite in %s; keeping the previous "
                        "parameters", rnd, n_ok, ", ".join(bad))
            return None, None, f"non-finite aggregate in {', '.join(bad)}: kept the previous parameters"
        return arrays, _finite_metrics(metrics), None

    def _aggregate_evaluate(self, rnd: int, replies: list[Message]) -> MetricRecord | None:
        if self._valid_count(replies) == 0:
            return None
        try:
            return _finite_metrics(self.strategy.aggregate_evaluate(rnd, replies))
        except (InconsistentMessageReplies, AggregationError):
            return None

    def _ledger_fields(self, rnd: int) -> dict[str, Any]:
        s = self.grid.ledger.round_summary(rnd)
        phases = s["phases"]
        tr, ev = phases.get("train", {}), phases.get("evaluate", {})
        reasons: dict[str, int] = {}
        for p in phases.values():
            for k, v in p.get("reasons", {}).items():
                reasons[k] = reasons.get(k, 0) + v
        return {"sampled": tr.get("sent", 0), "replies": tr.get("replies", 0), "failures": tr.get("failures", 0),
                "missing": tr.get("missing", 0), "resent": tr.get("resent", 0), "eval_replies": ev.get("replies", 0),
                "eval_failures": ev.get("failures", 0), "discarded": phases.get("discarded", {}).get("replies", 0),
                "bytes_up": s["bytes_up"], "bytes_down": s["bytes_down"],
                "bytes_up_train": tr.get("bytes_up", 0), "bytes_down_train": tr.get("bytes_down", 0),
                "reasons": reasons}


def _finite_metrics(metrics: MetricRecord | None) -> MetricRecord | None:
    """Drop aggregated metrics that are not finite (JSON has no inf; metrics.jsonl must stay parseable)."""
    if metrics is not None:
        for key in [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]:
            del metrics[key]
    return metrics


def metric_fields(prefix: str, metrics: MetricRecord | None, skip: Collection[str] = ()) -> dict[str, Any]:
    """A phase's aggregated numeric metrics as metrics.jsonl fields (`train_loss`, ...), `skip` left out."""
    if metrics is None:
        return {}
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and k not in skip:
            name = k.replace("-", "_")
            out[name if name.startswith(prefix + "_") else f"{prefix}_{name}"] = v
    return out


def close_round(record: dict[str, Any], arrays: ArrayRecord, t0: float) -> dict[str, Any]:
    """The fields every round record ends with: its `loss` (evaluation, else training), seconds, parameters' sha256."""
    loss = record.get("eval_loss", record.get("train_loss"))
    if loss is not None:
        record[MetricKey.LOSS] = loss
    record["seconds"] = round(time.monotonic() - t0, 4)
    record["params_sha256"] = arrays_sha256(arrays)
    return record


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One round's record as a line of metrics.jsonl (flushed; a disk error is one clear line)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
    except OSError as exc:  # disk full, directory gone: one clear line, the checkpoint stays as it was
        raise CheckpointError(f"{path}: cannot append the round's metrics ({exc.strerror or exc})") from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, in order (a line torn by a kill mid-write is skipped)."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line torn by a kill mid-write
            continue
    return out


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl with `records` (on resume: the lines of rounds the checkpoint does not hold go)."""
    try:
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write the metrics file ({exc.strerror or exc})") from None


def read_status(run_dir: Path) -> dict[str, Any]:
    """What `tinyfleet federate status` shows: settings, rounds done, last metrics, finished or not."""
    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir)
    rounds = read_metrics(run_dir / METRICS_FILE)
    done = 0
    if (run_dir / CHECKPOINT_FILE).is_file():
        _, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
        done = int(meta.get("round", 0))
    finished = (run_dir / FINAL_FILE).is_file()
    state = "finished" if finished else ("failed" if done >= config.rounds else
                                         "interrupted" if done else "not-started")
    out: dict[str, Any] = {"run_id": config.run_id, "run_dir": str(run_dir), "task": config.task,
                           "strategy": config.strategy, "rounds": config.rounds, "rounds_done": done,
                           "state": state,
                           "last": rounds[-1] if rounds else None}
    if finished:
        final, _ = load_checkpoint(run_dir / FINAL_FILE)
        out["final_sha256"] = arrays_sha256(final)
    return out
