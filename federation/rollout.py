"""Roll a model out to a fleet: the deploy task in chunks to every target device, one outcome each.

Devices verify the assembled file (sha256, size), check that it fits, swap it in atomically, run a
self-test and roll back on failure (`devices.deploy`); this module is the server's side of that
exchange, used by `tinyfleet devices deploy` and the demo. `package_federated_model` turns a
federated head into the one int8 model a device runs (frozen backbone + head, fused).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.link.address import BrokerAddress, Credentials
from devices.link.fleet_client import FleetClient
from devices.wire.protocol import ARTIFACTS, encode_deploy, weight_names
from federation.exceptions import FederationError

OK_ACTIONS = frozenset({"swapped"})
"""Deploy reply actions that mean the device now runs the new model."""


@dataclass
class RolloutResult:
    """What a rollout did, per device.

    Attributes
    ----------
    artifact : str
        ``model.tflite`` (a whole fused model) or ``backbone.tflite``.
    sha256 : str
        The model file's hash (what devices verify and report in telemetry).
    per_device : dict of str to str
        Each target device's outcome: ``swapped``, ``rolled-back``, ``refused``, ``error: <code>`` or ``no reply``.
    """

    artifact: str
    sha256: str
    nbytes: int
    per_device: dict[str, str] = field(default_factory=dict)

    @property
    def outcomes(self) -> dict[str, int]:
        """How many devices ended with each outcome."""
        counts: dict[str, int] = {}
        for outcome in self.per_device.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    @property
    def ok(self) -> bool:
        """Whether every target device runs the new model."""
        return bool(self.per_device) and all(o in OK_ACTIONS for o in self.per_device.values())

    def to_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "sha256": self.sha256, "bytes": self.nbytes,
                "outcomes": self.outcomes, "devices": dict(sorted(self.per_device.items())), "ok": self.ok}


def reply_outcome(header: Mapping[str, Any] | None) -> str:
    """One word for a device's deploy reply (``no reply`` when it never answered)."""
    if header is None:
        return "no reply"
    deploy = header.get("deploy")
    if isinstance(deploy, Mapping) and isinstance(deploy.get("action"), str):
        return str(deploy["action"])
    error = header.get("error")
    if isinstance(error, Mapping):
        return f"error: {str(error.get('code'))[:40]}"
    return "swapped" if header.get("ok") is True else "no reply"


def rollout(model: bytes, devices: Iterable[str], *, address: BrokerAddress, fleet: str,
            credentials: Credentials | None, client_id: str, artifact: str = "model.tflite",
            arena_bytes: int | None = None, timeout: float = 60.0) -> RolloutResult:
    """Send `model` to every device in `devices` and wait (up to `timeout` s) for each outcome.

    Parameters
    ----------
    model : bytes
        The .tflite file.
    devices : iterable of str
        Target device ids (each gets its own correlation id, chunks share it).
    credentials, client_id : the server account to use (one account per concurrent process).
    artifact : {"model.tflite", "backbone.tflite"}
    arena_bytes : int, optional
        The model's measured TFLite-Micro arena; devices use it for their fit check.
    """
    if artifact not in ARTIFACTS:
        raise FederationError(f"artifact must be one of {', '.join(ARTIFACTS)}; got {artifact!r}")
    if not model:
        raise FederationError("the model file is empty")
    targets = sorted(set(devices))
    if not targets:
        raise FederationError("no devices to deploy to")
    from devices.wire.protocol import sha256_hex

    result = RolloutResult(artifact, sha256_hex(model), len(model))
    tasks: dict[str, tuple[str, Sequence[bytes]]] = {}
    for dev in targets:
        tid, frames = encode_deploy(model, artifact=artifact, arena_bytes=arena_bytes)
        tasks[dev] = (tid, frames)
    with FleetClient(address, fleet=fleet, client_id=client_id, credentials=credentials) as fc:
        replies = fc.request(tasks, timeout=timeout)
    for dev in targets:
        reply = replies.get(dev)
        result.per_device[dev] = reply_outcome(reply.header if reply is not None else None)
    return result


def package_federated_model(model_dir: Path, final: Mapping[str, np.ndarray], representative_x: np.ndarray,
                            out: Path) -> Path:
    """Fuse a use case's frozen backbone with a federated head into one full-int8 ``model.tflite``.

    `final` maps wire names (w0, b0, ...) to arrays, as `final.npz` of a federated run does.
    Needs TensorFlow (the server side only). Returns the written path.
    """
    from firmware_models.head_export import fused_model_int8
    from firmware_models.quiet import stdout_to_stderr

    weights = [np.asarray(final[k], np.float32) for k in weight_names(len(final))]
    with stdout_to_stderr():
        data = fused_model_int8(model_dir, weights, representative_x)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out
