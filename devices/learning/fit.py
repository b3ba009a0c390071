"""The "does it fit this board?" check of an on-device learner.

The RAM/flash formulas (arena + head weights + error vectors + activations + sample buffer) live in
`firmware_models.memory_budget`, so that model cards, devices and the registry report one figure;
this module adds what only a device needs: the fit check against a board and measuring an arena
that a deployment did not declare.
"""

from __future__ import annotations

import math
from pathlib import Path

from devices.exceptions import ModelDoesNotFitError
from firmware_models.memory_budget import FLOAT_BYTES, MemoryReport, account

__all__ = ["FLOAT_BYTES", "MemoryReport", "account", "check_fits", "measure_backbone_arena", "sample_nbytes"]


def check_fits(report: MemoryReport, *, ram_bytes: int, flash_bytes: int, what: str = "model") -> None:
    """Raise `ModelDoesNotFitError` naming the shortfall when `report` exceeds the board's budget."""
    problems: list[str] = []
    if report.ram > ram_bytes:
        problems.append(f"needs {report.ram:,} B RAM (arena {report.arena:,} + head {report.head_weights:,} "
                        f"+ gradients {report.gradients:,} + activations {report.activations:,} "
                        f"+ buffer {report.buffer:,}"
                        + (f" + adaptation {report.adaptation:,}" if report.adaptation else "")
                        + (f" + federated {report.federated:,}" if report.federated else "")
                        + f") but the device has {ram_bytes:,} B")
    if report.flash > flash_bytes:
        problems.append(f"needs {report.flash:,} B flash (backbone {report.flash_backbone:,} + head "
                        f"{report.flash_head:,}) but the device has {flash_bytes:,} B")
    if problems:
        raise ModelDoesNotFitError(f"{what} does not fit: " + "; ".join(problems))


def measure_backbone_arena(model_bytes: bytes) -> int:
    """The backbone's TFLM arena, measured by firmware_models' subprocess search (slow: seconds).

    Used only when no ``card.json`` next to the backbone states ``arena_bytes``.
    """
    import tempfile

    from firmware_models.arena import measure_arena

    with tempfile.TemporaryDirectory(prefix="tinyfleet-arena-") as tmp:
        path = Path(tmp) / "backbone.tflite"
        path.write_bytes(model_bytes)
        result = measure_arena(path)
    if result.arena_bytes is None:
        raise ModelDoesNotFitError(f"backbone cannot run on TFLite Micro: {result.error}")
    return int(result.arena_bytes)


def sample_nbytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of one raw sample of `shape` (without the batch axis)."""
    return int(math.prod(shape)) * int(itemsize)
