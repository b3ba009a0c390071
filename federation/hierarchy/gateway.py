"""The gateway: a Flower ClientApp that answers each message with a federated sub-round over its site's devices.

A gateway runs under a real ``flower-supernode`` (one per site). Flower starts one ClientApp
process per message; on a ``train`` message the gateway connects to its site broker (from the
SuperNode's node config, `SiteConfig`), runs the same strategy class as the top level on the
project's `FleetGrid` over MQTT, and answers with the group's aggregate; on ``evaluate`` it
answers with the group's aggregated evaluation. Devices never see Flower.

How the two levels compose into the flat algorithm: the gateway's strategy is the run's strategy
with the outer step fixed at ε = 1 (Reptile's θ + 1·mean(φ − θ) is the group's mean adapted head
φ̄_g; FedAvg's weighted mean is unchanged), and the top level applies the run's own step to the
gateways' φ̄_g. With one gateway, or equal groups, that is exactly the flat update
θ + ε·mean_i(φ_i − θ); with unequal groups Reptile's top-level mean weights every site equally,
FedAvg weights by ``num-examples``, which the gateway reports as its devices' total. The group
aggregate is returned in float64 so that the composition adds no rounding of its own
(`tests/federation/test_hierarchy.py` checks max |Δθ| <= 1e-6 against a flat run).

In ``async`` mode a gateway answers as soon as `HierarchyConfig.buffer` of its devices replied
(a buffered sub-round); the top level then aggregates gateway answers FedBuff-style.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import Strategy

from devices.wire.protocol import ConfigKey, MetricKey
from federation import flower_compat
from federation.exceptions import FederationError, QuorumError
from federation.grid import FleetGrid
from federation.hierarchy.settings import HierarchyConfig, SiteConfig, level_strategy, metric_number
from firmware_models.exceptions import TinyFleetError

log = logging.getLogger(__name__)

ERR_GATEWAY = 3
"""Flower `Error.code` of a gateway that could not run its sub-round (no devices, broker down, ...)."""

TIMING_METRICS = ("gateway-process-start", "gateway-handler-start", "gateway-handler-end")
"""Wall-clock times (epoch seconds) of the ClientApp process, so the top level can split a round into
Flower's delivery, the gateway process's start-up, the site's sub-round and the way back."""

SITE_METRICS = ("site-index", "site-devices", "site-sampled", "site-replies", "site-failures", "site-missing",
                "site-bytes-up", "site-bytes-down", "site-seconds")
