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
