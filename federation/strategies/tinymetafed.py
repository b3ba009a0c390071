"""TinyMetaFed as a Flower strategy: Reptile + partial local reconstruction + compressed links both ways.

* **Partial local reconstruction.** The head's `local_layers` (by default the last one) never
  travel: the server meta-learns only the shared layers, and each device re-fits its own copy of
  the local ones before it trains — by ``reconstruct_steps`` SGD steps (default), or in closed
  form with ``readout_lambda`` (a ridge readout on its local data, `devices.learning.readout`). A
  new device reconstructs it in closed form on its K shots (`devices.learning.adapt`).
* **Top-P% uplink with error feedback.** Devices upload the ``ceil(top_p · size)`` largest
  entries of their update per shared tensor (`devices.wire.sparse`); with ``error_feedback``
  what they leave out stays on the device and joins the next update.
* **Delta-coded downlink** (``downlink="delta-q8"``). The server remembers, per device, the
  shared weights it last sent (the device's *base*; unknown devices are assumed to hold the
  run's initial head, which they were deployed with) and sends int8 deltas with one scale per
  tensor (`devices.wire.delta`); a device whose base differs answers ``stale-base`` (one that does
  not implement delta codes: ``unsupported-config``, the codec lists ``downlink`` as required) and
  gets dense weights the next time it is sampled. The record is updated only when a device answers.
  Dense weights are the whole head, as Reptile sends it (a device that knows none of these keys
  trains as it would under Reptile, with its own copy of the local layers).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from devices.wire.delta import arrays_crc32, q8_apply, q8_encode
from devices.wire.protocol import ConfigKey, Downlink, ErrorCode, weight_names
from devices.wire.sparse import top_p_decode
from federation.replies import IDX_SUFFIX, VAL_SUFFIX, device_error_reason
from federation.strategies._params import check_choice, check_int, check_real
from federation.strategies.reptile import Reptile

DOWNLINKS = (Downlink.DENSE, Downlink.DELTA_Q8)


class TinyMetaFed(Reptile):
    """Federated meta-learning for TinyML with partial local reconstruction and compressed links.

    Parameters
    ----------
    top_p : float, default=0.05
        Fraction of each shared tensor's update entries a device uploads, in (0, 1]. Each kept
        entry costs 6 bytes (uint16 index + float32 value) against 4 dense.
    local_layers : tuple of int, default=(-1,)
        Head layers (0-based, negative from the end) that stay on the device.
    readout_lambda : float or None, default=None
        Re-fit the local (last) layer in closed form before each round's training, ridge lambda
        (`devices.learning.readout`); None: `reconstruct_steps` SGD steps. A new device always uses the
        closed form on its shots (`federation.fewshot`); in training rounds it was worse on sine's
        validation devices (100 rounds × 8 of 200 devices: MSE 1.89 with λ = 1, 0.72 with λ = 10, 0.76
        with 5 SGD steps), because a body trained under an exactly fitted readout gets little gradient.
    reconstruct_steps : int, default=5
        SGD steps of the local layers before training, when `readout_lambda` is None or a device
        does not implement the closed form (both keys travel; a device uses the readout if it can).
    error_feedback : bool, default=True
        Devices keep the unsent part of their Top-P update for the next round (and send the values
        as float16: the rounding error joins the residual).
    downlink : {"delta-q8", "dense"}, default="delta-q8"
        How the shared weights go down (see the module docstring); "dense" sends the whole head.
    **kwargs
        Passed to `Reptile` (epsilon, schedule, local steps and lr, serial, FedAvg's options).
    """

    def __init__(self, *, top_p: float = 0.05, local_layers: tuple[int, ...] = (-1,),
                 readout_lambda: float | None = None, reconstruct_steps: int = 5, error_feedback: bool = True,
                 downlink: str = Downlink.DELTA_Q8, **kwargs: object) -> None:
        self.top_p = top_p
        self.local_layers = tuple(local_layers)
        self.readout_lambda = readout_lambda
        self.reconstruct_steps = reconstruct_steps
        self.error_feedback = error_feedback
        self.downlink = downlink
        self._initial_shared: dict[str, np.ndarray] | None = None
        self._bases: dict[int, dict[str, np.ndarray]] = {}
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        self._dense_next: set[int] = set()
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def _validate_params(self) -> None:
        super()._validate_params()
        check_real(self, "top_p", self.top_p, 0.0, 1.0, closed="right")
        check_int(self, "reconstruct_steps", self.reconstruct_steps, 0)
        check_choice(self, "downlink", self.downlink, DOWNLINKS)
        if self.readout_lambda is not None:
            check_real(self, "readout_lambda", self.readout_lambda, 0.0, 1000.0, closed="right")
        if not isinstance(self.error_feedback, bool):
            from federation.exceptions import StrategyParameterError

            raise StrategyParameterError(f"The 'error_feedback' parameter of {type(self).__name__} must be a bool. "
                                         f"Got {self.error_feedback!r} instead.")
        if not self.local_layers or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in self.local_layers):
            from federation.exceptions import StrategyParameterError

            raise StrategyParameterError(f"The 'local_layers' parameter of {type(self).__name__} must be a "
                                         f"non-empty tuple of ints. Got {self.local_layers!r} instead.")

    def split_keys(self, keys: list[str]) -> tuple[list[str], list[str], list[int]]:
        """(shared keys, local keys, local layer indices) of a head laid out as w0, b0, w1, b1, ..."""
        n_layers = len(keys) // 2
        expected = weight_names(len(keys))
        if keys != expected:
            from federation.exceptions import FederationError

            raise FederationError(f"TinyMetaFed needs head arrays named {expected}; got {keys}")
        local = sorted({i % n_layers for i in self.local_layers if -n_layers <= i < n_layers})
        if len(local) != len(set(self.local_layers)) or len(local) >= n_layers:
            from federation.exceptions import StrategyParameterError

            raise StrategyParameterError(
                f"The 'local_layers' parameter of TinyMetaFed must name distinct layers of the {n_layers}-layer "
                f"head and leave at least one shared. Got {self.local_layers!r} instead.")
        if self.readout_lambda is not None and local != [n_layers - 1]:
            from federation.exceptions import StrategyParameterError

            raise StrategyParameterError("The 'readout_lambda' parameter of TinyMetaFed re-fits the last layer in "
                                         f"closed form: 'local_layers' must be (-1,). Got {self.local_layers!r}.")
        local_keys = [k for i in local for k in (f"w{i}", f"b{i}")]
        return [k for k in keys if k not in local_keys], local_keys, local

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One task per sampled device: its shared layers (int8 deltas to its base, or dense) and the settings."""
        shared, _, local = self.split_keys(list(arrays.keys()))
        config[ConfigKey.TOP_P] = float(self.top_p)
        config[ConfigKey.LOCAL_LAYERS] = local
        config[ConfigKey.ERROR_FEEDBACK] = self.error_feedback
        if self.readout_lambda is not None:  # devices without the closed form fall back to the SGD steps
            config[ConfigKey.READOUT_LAMBDA] = float(self.readout_lambda)
        config[ConfigKey.RECONSTRUCT_STEPS] = self.reconstruct_steps
        messages = list(super().configure_train(server_round, arrays, config, grid))
        theta = {k: arrays[k].numpy().astype(np.float32) for k in shared}
        if self._initial_shared is None:
            self._initial_shared = {k: v.copy() for k, v in theta.items()}
        self._pending = {}
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            cfg = ConfigRecord(dict(next(iter(msg.content.config_records.values()))))
            base = self._bases.get(node, self._initial_shared)
            if self.downlink == Downlink.DENSE or node in self._dense_next:
                # the whole head, as Reptile sends it: a device that knows no downlink keys still gets what it
                # expects, and replaces the local layers with its own (`devices.train_task.train_round`)
                tensors = {k: arrays[k].numpy().astype(np.float32) for k in arrays}
                cfg[ConfigKey.DOWNLINK] = Downlink.DENSE
                self._pending[node] = {k: theta[k].copy() for k in shared}
            else:
                codes = {k: q8_encode(theta[k] - base[k]) for k in shared}
                tensors = {k: codes[k][0] for k in shared}
                cfg[ConfigKey.DOWNLINK] = Downlink.DELTA_Q8
                # 9 significant digits round-trip a float32 exactly (and keep the JSON header short)
                scales = [float(f"{codes[k][1]:.9g}") for k in shared]
                cfg[ConfigKey.DOWNLINK_SCALES] = scales
                cfg[ConfigKey.BASE_CRC] = arrays_crc32([base[k] for k in shared])
                self._pending[node] = {k: q8_apply(base[k], codes[k][0], sc) for k, sc in zip(shared, scales,
                                                                                            strict=True)}
            record = RecordDict({self.arrayrecord_key: ArrayRecord({k: Array(np.ascontiguousarray(v))
                                                                      for k, v in tensors.items()}),
                                 self.configrecord_key: cfg})
            out.append(Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node))
        return out

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record what each answering device now holds, then Reptile's step on the decoded updates."""
        replies = list(replies)
        self.observe_train_replies(server_round, replies)
        return super().aggregate_train(server_round, replies)

    def observe_train_replies(self, server_round: int, replies: list[Message]) -> None:
        """Record which base each answering device now holds, and who needs dense weights next time.

        Why apart from `aggregate_train`: the coordinator skips aggregation in a round with too few
        valid replies but still calls this, or a fleet whose every device answered `stale-base`
        would be sent the same undecodable deltas round after round.
        """
        for reply in replies:
            node = reply.metadata.src_node_id
            if not reply.has_error():
                if node in self._pending:
                    self._bases[node] = self._pending[node]
                self._dense_next.discard(node)
            elif any(f": {device_error_reason(code)}:" in (reply.error.reason or "")  # the Grid's error text
                     for code in (ErrorCode.STALE_BASE, ErrorCode.UNSUPPORTED_CONFIG)):
                self._bases.pop(node, None)  # lost its base, or cannot apply delta codes: dense next time
                self._dense_next.add(node)
        self._pending = {}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Evaluate the shared layers; each device completes the head with its own local layers."""
        _, _, local = self.split_keys(list(arrays.keys()))
        config[ConfigKey.LOCAL_LAYERS] = local
        return super().configure_evaluate(server_round, arrays, config, grid)

    def adapted_weights(self, reply: Message, keys: list[str], theta: list[np.ndarray]) -> list[np.ndarray]:
        """φ = θ + decoded Top-P update for shared arrays; local arrays were not sent, so φ = θ there."""
        rec = next(iter(reply.content.array_records.values()))
        out = []
        for k, t in zip(keys, theta, strict=True):
            if k + IDX_SUFFIX in rec:
                out.append(t + top_p_decode(rec[k + IDX_SUFFIX].numpy(), rec[k + VAL_SUFFIX].numpy(), t.shape))
            else:
                out.append(t)
        return out

    def bytes_state(self) -> int:
        """Bytes of the per-device base records the server keeps (float32)."""
        return int(sum(a.nbytes for b in self._bases.values() for a in b.values()))
