"""The trainable float head: one numpy implementation of its forward and backward pass.

A device keeps its int8 backbone frozen and trains only this small float32 MLP online, with batch
size 1 (TinyOL). The federation server reuses the very same class to evaluate and interpolate
heads, so the math lives here and nowhere else.

Network: ``a_0 = x``; for layer ``l = 0 .. L-1``: ``z_l = a_l @ W_l + b_l``;
``a_{l+1} = relu(z_l)`` for hidden layers, ``a_L = z_{L-1}`` (linear output: values for
regression, logits for classification).

Losses for one sample:

* regression: ``mean_j (a_L[j] - y[j])**2`` (MSE over the outputs), so ``dL/da_L = 2 (a_L - y) / n_out``;
* classification: softmax cross-entropy with an integer label ``c``:
  ``-log softmax(a_L)[c]``, so ``dL/da_L = softmax(a_L) - onehot(c)``.

Backward: ``dW_l = outer(a_l, d_l)``, ``db_l = d_l``, ``d_{l-1} = (d_l @ W_l.T) * (a_l > 0)``;
the ReLU mask is read off the stored post-activation, so only ``a_0 .. a_L`` are kept (this is
what the memory accounting in `devices.learning.fit` counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from devices.exceptions import HeadDivergedError, HeadWeightsError, LearnerInputError
from firmware_models.exceptions import HeadFileError
from firmware_models.head_format import read_head_npz, weight_names, write_head_npz

Kind = Literal["regression", "classification"]
KINDS: tuple[Kind, ...] = ("regression", "classification")


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise HeadWeightsError(f"head kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind


def _validate_layout(weights: Sequence[np.ndarray], *, where: str) -> None:
    """Check the [w0 (in, h0), b0 (h0,), w1 (h0, h1), b1, ...] layout, chained shapes and finiteness."""
    if len(weights) == 0 or len(weights) % 2:
        raise HeadWeightsError(f"{where}: expected an even, non-zero number of arrays "
                               f"[w0, b0, w1, b1, ...]; got {len(weights)}")
    fan_in: int | None = None
    for i, arr in enumerate(weights):
        name = weight_names(len(weights))[i]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            kind = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise HeadWeightsError(f"{where}: {name} must be a float array; got {kind}")
        if i % 2 == 0:
            if arr.ndim != 2 or 0 in arr.shape:
                raise HeadWeightsError(f"{where}: {name} must be a non-empty 2-D (in, out) matrix; "
                                       f"got shape {arr.shape}")
            if fan_in is not None and arr.shape[0] != fan_in:
                raise HeadWeightsError(f"{where}: {name} has {arr.shape[0]} inputs but the previous layer "
                                       f"has {fan_in} outputs")
            fan_in = arr.shape[1]
        elif arr.shape != (fan_in,):
            raise HeadWeightsError(f"{where}: {name} must have shape ({fan_in},); got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise HeadWeightsError(f"{where}: {name} contains NaN or inf")


class MLPHead:
    """A float MLP head (ReLU hidden layers, linear output) trained by SGD with batch size 1.

    Parameters
    ----------
    weights : list of np.ndarray
        ``[w0 (in, h0), b0 (h0,), w1 (h0, h1), b1, ...]``, the layout of ``head.npz``
        (`firmware_models.usecases.base.ARTIFACT_HEAD`). Copied and cast to `dtype`.
    kind : {"regression", "classification"}
        Chooses the loss: MSE over the outputs, or softmax cross-entropy with integer labels.
    dtype : numpy dtype, default=np.float32
        float32 is what a device runs; float64 exists for exact gradient checks in tests.

    Attributes
    ----------
    weights_ : list of np.ndarray
        The current parameters (updated in place by `sgd_step`).
    """

    def __init__(self, weights: Sequence[np.ndarray], *, kind: str, dtype: type = np.float32) -> None:
        self.kind: Kind = _check_kind(kind)
        self.dtype = np.dtype(dtype)
        ws = [np.asarray(w) for w in weights]
        _validate_layout(ws, where="head weights")
        self.weights_: list[np.ndarray] = [np.array(w, dtype=self.dtype) for w in ws]

    # ----------------------------------------------------------------------------------- creation
    @classmethod
    def init(cls, sizes: Sequence[int], *, kind: str, seed: int, dtype: type = np.float32) -> MLPHead:
        """A freshly initialised head (the from-scratch baseline).

        He-normal weights for the ReLU layers keep activations' variance steady; the linear
        output layer gets Glorot-uniform weights; biases start at zero.
        """
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise HeadWeightsError(f"head sizes must be at least [in, out] with positive entries; got {sizes}")
        rng = np.random.default_rng(seed)
        ws: list[np.ndarray] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i < len(sizes) - 2:
                w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                w = rng.uniform(-limit, limit, size=(fan_in, fan_out))
            ws += [w, np.zeros(fan_out)]
        return cls(ws, kind=kind, dtype=dtype)

    @classmethod
    def from_npz(cls, path: str | Path, *, kind: str) -> MLPHead:
        """Load ``head.npz`` (the format of `firmware_models.head_format`); errors name the file."""
        try:
            arrays = read_head_npz(path)
        except HeadFileError as exc:
            raise HeadWeightsError(str(exc)) from None
        try:
            return cls(arrays, kind=kind)
        except HeadWeightsError as exc:
            raise HeadWeightsError(f"{Path(path)}: {exc}") from None

    def to_npz(self, path: str | Path) -> None:
        """Write ``head.npz`` atomically (temp file + rename), so a crash never leaves half a head."""
        write_head_npz(path, self.weights_)

    def copy(self) -> MLPHead:
        """An independent head with the same weights (e.g. a device's private copy of the global head)."""
        return MLPHead(self.weights_, kind=self.kind, dtype=self.dtype.type)

    # ---------------------------------------------------------------------------------- weights
    def get_weights(self) -> list[np.ndarray]:
        """Copies of the parameters, in the head.npz layout."""
        return [w.copy() for w in self.weights_]

    def set_weights(self, ws: Sequence[np.ndarray]) -> None:
        """Replace all parameters; the new arrays must have exactly the current shapes and be finite."""
        arrays = [np.asarray(w) for w in ws]
        if len(arrays) != len(self.weights_):
            raise HeadWeightsError(f"head expects {len(self.weights_)} arrays [w0, b0, ...]; got {len(arrays)}")
        for i, (new, old) in enumerate(zip(arrays, self.weights_, strict=True)):
            name = weight_names(len(arrays))[i]
            if new.shape != old.shape:
                raise HeadWeightsError(f"head array {name} must have shape {old.shape}; got {new.shape}")
            if new.dtype.kind not in "fiu":
                raise HeadWeightsError(f"head array {name} must be numeric; got {new.dtype}")
            if not np.all(np.isfinite(new)):
                raise HeadWeightsError(f"head array {name} contains NaN or inf")
        self.weights_ = [np.array(w, dtype=self.dtype) for w in arrays]

    @property
    def n_layers(self) -> int:
        """Number of dense layers."""
        return len(self.weights_) // 2

    @property
    def layer_sizes(self) -> list[int]:
        """``[in, h0, ..., out]``."""
        return [self.weights_[0].shape[0]] + [w.shape[1] for w in self.weights_[0::2]]

    @property
    def n_params(self) -> int:
        """Total number of parameters (weights and biases)."""
        return int(sum(w.size for w in self.weights_))

    def layer_params(self, layers: Iterable[int] | None = None) -> int:
        """Parameters of the given layers (all when None): the size of their gradients."""
        idx = self._layers(layers)
        return int(sum(self.weights_[2 * i].size + self.weights_[2 * i + 1].size for i in idx))

    def error_floats(self, layers: Iterable[int] | None = None) -> int:
        """Floats of back-propagated error vectors `sgd_step` keeps: outputs of the lowest trained layer and above."""
        idx = self._layers(layers)
        return int(sum(self.layer_sizes[idx[0] + 1:])) if idx else 0

    def _layers(self, layers: Iterable[int] | None) -> list[int]:
        if layers is None:
            return list(range(self.n_layers))
        idx = sorted({int(i) for i in layers})
        bad = [i for i in idx if not 0 <= i < self.n_layers]
        if bad:
            raise LearnerInputError(f"trainable layer indices must be in 0..{self.n_layers - 1}; got {bad}")
        return idx

    # ------------------------------------------------------------------------------ validation
    def _feats(self, feats: np.ndarray, *, batch: bool) -> np.ndarray:
        f = np.asarray(feats, dtype=self.dtype)
        n_in = self.layer_sizes[0]
        if batch:
            if f.ndim == 1 and n_in == 1:
                f = f[:, None]
            f = f.reshape(len(f), -1) if f.ndim > 2 else f
            if f.ndim != 2 or f.shape[1] != n_in:
                raise LearnerInputError(f"head expects features of shape (n, {n_in}); got {np.shape(feats)}")
        else:
            if f.size != n_in:
                raise LearnerInputError(f"head expects one feature vector of {n_in} values; "
                                        f"got shape {np.shape(feats)}")
            f = f.reshape(n_in)
        if not np.all(np.isfinite(f)):
            raise LearnerInputError("features contain NaN or inf")
        return f

    def _targets(self, targets: np.ndarray, n: int) -> np.ndarray:
        """Regression: float (n, n_out); classification: int (n,) in [0, n_classes)."""
        n_out = self.layer_sizes[-1]
        t = np.asarray(targets)
        if self.kind == "regression":
            t = t.astype(self.dtype, copy=False)
            if t.size != n * n_out:
                raise LearnerInputError(f"regression targets must have {n_out} value(s) per sample "
                                        f"({n} samples); got shape {np.shape(targets)}")
            t = t.reshape(n, n_out)
            if not np.all(np.isfinite(t)):
                raise LearnerInputError("regression targets contain NaN or inf")
            return t
        if t.dtype.kind not in "iuf" or t.size != n or (t.dtype.kind == "f" and not np.all(t == np.round(t))):
            raise LearnerInputError(f"classification targets must be {n} integer label(s); got shape "
                                    f"{np.shape(targets)} dtype {t.dtype}")
        t = t.reshape(n).astype(np.int64)
        if n and (t.min() < 0 or t.max() >= n_out):
            raise LearnerInputError(f"class labels must be in 0..{n_out - 1}; got {int(t.min())}..{int(t.max())}")
        return t

    # ----------------------------------------------------------------------------------- math
    def _forward(self, a: np.ndarray) -> list[np.ndarray]:
        """All activations a_0 .. a_L (works for one vector or a batch)."""
        acts = [a]
        last = self.n_layers - 1
        for layer in range(self.n_layers):
            z = acts[-1] @ self.weights_[2 * layer] + self.weights_[2 * layer + 1]
            acts.append(z if layer == last else np.maximum(z, 0))
        return acts

    def _loss_and_delta(self, out: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample losses and dL/d(output) for a batch (n, n_out)."""
        if self.kind == "regression":
            diff = out - t
            return np.mean(diff * diff, axis=1), (2.0 / out.shape[1]) * diff
        shifted = out - out.max(axis=1, keepdims=True)
        log_z = np.log(np.sum(np.exp(shifted), axis=1))
        rows = np.arange(len(t))
        losses = log_z - shifted[rows, t]
        delta = np.exp(shifted - log_z[:, None])
        delta[rows, t] -= 1.0
        return losses, delta

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Batch forward pass: features (n, in) -> outputs (n, out) (values or logits)."""
        return self._forward(self._feats(feats, batch=True))[-1]

    def loss_and_grads(self, feat: np.ndarray, target: object, *,
                       layers: Iterable[int] | None = None) -> tuple[float, list[np.ndarray]]:
        """Loss of one sample and the gradient of every parameter array (head.npz layout).

        With `layers`, the backward pass stops at the lowest requested layer and the arrays of
        other layers are returned as zeros: the device never computes gradients it will not use.
        """
        idx = self._layers(layers)
        f = self._feats(feat, batch=False)
        t = self._targets(np.asarray(target), 1)
        acts = [a[0] for a in self._forward(f[None])]
        losses, delta = self._loss_and_delta(acts[-1][None], t)
        grads = [np.zeros_like(w) for w in self.weights_]
        if idx:
            errs = self._errors(acts, delta[0], idx[0])
            for layer in idx:
                d = errs[layer]
                assert d is not None
                grads[2 * layer] = np.outer(acts[layer], d)
                grads[2 * layer + 1] = d.copy()
        return float(losses[0]), grads

    def _errors(self, acts: list[np.ndarray], delta: np.ndarray, lowest: int) -> list[np.ndarray | None]:
        """Back-propagated error vectors d_l = dL/dz_l for layers lowest .. L-1 (None below)."""
        errs: list[np.ndarray | None] = [None] * self.n_layers
        d = delta
        for layer in range(self.n_layers - 1, lowest - 1, -1):
            errs[layer] = d
            if layer > lowest:
                d = (d @ self.weights_[2 * layer].T) * (acts[layer] > 0)
        return errs

    def sgd_step(self, feat: np.ndarray, target: object, lr: float, *, trainable: set[int] | None = None,
                 clip_norm: float | None = None) -> float:
        """One SGD update on one sample; returns the loss *before* the update (prequential loss).

        The update never materialises a weight gradient: it keeps only the error vectors d_l
        (one float per neuron) and applies ``W_l -= lr * outer(a_l, d_l)`` in place, which is
        how a microcontroller does it and why `devices.learning.fit` counts error vectors, not a copy
        of the weights, as gradient memory.

        Parameters
        ----------
        feat : np.ndarray
            One feature vector (``in`` values).
        target : float array or int
            Regression target(s) or the class label.
        lr : float
            Learning rate (> 0).
        trainable : set of int, optional
            0-based indices of the dense layers to update; None updates all. The others keep
            their exact values (TinyMetaFed partial training, or fine-tuning only the last layer).
        clip_norm : float, optional
            Per-layer gradient-norm clip: ``||(dW_l, db_l)|| = ||d_l|| * sqrt(||a_l||^2 + 1)`` is
            scaled down to at most this value. Batch-1 SGD on targets of magnitude ~5 otherwise
            diverges now and then (measured on sine), and a device cannot afford a NaN head.

        Raises
        ------
        HeadDivergedError
            The loss or the updated weights are NaN/inf; the weights are left unchanged.
        """
        f = self._feats(feat, batch=False)
        t = self._targets(np.asarray(target), 1)
        return float(self.sgd_steps(f[None], t, np.zeros(1, dtype=np.intp), lr, trainable=trainable,
                                    clip_norm=clip_norm)[0])

    def sgd_steps(self, feats: np.ndarray, targets: np.ndarray, order: np.ndarray, lr: float, *,
                  trainable: set[int] | None = None, clip_norm: float | None = None, proximal_mu: float = 0.0,
                  anchor: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """``len(order)`` batch-1 SGD steps, step s on sample ``order[s]``; returns each step's prequential loss.

        The one SGD loop (`sgd_step` is this with one sample). Inputs are validated once and
        finiteness is checked once, on the losses and the final weights, instead of per step:
        those checks were ~40 % of a step's time (measured, 1-32-32-1 sine head), and a NaN or
        inf anywhere in the loop propagates to the losses or the weights, so nothing is missed.
        On divergence the head is restored to its weights before the call, never left half-NaN.

        Parameters
        ----------
        feats : np.ndarray
            Samples (n, in).
        targets : np.ndarray
            Regression targets (n, out) or class labels (n,).
        order : np.ndarray of int
            Sample index of each step (e.g. shuffled passes over the local data).
        lr, trainable, clip_norm
            As in `sgd_step`.
        proximal_mu : float, default=0.0
            FedProx's μ (Li et al., 2020): each step descends loss + μ/2·‖w − anchor‖², i.e. adds
            μ·(w − anchor) to the gradient of every trained array. The clip bounds only the data
            gradient: the proximal pull is the server's request and is applied as asked.
        anchor : sequence of np.ndarray, optional
            The weights the proximal term pulls toward (head.npz layout); default: the weights at
            the start of this call (the global model a federated round starts from).

        Raises
        ------
        HeadDivergedError
            A loss or the final weights are NaN/inf; the weights are restored.
        """
        if isinstance(lr, bool) or not (np.isfinite(lr) and lr > 0):
            raise LearnerInputError(f"learning rate must be a positive number; got {lr!r}")
        if clip_norm is not None and not (np.isfinite(clip_norm) and clip_norm > 0):
            raise LearnerInputError(f"clip_norm must be a positive number or None; got {clip_norm!r}")
        if isinstance(proximal_mu, bool) or not (np.isfinite(proximal_mu) and proximal_mu >= 0):
            raise LearnerInputError(f"proximal_mu must be a number >= 0; got {proximal_mu!r}")
        idx = self._layers(trainable)
        f = self._feats(feats, batch=True)
        t = self._targets(np.asarray(targets), len(f))
        prox: list[np.ndarray] | None = None
        if proximal_mu > 0:
            prox = [np.array(w, dtype=self.dtype, copy=True) for w in (self.weights_ if anchor is None else anchor)]
            if [w.shape for w in prox] != [w.shape for w in self.weights_]:
                raise LearnerInputError(f"proximal anchor has shapes {[w.shape for w in prox]}, the head "
                                        f"{[w.shape for w in self.weights_]}")
        steps = np.asarray(order, dtype=np.intp).reshape(-1)
        if steps.size and (int(steps.min()) < 0 or int(steps.max()) >= len(f)):
            raise LearnerInputError(f"step order must index the {len(f)} samples; got {int(steps.min())}.."
                                    f"{int(steps.max())}")
        losses = np.empty(steps.size, dtype=np.float64)
        if not idx:  # nothing to train: losses only
            losses[:] = self._loss_and_delta(self._forward(f[steps])[-1], t[steps])[0] if steps.size else 0.0
            return losses
        saved = [w.copy() for w in self.weights_]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below, once
            for s, i in enumerate(steps.tolist()):
                losses[s] = self._step(f[i], t[i], lr, idx, clip_norm, prox, float(proximal_mu))
        if not (np.all(np.isfinite(losses)) and all(np.all(np.isfinite(w)) for w in self.weights_)):
            bad = losses[~np.isfinite(losses)]
            self.weights_ = saved
            raise HeadDivergedError(f"head diverged{f': loss {bad[0]}' if bad.size else ''} (lower the learning rate "
                                    f"{lr} or set clip_norm); weights left unchanged")
        return losses

    def _step(self, a0: np.ndarray, t: np.ndarray, lr: float, idx: list[int], clip_norm: float | None,
              prox: list[np.ndarray] | None = None, mu: float = 0.0) -> float:
        """One unchecked batch-1 SGD update (validated inputs); the hot loop of every device.

        Error vectors are computed top-down with each layer's *old* weights, then that layer is
        updated, which equals computing all of them first (what `loss_and_grads` does). The
        proximal pull ``lr·μ·(w − anchor)`` is taken from the old weights too, before the data step.
        """
        ws = self.weights_
        last = len(ws) // 2 - 1
        acts = [a0]
        for layer in range(last + 1):
            z = acts[-1] @ ws[2 * layer] + ws[2 * layer + 1]
            if layer < last:
                np.maximum(z, 0, out=z)
            acts.append(z)
        out = acts[-1]
        if self.kind == "regression":
            d = out - t
            loss = float(d @ d) / d.size
            d *= 2.0 / d.size
        else:
            shifted = out - out.max()
            e = np.exp(shifted)
            z_sum = float(e.sum())
            loss = math.log(z_sum) - float(shifted[t])
            d = e / z_sum
            d[t] -= 1.0
        lowest = idx[0]
        trained = set(idx)
        for layer in range(last, lowest - 1, -1):
            a = acts[layer]
            d_below = (ws[2 * layer] @ d) * (a > 0) if layer > lowest else None
            if layer in trained:
                scale = lr
                if clip_norm is not None:
                    norm = math.sqrt(float(d @ d) * (float(a @ a) + 1.0))
                    if norm > clip_norm:
                        scale = lr * clip_norm / norm
                sd = d * scale
                if prox is not None:
                    ws[2 * layer] -= (lr * mu) * (ws[2 * layer] - prox[2 * layer])
                    ws[2 * layer + 1] -= (lr * mu) * (ws[2 * layer + 1] - prox[2 * layer + 1])
                ws[2 * layer] -= a[:, None] * sd
                ws[2 * layer + 1] -= sd
            if d_below is not None:
                d = d_below
        return loss

    def losses(self, feats: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per-sample losses of a batch (no update)."""
        f = self._feats(feats, batch=True)
        t = self._targets(targets, len(f))
        return self._loss_and_delta(self._forward(f)[-1], t)[0]

    def evaluate(self, feats: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Mean loss and the use case's metric: ``{"loss", "mse"}`` or ``{"loss", "accuracy"}``."""
        f = self._feats(feats, batch=True)
        if len(f) == 0:
            raise LearnerInputError("cannot evaluate on zero samples")
        t = self._targets(targets, len(f))
        out = self._forward(f)[-1]
        losses = self._loss_and_delta(out, t)[0]
        if self.kind == "regression":
            return {"loss": float(np.mean(losses)), "mse": float(np.mean(losses))}
        return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(np.argmax(out, axis=1) == t))}
