"""Deterministic in-process devices for the federation tests (real codec, no broker).

Each device "trains" by gradient descent on its own quadratic loss ½‖θ − c_d‖², so after k steps
at rate lr its weights are φ = c_d + (θ − c_d)(1 − lr)^k exactly; the tests can then check the
server's arithmetic to the last bit instead of trusting it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from devices.wire import protocol
from devices.wire.sparse import top_p_encode

SHAPES = {"w0": (3, 4), "b0": (4,), "w1": (4, 2), "b1": (2,)}


def initial_head(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def device_center(device_id: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(device_id.encode()))
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def adapted(theta: np.ndarray, center: np.ndarray, steps: int, lr: float) -> np.ndarray:
    return (center + (theta - center) * (1.0 - lr) ** steps).astype(np.float32)


class QuadraticDevice:
    """A device handler: decode the task, descend, answer (dense or Top-P sparse, with local layers).

    `sabotage(header, tensors) -> tensors | bytes | None` lets a test corrupt the reply.
    """

    def __init__(self, device_id: str, *, num_examples: int = 10,
                 sabotage: Callable[[dict, list], object] | None = None) -> None:
        self.device_id = device_id
        self.center = device_center(device_id)
        self.local: dict[str, np.ndarray] = {}
        self.num_examples = num_examples
        self.sabotage = sabotage
        self.seen_keys: list[list[str]] = []
        self.sent_keys: list[list[str]] = []

    def __call__(self, payload: bytes) -> bytes | None:
        frame = protocol.decode_frame(payload)
        hdr, cfg = frame.header, frame.config
        arrays = {name: t for name, t in frame.tensors}
        self.seen_keys.append(sorted(arrays))
        if frame.type == protocol.MessageType.EVALUATE:
            loss = float(sum(np.sum((arrays[k] - self.center[k]) ** 2) for k in arrays))
            return protocol.encode_result(hdr, device=self.device_id,
                                          metrics={"num-examples": self.num_examples, "loss": loss})
        steps, lr = int(cfg["local-steps"]), float(cfg["lr"])
        local_keys = {f"{p}{layer}" for layer in cfg.get("local-layers", []) for p in ("w", "b")}
        for k in local_keys:  # partial local reconstruction, as devices.agent does it; a layer the server does
            start = self.local.get(k, arrays.get(k, initial_head()[k]))  # not send starts from the deployed head
            self.local[k] = adapted(start, self.center[k], int(cfg.get("reconstruct-steps", 0)), lr)
        tensors: list = []
        for k, theta in arrays.items():
            if k in local_keys or theta.dtype.kind != "f":
                continue
            phi = adapted(theta, self.center[k], steps, lr)
            if "top-p" in cfg:
                idx, val = top_p_encode(phi - theta, float(cfg["top-p"]))
                tensors.append((k, protocol.SparseTensor(idx, val, theta.shape)))
            else:
                tensors.append((k, phi))
        self.sent_keys.append(sorted(k for k, _ in tensors))
        if self.sabotage is not None:
            out = self.sabotage(hdr, tensors)
            if out is None:
                return None
            if isinstance(out, bytes):
                return out
            tensors = out  # type: ignore[assignment]
        return protocol.encode_result(hdr, device=self.device_id, tensors=tensors,
                                      metrics={"num-examples": self.num_examples, "train-loss": 0.5})
