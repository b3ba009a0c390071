"""Reptile / TinyReptile as a Flower strategy: FedAvg's sampling, Reptile's server update.

Devices run the same local training as under FedAvg (k online SGD steps from the global head θ,
returning φ); only the server step differs: θ ← θ + ε·mean_i(φ_i − θ) with ε annealed linearly
(Nichol et al., 2018). ``serial=True`` samples one device per round, as TinyReptile does on a
fleet of microcontrollers that cannot all be awake at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from devices.wire.protocol import ConfigKey
from federation.flower_compat import check_and_log_replies
from federation.meta_update import AGGREGATIONS, linear_epsilon, reptile_update
from federation.strategies._params import check_choice, check_int, check_real

log = logging.getLogger(__name__)

SERIAL_FRACTION = 1e-9
"""With ``serial=True``: a fraction so small that FedAvg's sampler draws `min_train_nodes` = 1."""


class Reptile(FedAvg):
    """Federated Reptile (batched) or TinyReptile (serial).

    Parameters
    ----------
    epsilon : float, default=1.0
        Outer step size at round 1, in (0, 1].
    epsilon_floor : float, default=0.0
        ε at the last round; annealed linearly in between. In [0, epsilon].
    num_rounds : int, default=1
        Rounds of the run (the schedule needs to know where it ends).
    local_steps : int, default=50
        Online (batch-1) SGD steps each device takes per round (``local-steps`` in the task config).
        Reptile needs an inner loop that moves far from θ: on sine, 5–20 steps at lr 0.01–0.02
        left the few-shot MSE at 0.6–4 where 50 steps reach 0.45 (docs/federation.md, measured).
    local_lr : float, default=0.02
        Device learning rate (``lr`` in the task config); 0.05 made batch-1 SGD on amplitude-5
        sines noisy enough to double the few-shot MSE (measured).
    serial : bool, default=False
        One device per round (TinyReptile) instead of `fraction_train` of them.
    aggregation : {"mean", "median", "trimmed-mean", "krum"}, default="mean"
        How the updates φ − θ are combined: Reptile's mean, or Flower's coordinate-wise median /
        trimmed mean / Krum selection, which a few consistent, wrong updates cannot drag (see
        `reptile_update`).
    trim : float, default=0.2
        For "trimmed-mean": fraction of updates cut at each end per coordinate, in [0, 0.5).
    num_malicious_nodes : int, default=0
        For "krum": how many devices are assumed malicious (Krum's f).
    **kwargs
        Passed to `flwr.serverapp.strategy.FedAvg` (fractions, minimum nodes, keys).
    """

    def __init__(self, *, epsilon: float = 1.0, epsilon_floor: float = 0.0, num_rounds: int = 1,
                 local_steps: int = 50, local_lr: float = 0.02, serial: bool = False, aggregation: str = "mean",
                 trim: float = 0.2, num_malicious_nodes: int = 0, **kwargs: Any) -> None:
        if serial:
            kwargs.update(fraction_train=SERIAL_FRACTION, min_train_nodes=1)
            kwargs.setdefault("min_available_nodes", 1)
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.epsilon_floor = epsilon_floor
        self.num_rounds = num_rounds
        self.local_steps = local_steps
        self.local_lr = local_lr
        self.serial = serial
        self.aggregation = aggregation
        self.trim = trim
        self.num_malicious_nodes = num_malicious_nodes
        self._theta: ArrayRecord | None = None
        self._validate_params()

    def _validate_params(self) -> None:
        check_real(self, "epsilon", self.epsilon, 0.0, 1.0, closed="right")
        check_real(self, "epsilon_floor", self.epsilon_floor, 0.0, float(self.epsilon), closed="both")
        check_int(self, "num_rounds", self.num_rounds, 1)
        check_int(self, "local_steps", self.local_steps, 1)
        check_real(self, "local_lr", self.local_lr, 0.0, 1000.0, closed="right")
        check_choice(self, "aggregation", self.aggregation, AGGREGATIONS)
        check_real(self, "trim", self.trim, 0.0, 0.5, closed="left")
        check_int(self, "num_malicious_nodes", self.num_malicious_nodes, 0)

    def summary(self) -> None:
        """Log the Reptile settings, then FedAvg's."""
        log.info("\t├──> Reptile: epsilon %.3g -> %.3g over %d rounds, %d local steps at lr %.3g%s",
                 self.epsilon, self.epsilon_floor, self.num_rounds, self.local_steps, self.local_lr,
                 " (serial)" if self.serial else "")
        super().summary()

    def epsilon_at(self, server_round: int) -> float:
        """The outer step size used to aggregate `server_round`."""
        return linear_epsilon(server_round, self.num_rounds, epsilon=self.epsilon, epsilon_floor=self.epsilon_floor)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember θ (aggregate_train never sees it) and ask for `local_steps` SGD steps."""
        self._theta = arrays
        config[ConfigKey.LOCAL_STEPS] = self.local_steps
        config[ConfigKey.LR] = self.local_lr
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """θ + ε·mean(φ − θ) over the valid replies; metrics averaged as FedAvg does."""
        valid, _ = check_and_log_replies(self, replies, is_train=True)
        if not valid or self._theta is None:
            return None, None
        keys = list(self._theta.keys())
        theta = [self._theta[k].numpy() for k in keys]
        phis = [self.adapted_weights(msg, keys, theta) for msg in valid]
        eps = self.epsilon_at(server_round)
        new = reptile_update(theta, phis, eps, aggregation=self.aggregation, trim=self.trim,
                             num_malicious_nodes=self.num_malicious_nodes)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in zip(keys, new, strict=True)})
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        metrics["epsilon"] = eps
        return arrays, metrics

    def adapted_weights(self, reply: Message, keys: list[str], theta: list[np.ndarray]) -> list[np.ndarray]:
        """φ of one device, in the order of `keys` (subclasses decode compressed replies here)."""
        rec = next(iter(reply.content.array_records.values()))
        return [rec[k].numpy() for k in keys]
