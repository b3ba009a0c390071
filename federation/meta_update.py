"""Reptile's meta-update and its step-size schedule: the only place the interpolation lives.

Reptile (Nichol et al., 2018) moves the initialization toward task-adapted weights,
θ ← θ + ε · mean_i(φ_i − θ); with one task per step (serial Reptile, as TinyReptile runs on tiny
fleets) the mean has one term. ε is annealed linearly so that late rounds refine instead of jump.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reptile_update(theta: Sequence[np.ndarray], phis: Sequence[Sequence[np.ndarray]],
                   epsilon: float) -> list[np.ndarray]:
    """Return θ + ε · mean_i(φ_i − θ), layer by layer, in float64 then cast back.

    Parameters
    ----------
    theta : sequence of np.ndarray
        The global parameters the devices started from.
    phis : sequence of sequences of np.ndarray
        Each device's adapted parameters, same layout as `theta`.
    epsilon : float
        Outer step size; 1 with one device means "take the device's weights".

    Returns
    -------
    list of np.ndarray
        New global parameters, each with the dtype of the matching `theta` layer.
    """
    if not phis:
        return [np.array(t, copy=True) for t in theta]
    out = []
    for k, t in enumerate(theta):
        t64 = np.asarray(t, dtype=np.float64)
        deltas = [np.asarray(phi[k], dtype=np.float64) - t64 for phi in phis]
        out.append((t64 + epsilon * np.mean(deltas, axis=0)).astype(np.asarray(t).dtype))
    return out


def linear_epsilon(server_round: int, num_rounds: int, *, epsilon: float, epsilon_floor: float) -> float:
    """ε for `server_round` (1-based): Reptile's ε·(1 − i/n) schedule, generalized to end at a floor.

    ε falls linearly from `epsilon` at round 1 toward `epsilon_floor`, which it would reach one
    round after the last, so the last round still moves the parameters (a schedule that hits 0 at
    the last round wastes it).
    """
    frac = (server_round - 1) / max(num_rounds, 1)
    frac = min(max(frac, 0.0), 1.0)
    return float(epsilon + (epsilon_floor - epsilon) * frac)