"""Counters every gateway reply carries (Flower requires the same keys in every reply)."""

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One training sub-round with the site's devices; the reply holds the group's aggregate."""
    return _serve(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """One evaluation sub-round with the site's devices; the reply holds the group's aggregated metrics."""
    return _serve(msg, context, "evaluate")


def _serve(msg: Message, context: Context, phase: str) -> Message:
    site_name = str(context.node_config.get("site", "gateway"))
    entered = time.time()
    try:
        settings, _ = HierarchyConfig.from_run_config(context.run_config)
        site = SiteConfig.from_node_config(context.node_config)
        content = Gateway(settings, site).sub_round(msg, phase)
        next(iter(content.metric_records.values())).update({
            "gateway-process-start": process_start_time(), "gateway-handler-start": entered,
            "gateway-handler-end": time.time()})
        return Message(content, reply_to=msg)
    except (TinyFleetError, InconsistentMessageReplies) as exc:
        log.warning("gateway %s: %s sub-round failed: %s", site_name, phase, exc)
        return Message(Error(ERR_GATEWAY, f"{site_name}: {exc}"), reply_to=msg)


def site_strategy(settings: HierarchyConfig) -> Strategy:
    """The run's strategy class as a site aggregator: ε fixed at 1, the run's sampling fraction."""
    return level_strategy(settings.run, epsilon=1.0, epsilon_floor=1.0, serial=False)


class Gateway:
    """One site's side of a hierarchical run (also usable outside Flower's runtime, e.g. in tests).

    Parameters
    ----------
    settings : HierarchyConfig
    site : SiteConfig
    grid : FleetGrid, optional
        An open grid on the site broker; by default each sub-round opens (and closes) its own.
    """

    def __init__(self, settings: HierarchyConfig, site: SiteConfig, *, grid: FleetGrid | None = None) -> None:
        self.settings = settings
        self.site = site
        self._grid = grid

    def sub_round(self, msg: Message, phase: str) -> RecordDict:
        """Run one `phase` sub-round for the top-level message `msg`; return the reply content."""
        cfg_rec = next(iter(msg.content.config_records.values()), ConfigRecord())
        rnd = int(cfg_rec.get(ConfigKey.SERVER_ROUND, 1))  # type: ignore[arg-type]
        theta = next(iter(msg.content.array_records.values()), None)
        with self._site_grid() as grid, flower_compat.task_identity(grid.run.run_id):
            t0 = time.monotonic()
            present = self._wait_for_devices(grid, first_round=rnd == 1)
            strategy = site_strategy(self.settings)
            before = grid.ledger.round_summary(rnd)
            if phase == "train":
                if theta is None:
                    raise FederationError("a train message without parameters")
                content = self._train(grid, strategy, rnd, _as_float64(theta))
            else:
                content = self._evaluate(grid, strategy, rnd, theta)
            after = grid.ledger.round_summary(rnd)
            metrics = next(iter(content.metric_records.values()))
            summary = after["phases"].get("train" if phase == "train" else "evaluate", {})
            metrics.update({
                "site-index": self.site.index, "site-devices": len(present),
                "site-sampled": int(summary.get("sent", 0)),
                "site-replies": int(summary.get("replies", 0)), "site-failures": int(summary.get("failures", 0)),
                "site-missing": int(summary.get("missing", 0)),
                "site-bytes-up": int(after["bytes_up"] - before["bytes_up"]),
                "site-bytes-down": int(after["bytes_down"] - before["bytes_down"]),
                "site-seconds": round(time.monotonic() - t0, 4)})
        return content

    # -- phases ------------------------------------------------------------------------------------
    def _train(self, grid: FleetGrid, strategy: Strategy, rnd: int, theta: ArrayRecord) -> RecordDict:
        cfg = self.settings.run
        train_cfg = ConfigRecord({ConfigKey.LOCAL_STEPS: cfg.local_steps, ConfigKey.LR: cfg.lr,
                                  ConfigKey.SEED: cfg.seed})
        with _seeded(self._seed(rnd, "train")):
            messages = list(strategy.configure_train(rnd, theta, train_cfg, grid))
        replies = self._collect(grid, messages)
        valid = [r for r in replies if not r.has_error()]
        if len(valid) < cfg.min_replies:
            raise FederationError(f"round {rnd}: {len(valid)} valid device replies < min_replies {cfg.min_replies}")
        arrays, metrics = strategy.aggregate_train(rnd, replies)
        if arrays is None:
            raise FederationError(f"round {rnd}: the site strategy aggregated nothing")
        out = MetricRecord({k: v for k, v in (metrics or {}).items() if k != MetricKey.NUM_EXAMPLES})
        out[MetricKey.NUM_EXAMPLES] = _total_examples(valid)
        return RecordDict({"arrays": arrays, "metrics": out})

    def _evaluate(self, grid: FleetGrid, strategy: Strategy, rnd: int, theta: ArrayRecord | None) -> RecordDict:
        cfg = self.settings.run
        with _seeded(self._seed(rnd, "evaluate")):
            messages = list(strategy.configure_evaluate(rnd, theta or ArrayRecord(),
                                                        ConfigRecord({ConfigKey.SEED: cfg.seed}), grid))
        replies = sorted(grid.send_and_receive(messages=messages, timeout=cfg.round_timeout),
                         key=lambda m: m.metadata.src_node_id)
        valid = [r for r in replies if not r.has_error()]
        if not valid:
            raise FederationError(f"round {rnd}: no device answered the evaluation")
        metrics = strategy.aggregate_evaluate(rnd, replies) or MetricRecord()
        out = MetricRecord({k: v for k, v in metrics.items() if k != MetricKey.NUM_EXAMPLES})
        out[MetricKey.NUM_EXAMPLES] = _total_examples(valid)
        return RecordDict({"metrics": out})

    def _collect(self, grid: FleetGrid, messages: list[Message]) -> list[Message]:
        """Sync: every reply or the timeout. Async: return as soon as `buffer` replies are in (FedBuff)."""
        cfg = self.settings.run
        if self.settings.mode == "sync":
            replies = grid.send_and_receive(messages=messages, timeout=cfg.round_timeout)
        else:
            from federation.buffered import default_buffer, first_replies

            want = self.settings.buffer or default_buffer(len(messages))
            replies = first_replies(grid, messages, want=min(want, len(messages)), timeout=cfg.round_timeout)
        return sorted(replies, key=lambda m: m.metadata.src_node_id)

    # -- plumbing ----------------------------------------------------------------------------------
    def _seed(self, rnd: int, phase: str) -> int:
        """Per (run seed, round, site, phase): FedAvg samples with Python's `random`."""
        text = f"{self.settings.run.seed}|{rnd}|{self.site.index}|{phase}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")

    @contextlib.contextmanager
    def _site_grid(self) -> Iterator[FleetGrid]:
        if self._grid is not None:
            yield self._grid
            return
        from broker.accounts import load_credentials
        from federation.session import fleet_grid

        creds = load_credentials(self.site.credentials) if self.site.credentials else None
        cfg = dataclasses.replace(self.settings.run, broker=self.site.broker, fleet=self.site.fleet, simulate=0,
                                  run_id=f"{self.settings.run.run_id}.{self.site.name}")
        with fleet_grid(cfg, Path("."), credentials=creds) as grid:
            yield grid

    def _wait_for_devices(self, grid: FleetGrid, *, first_round: bool) -> list[int]:
        """The site's present devices, once all `SiteConfig.devices` are there (or the quorum timeout passed).

        The gateway is a fresh process per message: the retained presence documents and TDs
        arrive in a burst right after it subscribes, and on a busy machine parsing 2,500 TDs
        takes seconds. So it waits for the count it knows the site has, never for a fixed time;
        in round 1 of a synchronous run a site short of devices is an error (as the flat quorum
        is), later the sub-round goes ahead with whoever is present.
        """
        cfg = self.settings.run
        expected = self.site.devices
        deadline = time.monotonic() + cfg.quorum_timeout
        last, stable_since = -1, time.monotonic()
        while True:
            nodes = grid.get_node_ids()
            now = time.monotonic()
            if len(nodes) != last:
                last, stable_since = len(nodes), now
            if expected and len(nodes) >= expected:
                return nodes
            if not expected and nodes and now - stable_since >= 1.0:  # size unknown: until the count settles
                return nodes
            if now >= deadline:
                break
            time.sleep(0.05)
        if not nodes:
            raise QuorumError(f"site {self.site.name}: no device of fleet {self.site.fleet!r} is online at "
                              f"{self.site.broker} (waited {cfg.quorum_timeout:g} s)")
        if first_round and self.settings.mode == "sync" and len(nodes) < expected:
            raise QuorumError(f"site {self.site.name}: only {len(nodes)} of the {expected} devices came online "
                              f"within {cfg.quorum_timeout:g} s")
        return nodes


def process_start_time() -> float:
    """When this process started (epoch seconds), from /proc; 0 where /proc is not Linux's."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(") ", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def _as_float64(arrays: ArrayRecord) -> ArrayRecord:
    """θ in float64, so the site aggregate comes back in float64 (devices still receive float32)."""
    return ArrayRecord({k: Array(np.asarray(v.numpy(), np.float64)) for k, v in arrays.items()})


def _total_examples(replies: list[Message]) -> int:
    return int(sum(metric_number(next(iter(r.content.metric_records.values())), MetricKey.NUM_EXAMPLES)
                   for r in replies if r.content.metric_records))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)
