"""What a device does with a ``task.train``: receive the global head, train, and answer with its update.

The agent (`devices.agent.DeviceAgent`) calls these functions on every train task, and the
in-process experiments of `benchmarks.fedmeta` call the agent itself, so there is one device
procedure for every strategy:

* **receive** (`receive_weights`): dense float32 weights, or (``downlink: delta-q8``) int8
  deltas to the device's *base* — the weights it last received — checked by CRC first
  (`devices.wire.delta`). Tensors the task leaves out (TinyMetaFed's local layers) come from
  the device's own personal copy.
* **reconstruct** (TinyMetaFed, ``local-layers``): the personal layers are re-fitted with the
  shared ones frozen, in closed form when ``readout-lambda`` is given (`devices.learning.readout`
  on all local training samples; the local layer must then be the last one), else by
  ``reconstruct-steps`` batch-1 SGD steps.
* **train**: ``local-steps`` batch-1 SGD steps at ``lr`` on the local data, the shared layers only
  when some are local (`OnlineLearner.train`, the one SGD loop; with ``proximal-mu``, FedProx's
  proximal term), then, with ``clipping_norm``, the update φ − θ is clipped (`clip_update`).
* **answer**: the new weights (dense), or the Top-P update φ − θ of each shared tensor
  (``top-p``), with error feedback when ``error-feedback`` is true: the values travel as float16
  and the unsent part (with the rounding error) stays in `FederatedState.residual` and joins the
  next round's update (`devices.wire.sparse`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devices.exceptions import ProtocolError
from devices.learning.learner import OnlineLearner
from devices.learning.readout import fit_readout
from devices.wire.delta import arrays_crc32, q8_apply
from devices.wire.protocol import (
    ConfigKey,
    Downlink,
    ErrorCode,
    Frame,
    MetricKey,
    ReplyEncoding,
    SparseTensor,
    weight_names,
)
from devices.wire.sparse import top_p_encode, top_p_encode_ef


@dataclass
class FederatedState:
    """What a device keeps between federated rounds.

    Attributes
    ----------
    personal : dict of layer -> (W, b)
        TinyMetaFed's local layers (never uploaded).
    base : dict of tensor name -> array
        The weights the device last received, per tensor (delta-coded downlinks apply to them).
    residual : dict of tensor name -> array
        Error-feedback residual of the Top-P uplink.
    """

    personal: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    base: dict[str, np.ndarray] = field(default_factory=dict)
    residual: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_weights(cls, weights: list[np.ndarray]) -> FederatedState:
        """A device that holds `weights` (its deployed head) as its base."""
        names = weight_names(len(weights))
        return cls(base={n: np.asarray(w, np.float32).copy() for n, w in zip(names, weights, strict=True)})

    def floats(self) -> int:
        """Floats held between rounds besides the head itself (memory report ``federated``)."""
        return int(sum(a.size for a in self.base.values()) + sum(a.size for a in self.residual.values()))


def receive_weights(frame: Frame, current: list[np.ndarray], state: FederatedState) -> list[np.ndarray]:
    """The full head θ a train task asks the device to start from (see the module docstring).

    Raises
    ------
    ProtocolError
        ``bad-shape`` (unknown tensor, wrong shape or dtype), ``bad-config`` (scales do not match
        the tensors), ``stale-base`` (the device does not hold the base the server assumes).
    """
    cfg = frame.config
    names = weight_names(len(current))
    shapes = {n: w.shape for n, w in zip(names, current, strict=True)}
    got = {name: t.to_dense() if isinstance(t, SparseTensor) else t for name, t in frame.tensors}
    if not got:
        raise ProtocolError("task.train carries no weights", code=ErrorCode.BAD_SHAPE, request_id=frame.id)
    for name, arr in got.items():
        if name not in shapes or arr.shape != shapes[name]:
            raise ProtocolError(f"task.train: tensor {name!r} of shape {arr.shape} does not fit this device's head "
                                f"{[(n, shapes[n]) for n in names]}", code=ErrorCode.BAD_SHAPE, request_id=frame.id)
    order = [name for name, _ in frame.tensors]
    if cfg.get(ConfigKey.DOWNLINK, Downlink.DENSE) == Downlink.DELTA_Q8:
        scales = list(cfg[ConfigKey.DOWNLINK_SCALES])
        if len(scales) != len(order):
            raise ProtocolError(f"task.train: {len(scales)} downlink scales for {len(order)} tensors",
                                code=ErrorCode.BAD_CONFIG, request_id=frame.id)
        if any(n not in state.base for n in order) or \
                arrays_crc32([state.base[n] for n in order]) != int(cfg[ConfigKey.BASE_CRC]):
            raise ProtocolError("task.train: delta-coded weights, but this device does not hold the base the server "
                                "assumes (CRC mismatch); send dense weights", code=ErrorCode.STALE_BASE,
                                request_id=frame.id)
        if any(got[n].dtype != np.int8 for n in order):
            raise ProtocolError("task.train: delta-q8 tensors must be int8", code=ErrorCode.BAD_SHAPE,
                                request_id=frame.id)
        received = {n: q8_apply(state.base[n], got[n], s) for n, s in zip(order, scales, strict=True)}
    else:
        if any(got[n].dtype.kind != "f" for n in order):
            raise ProtocolError("task.train: dense weights must be float", code=ErrorCode.BAD_SHAPE,
                                request_id=frame.id)
        received = {n: np.asarray(got[n], np.float32) for n in order}
    for n, arr in received.items():
        state.base[n] = arr.copy()
    theta = []
    for i, n in enumerate(names):
        layer = i // 2
        if n in received:
            theta.append(received[n].copy())
        elif layer in state.personal:
            theta.append(state.personal[layer][i % 2].copy())
        else:  # a tensor the server never sends and the device never fitted: keep what the device has
            theta.append(np.asarray(current[i], np.float32).copy())
    return theta


def train_round(learner: OnlineLearner, x: np.ndarray, y: np.ndarray, theta: list[np.ndarray],
                config: dict[str, Any], state: FederatedState, *, request_id: str | None = None
                ) -> tuple[dict[str, float], list[tuple[str, Any]], dict[str, Any]]:
    """Reconstruct, train and encode one round (see the module docstring); returns (metrics, tensors, extra)."""
    head = learner.head
    n_layers = head.n_layers
    local = sorted(set(config.get(ConfigKey.LOCAL_LAYERS, [])))
    if any(i >= n_layers for i in local) or len(local) == n_layers:
        raise ProtocolError(f"local-layers {local} must be a proper subset of 0..{n_layers - 1}",
                            code=ErrorCode.BAD_CONFIG, request_id=request_id)
    lam = config.get(ConfigKey.READOUT_LAMBDA)
    if lam is not None and local != [n_layers - 1]:
        raise ProtocolError(f"readout-lambda re-fits the last layer in closed form: local-layers must be "
                            f"[{n_layers - 1}], got {local}", code=ErrorCode.BAD_CONFIG, request_id=request_id)
    start = [w.copy() for w in theta]
    for layer in local:  # partial local reconstruction: personal layers never leave the device
        if layer in state.personal:
            start[2 * layer], start[2 * layer + 1] = (w.copy() for w in state.personal[layer])
    head.set_weights(start)
    shared = set(range(n_layers)) - set(local)
    lr = float(config[ConfigKey.LR])
    metrics: dict[str, float] = {}
    if local and lam is not None:
        fit_readout(head, learner.features(x), y, float(lam))
    elif local and int(config.get(ConfigKey.RECONSTRUCT_STEPS, 0)) > 0:
        rec = learner.train(x, y, int(config[ConfigKey.RECONSTRUCT_STEPS]), lr=lr, layers=set(local))
        metrics[MetricKey.RECONSTRUCT_LOSS] = rec[MetricKey.TRAIN_LOSS]
    out = learner.train(x, y, int(config[ConfigKey.LOCAL_STEPS]), lr=lr, layers=shared if local else None,
                        proximal_mu=float(config.get(ConfigKey.PROXIMAL_MU, 0.0)))
    phi = head.get_weights()
    for layer in local:
        state.personal[layer] = (phi[2 * layer].copy(), phi[2 * layer + 1].copy())
    metrics.update(out)  # the learner speaks the wire's metric vocabulary (MetricKey)
    names = weight_names(len(phi))
    send = [i for i in range(len(phi)) if i // 2 in shared]
    if ConfigKey.CLIPPING_NORM in config:
        metrics[MetricKey.NORM_BIT] = float(clip_update(phi, theta, send, float(config[ConfigKey.CLIPPING_NORM])))
    top_p = config.get(ConfigKey.TOP_P)
    if top_p is None:
        return metrics, [(names[i], phi[i]) for i in send], {"encoding": ReplyEncoding.WEIGHTS, "local-layers": local}
    tensors: list[tuple[str, Any]] = []
    feedback = bool(config.get(ConfigKey.ERROR_FEEDBACK, False))
    for i in send:
        delta = phi[i] - theta[i]
        if feedback:
            idx, vals, state.residual[names[i]] = top_p_encode_ef(delta, state.residual.get(names[i]), float(top_p))
        else:
            idx, vals = top_p_encode(delta, float(top_p))
        tensors.append((names[i], SparseTensor(idx, vals, phi[i].shape)))
    metrics[MetricKey.TOP_P] = float(top_p)
    return metrics, tensors, {"encoding": ReplyEncoding.DELTA, "local-layers": local}


def clip_update(phi: list[np.ndarray], theta: list[np.ndarray], arrays: list[int], clipping_norm: float) -> bool:
    """Scale the update φ − θ of `arrays` (in place in `phi`) to L2 norm ≤ `clipping_norm`; True if it was clipped.

    Flower's ``fixedclipping_mod``/``adaptiveclipping_mod`` rule (FlatClip, McMahan et al. 2018) over
    the arrays the device sends back: the norm is taken over all of them together.
    """
    deltas = [phi[i].astype(np.float64) - theta[i].astype(np.float64) for i in arrays]
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in deltas))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    if scale < 1.0:
        for i, d in zip(arrays, deltas, strict=True):
            phi[i] = (theta[i].astype(np.float64) + d * scale).astype(phi[i].dtype)
    return scale < 1.0


__all__ = ["FederatedState", "clip_update", "receive_weights", "train_round"]
