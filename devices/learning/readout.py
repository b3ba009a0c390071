"""Closed-form readout: the head's last (linear) layer re-fitted by ridge regression on a device's shots.

Why: a few-shot device cannot afford hundreds of SGD steps to fit its output layer, and SGD on
ten shots at a rate that is stable for every device is slow (TinyMetaFed's local layer, measured:
R = 200 SGD steps at lr 0.05 still MSE 1.26 on sine, where this closed form reaches 0.33). The
last layer is linear in its inputs, so its best fit on K samples is a small linear solve.

The exact formula (what the C port must compute)
------------------------------------------------
Let ``a_k`` (h values) be the input of the last layer for shot k (the post-ReLU activations of the
layer below, or the features for a one-layer head), ``y_k`` (m values) the target (regression:
the target values; classification: the one-hot vector of the label, 1 at the label, 0 elsewhere),
and ``W0`` (h × m) the head's current last-layer weights (the *prior*). The readout solves::

    minimise over W (h × m), b (m):   sum_k || a_k W + b - y_k ||^2  +  lambda * || W - W0 ||_F^2

The bias ``b`` is not regularised. With the augmented input ``ã_k = [a_k, 1]`` (the *bias column*
is the constant 1 appended last) and ``Θ = [W; b]`` ((h+1) × m) the normal equations are::

    G Θ = R,    G = sum_k ã_k ã_k^T + Λ,    R = sum_k ã_k y_k^T + Λ [W0; 0],    Λ = diag(lambda, ..., lambda, 0)

``G`` is symmetric positive definite for any lambda > 0 and K ≥ 1 (the bias entry sums to K),
so it is solved by Cholesky ``G = L L^T`` (in place), then ``L z = R`` (forward substitution)
and ``L^T Θ = z`` (back substitution), column by column. Everything is float32, as on a device.

Large lambda keeps the prior (the meta-learned readout); small lambda trusts the shots. A device
may stream its shots: each shot adds ``ã ã^T`` to ``G`` and ``ã y^T`` to ``R`` and is forgotten.

RAM (added to the memory report as ``adaptation``; `readout_floats`)::

    4 * ((h + 1)^2 + (h + 1) * m) bytes    (G, then L in place; R, then z and Θ in place)

(h + 1)(h + 2)/2 instead of (h + 1)^2 if the C port stores only the lower triangle.
"""

from __future__ import annotations

import numpy as np

from devices.exceptions import LearnerInputError
from devices.learning.head import MLPHead


def readout_floats(n_in: int, n_out: int) -> int:
    """Floats the readout solver holds: the (n_in+1)² Gram matrix and the (n_in+1) × n_out right-hand side."""
    return (int(n_in) + 1) ** 2 + (int(n_in) + 1) * int(n_out)


class RidgeReadout:
    """Accumulate the normal equations of the ridge readout shot by shot, then solve them.

    Parameters
    ----------
    prior_w : np.ndarray
        ``W0`` (h × m): the current last-layer weights the solution is shrunk toward.
    lam : float
        lambda > 0 (see the module docstring).
    """

    def __init__(self, prior_w: np.ndarray, lam: float) -> None:
        if isinstance(lam, bool) or not (np.isfinite(lam) and lam > 0):
            raise LearnerInputError(f"readout lambda must be a positive number; got {lam!r}")
        w0 = np.asarray(prior_w, np.float32)
        if w0.ndim != 2:
            raise LearnerInputError(f"readout prior must be an (h, m) matrix; got shape {w0.shape}")
        h, m = w0.shape
        self.n_in, self.n_out = h, m
        self.lam = np.float32(lam)
        self.gram = np.zeros((h + 1, h + 1), np.float32)
        self.gram[np.arange(h), np.arange(h)] = self.lam
        self.rhs = np.zeros((h + 1, m), np.float32)
        self.rhs[:h] = self.lam * w0
        self.count = 0

    def add(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        """Add shots: `inputs` (n, h) last-layer inputs, `targets` (n, m) target rows."""
        a = np.asarray(inputs, np.float32).reshape(-1, self.n_in)
        y = np.asarray(targets, np.float32).reshape(len(a), self.n_out)
        aug = np.concatenate([a, np.ones((len(a), 1), np.float32)], axis=1)
        self.gram += aug.T @ aug
        self.rhs += aug.T @ y
        self.count += len(a)

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the ridge readout; raises `LearnerInputError` when no shot was added."""
        if self.count == 0:
            raise LearnerInputError("readout needs at least one shot")
        chol = cholesky_lower(self.gram)
        z = forward_substitution(chol, self.rhs)
        theta = back_substitution(chol, z)
        return theta[:-1].copy(), theta[-1].copy()


def cholesky_lower(g: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L L^T = g, float32, column by column (Cholesky–Crout).

    Column j: ``L[j, j] = sqrt(g[j, j] - sum_k<j L[j, k]^2)``, then
    ``L[i, j] = (g[i, j] - sum_k<j L[i, k] L[j, k]) / L[j, j]`` for i > j.
    """
    n = g.shape[0]
    low = np.zeros_like(g, dtype=np.float32)
    for j in range(n):
        d = g[j, j] - low[j, :j] @ low[j, :j]
        if not d > 0:
            raise LearnerInputError("readout system is not positive definite (lambda too small for these inputs)")
        low[j, j] = np.sqrt(d)
        low[j + 1:, j] = (g[j + 1:, j] - low[j + 1:, :j] @ low[j, :j]) / low[j, j]
    return low


def forward_substitution(low: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """z with L z = rhs (L lower triangular, rhs (n, m))."""
    z = np.zeros_like(rhs, dtype=np.float32)
    for i in range(low.shape[0]):
        z[i] = (rhs[i] - low[i, :i] @ z[:i]) / low[i, i]
    return z


def back_substitution(low: np.ndarray, z: np.ndarray) -> np.ndarray:
    """x with L^T x = z (L lower triangular)."""
    n = low.shape[0]
    x = np.zeros_like(z, dtype=np.float32)
    for i in range(n - 1, -1, -1):
        x[i] = (z[i] - low[i + 1:, i] @ x[i + 1:]) / low[i, i]
    return x


def readout_targets(head: MLPHead, targets: np.ndarray) -> np.ndarray:
    """Target rows of the readout: regression values (n, m), or one-hot rows of class labels."""
    n_out = head.layer_sizes[-1]
    t = np.asarray(targets)
    if head.kind == "regression":
        return t.astype(np.float32).reshape(len(t), n_out)
    labels = head._targets(t, len(t))
    out = np.zeros((len(labels), n_out), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def last_layer_inputs(head: MLPHead, feats: np.ndarray) -> np.ndarray:
    """Inputs of the head's last layer for a batch of features (the forward pass below it)."""
    return head._forward(head._feats(feats, batch=True))[-2]


def fit_readout(head: MLPHead, feats: np.ndarray, targets: np.ndarray, lam: float) -> None:
    """Replace the head's last layer by the ridge readout on (`feats`, `targets`), shrunk toward itself.

    The layers below are unchanged; the head's last layer before the call is the prior ``W0``.
    """
    last = head.n_layers - 1
    solver = RidgeReadout(head.weights_[2 * last], lam)
    solver.add(last_layer_inputs(head, feats), readout_targets(head, targets))
    w, b = solver.solve()
    new = head.get_weights()
    new[2 * last], new[2 * last + 1] = w, b
    head.set_weights(new)


__all__ = ["RidgeReadout", "back_substitution", "cholesky_lower", "fit_readout", "forward_substitution",
           "last_layer_inputs", "readout_floats", "readout_targets"]
