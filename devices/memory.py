"""Memory accounting of an on-device learner, in bytes, and the "does it fit this board?" check.

RAM of a device that runs the frozen int8 backbone and trains the float head with batch size 1::

    ram   = arena + head_weights + gradients + activations + buffer
    arena        = TFLite Micro tensor arena of the backbone (measured: the smallest arena with
                   which TFLM allocates and invokes it; 0 without a backbone, e.g. sine)
    head_weights = 4 * n_params(head)                              (float32)
    gradients    = 4 * (outputs of the lowest trained layer and every layer above it)
                   (float32 error vectors d_l = dL/dz_l of one sample: `MLPHead.sgd_step` applies
                   W_l -= lr * outer(a_l, d_l) in place, so no weight-sized gradient ever exists;
                   a full gradient copy would cost 4 * n_params(trainable layers) instead)
    activations  = 4 * (n_in + sum of every layer's output size)   (a_0 .. a_L of one sample;
                   kept from the forward pass for the backward pass, ReLU masks read off them)
    buffer       = buffer_samples * bytes of one raw input sample  (int8 backbone input, or
                   float32 head input without a backbone)

Flash::

    flash = size of backbone.tflite + 4 * n_params(head)

What is left out, on purpose: the code itself (interpreter kernels, the learner loop: firmware, not
model) and scalars (loss, learning rate, loop counters).
The error vectors are counted separately from the activations because both are alive at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from devices.exceptions import ModelDoesNotFitError

FLOAT_BYTES = 4


@dataclass(frozen=True)
class MemoryReport:
    """RAM parts and flash parts of one learner, in bytes."""

    arena: int
    head_weights: int
    gradients: int
    activations: int
    buffer: int
    flash_backbone: int
    flash_head: int

    @property
    def ram(self) -> int:
        """Total RAM: arena + head weights + gradients + activations + buffer."""
        return self.arena + self.head_weights + self.gradients + self.activations + self.buffer

    @property
    def flash(self) -> int:
        """Total flash: backbone .tflite bytes + float32 head parameters."""
        return self.flash_backbone + self.flash_head

    def as_dict(self) -> dict[str, int]:
        """``arena, head_weights, gradients, activations, buffer, total`` (RAM) plus ``flash``."""
        return {"arena": self.arena, "head_weights": self.head_weights, "gradients": self.gradients,
                "activations": self.activations, "buffer": self.buffer, "total": self.ram,
                "flash": self.flash, "flash_backbone": self.flash_backbone, "flash_head": self.flash_head}


def account(*, layer_sizes: list[int], gradient_floats: int, arena: int, backbone_bytes: int,
            sample_bytes: int, buffer_samples: int = 1) -> MemoryReport:
    """Apply the formulas of this module to one head/backbone pair (see the module docstring)."""
    if buffer_samples < 0:
        raise ValueError(f"buffer_samples must be >= 0; got {buffer_samples}")
    n_params = sum(a * b + b for a, b in zip(layer_sizes[:-1], layer_sizes[1:], strict=True))
    head = FLOAT_BYTES * n_params
    return MemoryReport(
        arena=int(arena),
        head_weights=head,
        gradients=FLOAT_BYTES * int(gradient_floats),
        activations=FLOAT_BYTES * int(sum(layer_sizes)),
        buffer=int(buffer_samples) * int(sample_bytes),
        flash_backbone=int(backbone_bytes),
        flash_head=head,
    )


def check_fits(report: MemoryReport, *, ram_bytes: int, flash_bytes: int, what: str = "model") -> None:
    """Raise `ModelDoesNotFitError` naming the shortfall when `report` exceeds the board's budget."""
    problems: list[str] = []
    if report.ram > ram_bytes:
        problems.append(f"needs {report.ram:,} B RAM (arena {report.arena:,} + head {report.head_weights:,} "
                        f"+ gradients {report.gradients:,} + activations {report.activations:,} "
                        f"+ buffer {report.buffer:,}) but the device has {ram_bytes:,} B")
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


def report_models(models_dir: str | Path, *, buffer_samples: int = 1) -> dict[str, dict[str, int]]:
    """`MemoryReport.as_dict()` of every model folder (``*/head.npz`` + ``card.json``) under `models_dir`."""
    import json

    from devices.learner import OnlineLearner  # here, not at the top: learner imports this module
    from firmware_models.exceptions import ModelFileError

    out: dict[str, dict[str, int]] = {}
    for head in sorted(Path(models_dir).glob("*/head.npz")):
        card_path = head.parent / "card.json"
        try:
            kind = json.loads(card_path.read_text(encoding="utf-8"))["kind"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{card_path}: cannot read the model kind ({type(exc).__name__}: {exc})") from None
        learner = OnlineLearner.from_artifacts(head.parent, kind=kind)
        out[head.parent.name] = {**learner.memory_report(buffer_samples), "head_params": learner.head.n_params}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m devices.memory MODELS_DIR [--buffer N] [--json]``: the RAM/flash table of built models."""
    import argparse
    import json
    import sys

    from firmware_models.exceptions import TinyFleetError

    parser = argparse.ArgumentParser(prog="python -m devices.memory", description=main.__doc__)
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--buffer", type=int, default=1, help="raw samples buffered on the device")
    parser.add_argument("--json", action="store_true", help="print only JSON on stdout")
    args = parser.parse_args(argv)
    try:
        table = report_models(args.models_dir, buffer_samples=args.buffer)
    except TinyFleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not table:
        print(f"error: {args.models_dir}: no model folders (*/head.npz) found", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    cols = ("arena", "head_weights", "gradients", "activations", "buffer", "total", "flash")
    print("| use case | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, rep in table.items():
        print(f"| {name} | " + " | ".join(f"{rep[c]:,}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
