"""What the top-level ServerApp and each gateway ClientApp are told, and how it travels through Flower.

Two channels exist in Flower's deployment runtime and each carries one half:

* the **run config** (``flwr run -c``) reaches the ServerApp and every ClientApp of a run: the
  `HierarchyConfig` (the run's `RunConfig` plus the hierarchy's own settings) as one JSON string,
  and the run directory where the ServerApp writes metrics and checkpoints;
* the **node config** (``flower-supernode --node-config``) is fixed per SuperNode: the `SiteConfig`
  that tells a gateway which site broker, fleet and server account are its own.

So one FAB serves every site; nothing site-specific is inside the app.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from federation.coordinator import RunConfig, strategy_defaults
from federation.exceptions import FederationError

MODES = ("sync", "async")
HIERARCHICAL_STRATEGIES = ("reptile", "fedavg")
"""Strategies whose per-site aggregate composes into the flat update (a mean of means, weighted or not)."""
STALENESS = ("polynomial", "constant", "hinge")

RUN_DIR_KEY, SETTINGS_KEY = "run-dir", "settings"
"""Keys of ``[tool.flwr.app.config]`` in the Flower app's pyproject.toml (overridden by ``flwr run -c``)."""


@dataclass
class HierarchyConfig:
    """A hierarchical or asynchronous run: the flat run's settings plus how the levels cooperate.

    Parameters
    ----------
    run : RunConfig
        The same settings a flat `tinyfleet federate run` takes (strategy, rounds, seed, ...).
    gateways : int, default=0
        Gateway SuperNodes (0: flat run, no Flower runtime).
    mode : {"sync", "async"}, default="sync"
        ``async``: FedBuff-style buffered aggregation (`federation.buffered`).
    buffer : int, default=0
        Async: device replies per aggregation (flat) or per gateway answer (hierarchical);
        0 means a tenth of the devices, at least 1 (`federation.buffered.default_buffer`): of
        those present when a flat run starts, of those a gateway sent a task.
    gateway_buffer : int, default=1
        Async, hierarchical: gateway answers per top-level aggregation.
    staleness : {"polynomial", "constant", "hinge"}, default="polynomial"
        How a reply computed from an older model version is down-weighted.
    staleness_alpha : float, default=0.5
        Exponent of the polynomial weight ``(1 + tau) ** -alpha`` (FedBuff's default choice).
    max_staleness : int, default=8
        Replies older than this many versions are discarded (and counted).
    concurrency : int, default=0
        Async: train tasks in flight at once (0: every present device).
    """

    run: RunConfig
    gateways: int = 0
    mode: str = "sync"
    buffer: int = 0
    gateway_buffer: int = 1
    staleness: str = "polynomial"
    staleness_alpha: float = 0.5
    max_staleness: int = 8
    concurrency: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FederationError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.staleness not in STALENESS:
            raise FederationError(f"staleness must be one of {', '.join(STALENESS)}; got {self.staleness!r}")
        for name in ("gateways", "buffer", "gateway_buffer", "max_staleness", "concurrency"):
            if int(getattr(self, name)) < 0:
                raise FederationError(f"{name.replace('_', '-')} must be >= 0; got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HierarchyConfig:
        try:
            doc = json.loads(text)
            run = RunConfig(**doc.pop("run"))
            known = {f.name for f in fields(cls)}
            return cls(run=run, **{k: v for k, v in doc.items() if k in known})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise FederationError(f"unreadable hierarchy settings ({exc})") from None

    def flower_run_config(self, run_dir: Path) -> dict[str, str]:
        """The ``[tool.flwr.app.config]`` overrides of one run (written to a TOML file for ``flwr run -c``)."""
        return {RUN_DIR_KEY: str(Path(run_dir).resolve()), SETTINGS_KEY: self.to_json()}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> tuple[HierarchyConfig, Path]:
        """(settings, run directory) from a Flower `Context.run_config`."""
        text, run_dir = run_config.get(SETTINGS_KEY), run_config.get(RUN_DIR_KEY)
        if not isinstance(text, str) or not text.strip("{} ") or not isinstance(run_dir, str) or not run_dir:
            raise FederationError("this Flower run has no tinyfleet settings: start it with `tinyfleet federate run "
                                  "--gateways N`, or pass -c with 'settings' and 'run-dir' (docs/scaling.md)")
        return cls.from_json(text), Path(run_dir)


@dataclass(frozen=True)
class SiteConfig:
    """The site one gateway SuperNode serves: its broker, fleet, server account and device count.

    Parameters
    ----------
    name : str
        Site name (``site0``, ...); reported in the gateway's replies by `index`.
    index : int
        Position of the site (a number, because Flower metrics are numbers).
    broker : str
        The site broker's URL, as seen from the gateway (``mqtt://127.0.0.1:1883``).
    fleet : str
        Fleet name on the site broker.
    credentials : str, optional
        Path of the gateway's server-account JSON on the site broker (its own account: a
        secured broker forces client id = user name, so accounts are never shared).
    devices : int, default=0
        Devices the site is expected to have; a gateway waits for them (up to the quorum
        timeout) before its first sub-round. 0: whoever is present.
    """

    name: str
    index: int
    broker: str
    fleet: str
    credentials: str | None = None
    devices: int = 0

    def node_config(self) -> str:
        """The ``--node-config`` argument of the site's SuperNode (space-separated TOML key=value pairs)."""
        pairs = {"site": self.name, "site-index": self.index, "broker": self.broker, "fleet": self.fleet,
                 "credentials": self.credentials or "", "devices": self.devices}
        return " ".join(f"{k}={json.dumps(v)}" for k, v in pairs.items())

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SiteConfig:
        """Parse a SuperNode's node config; a one-line error says which key is missing or wrong."""
        try:
            broker = node_config["broker"]
            if not isinstance(broker, str) or not broker:
                raise TypeError("'broker' must be a broker URL")
            creds = node_config.get("credentials") or None
            return cls(name=str(node_config.get("site", "site")), index=int(node_config.get("site-index", 0)),
                       broker=broker, fleet=str(node_config.get("fleet", "default")),
                       credentials=str(creds) if creds else None, devices=int(node_config.get("devices", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise FederationError(f"this SuperNode is not a tinyfleet gateway: its --node-config needs "
                                  f"broker=\"mqtt://host:port\" fleet=\"...\" ({exc})") from None


def metric_number(record: Mapping[str, object], key: str) -> float:
    """A scalar metric of a Flower record as float (0 when absent or a list)."""
    value = record.get(key, 0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def level_strategy(cfg: RunConfig, **overrides: Any) -> Strategy:
    """The run's strategy with `overrides` applied where its constructor takes them.

    Both levels build their strategy here: a gateway with ``epsilon=1`` (its aggregate is the
    group's mean adapted head), the top level with ``fraction_train=1`` (every gateway, every round).
    """
    from federation.strategies.registry import build_strategy, resolve_strategy, strategy_parameters

    accepted = strategy_parameters(resolve_strategy(cfg.strategy))
    params = dict(cfg.strategy_params)
    params.update({k: v for k, v in overrides.items() if k in accepted})
    return build_strategy(cfg.strategy, params, num_rounds=cfg.rounds, defaults=strategy_defaults(cfg))
