"""Reptile's meta-update and its step-size schedule: the only place the interpolation lives.

Reptile (Nichol et al., 2018) moves the initialization toward task-adapted weights,
θ ← θ + ε · mean_i(φ_i − θ); with one task per step (serial Reptile, as TinyReptile runs on tiny
fleets) the mean has one term. ε is annealed linearly so that late rounds refine instead of jump.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg
from flwr.serverapp.strategy.multikrum import select_multikrum

AGGREGATIONS = ("mean", "median", "trimmed-mean", "krum")
"""How the devices' updates φ_i − θ are combined: Reptile's mean, or a robust statistic."""


def krum_index(deltas: Sequence[Sequence[np.ndarray]], num_malicious_nodes: int) -> int:
    """Index of the update Krum selects (Blanchard et al., 2017), by Flower's own `select_multikrum`.

    Krum scores each update by the summed squared distances to its n − f − 2 nearest others and
    keeps the one with the lowest score: an update far from every other (an attacker's) is never chosen.
    """
    contents = [RecordDict({"arrays": ArrayRecord({str(k): Array(np.ascontiguousarray(a)) for k, a in enumerate(d)})})
                for d in deltas]
    (chosen,) = select_multikrum(contents, num_malicious_nodes=num_malicious_nodes, num_nodes_to_select=1)
    return next(i for i, c in enumerate(contents) if c is chosen)


def reptile_update(theta: Sequence[np.ndarray], phis: Sequence[Sequence[np.ndarray]],
                   epsilon: float, *, aggregation: str = "mean", trim: float = 0.2,
                   num_malicious_nodes: int = 0) -> list[np.ndarray]:
    """Return θ + ε · agg_i(φ_i − θ), layer by layer, in float64 then cast back.

    ``agg`` is Reptile's mean by default. A device that passes every per-reply check can still
    send a large, consistent, wrong update (a broken sensor, a poisoned data set); the mean moves
    by 1/n of it, the coordinate-wise median and the trimmed mean by nothing or little. These two
    are Flower's own `aggregate_median` / `aggregate_trimmed_avg` (FedMedian, FedTrimmedAvg)
    applied to the updates with equal weights; "krum" takes the one update Flower's Krum selects.

    Parameters
    ----------
    theta : sequence of np.ndarray
        The global parameters the devices started from.
    phis : sequence of sequences of np.ndarray
        Each device's adapted parameters, same layout as `theta`.
    epsilon : float
        Outer step size; 1 with one device means "take the device's weights".
    aggregation : {"mean", "median", "trimmed-mean"}, default="mean"
        How the updates are combined.
    trim : float, default=0.2
        For "trimmed-mean": fraction cut at *each* end per coordinate, in [0, 0.5).
    num_malicious_nodes : int, default=0
        For "krum": the f of Krum's n − f − 2 neighbours (`krum_index`).

    Returns
    -------
    list of np.ndarray
        New global parameters, each with the dtype of the matching `theta` layer.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {aggregation!r}")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5); got {trim!r}")
    if not phis:
        return [np.array(t, copy=True) for t in theta]
    t64s = [np.asarray(t, dtype=np.float64) for t in theta]
    deltas = [[np.asarray(phi[k], dtype=np.float64) - t64 for k, t64 in enumerate(t64s)] for phi in phis]
    if aggregation == "mean":
        combined = [np.mean([d[k] for d in deltas], axis=0) for k in range(len(t64s))]
    elif aggregation == "median":
        combined = aggregate_median([(d, 1) for d in deltas])
    elif aggregation == "trimmed-mean":
        combined = aggregate_trimmed_avg([(d, 1) for d in deltas], trim)
    else:
        combined = deltas[krum_index(deltas, num_malicious_nodes)]
    return [(t64 + epsilon * c).astype(np.asarray(t).dtype)
            for t, t64, c in zip(theta, t64s, combined, strict=True)]


def linear_epsilon(server_round: int, num_rounds: int, *, epsilon: float, epsilon_floor: float) -> float:
    """ε for `server_round` (1-based): Reptile's ε·(1 − i/n) schedule, generalized to end at a floor.

    ε falls linearly from `epsilon` at round 1 toward `epsilon_floor`, which it would reach one
    round after the last, so the last round still moves the parameters (a schedule that hits 0 at
    the last round wastes it).
    """
    frac = (server_round - 1) / max(num_rounds, 1)
    frac = min(max(frac, 0.0), 1.0)
    return float(epsilon + (epsilon_floor - epsilon) * frac)
