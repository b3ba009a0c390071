"""RAM and flash of every built model on a device: `python -m benchmarks.memory_report MODELS_DIR [--json]`.

Reads each model folder (``*/head.npz`` + ``card.json``), builds the device's `OnlineLearner` from
it and prints its `MemoryReport` (arena, head weights, gradients, activations, buffer, total,
flash): the table of README's "RAM per device". Two more columns price issue 13's procedures:
``adaptation`` (a new device's closed-form readout of the last layer or one accumulated gradient of
full-batch steps, the larger) and ``federated`` (a TinyMetaFed device's delta-downlink base copy and
error-feedback residual); ``total_meta`` adds both to ``total``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devices.learning.adapt import AdaptConfig, adaptation_floats
from devices.learning.learner import OnlineLearner
from firmware_models.exceptions import ModelFileError, TinyFleetError


def report_models(models_dir: str | Path, *, buffer_samples: int = 1) -> dict[str, dict[str, int]]:
    """`MemoryReport.as_dict()` of every model folder (``*/head.npz`` + ``card.json``) under `models_dir`."""
    out: dict[str, dict[str, int]] = {}
    for head in sorted(Path(models_dir).glob("*/head.npz")):
        card_path = head.parent / "card.json"
        try:
            kind = json.loads(card_path.read_text(encoding="utf-8"))["kind"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{card_path}: cannot read the model kind ({type(exc).__name__}: {exc})") from None
        learner = OnlineLearner.from_artifacts(head.parent, kind=kind)
        sizes = learner.head.layer_sizes
        meta = learner.memory(buffer_samples, adaptation_floats=adaptation_floats(
            sizes, AdaptConfig(steps=10, step="batch", readout_lambda=1.0)),
            federated_floats=learner.head.n_params + learner.head.layer_params(range(learner.head.n_layers - 1)))
        out[head.parent.name] = {**learner.memory_report(buffer_samples), "head_params": learner.head.n_params,
                                 "adaptation": meta.adaptation, "federated": meta.federated, "total_meta": meta.ram}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.memory_report MODELS_DIR [--buffer N] [--json]``: the RAM/flash table of built models."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_report", description=main.__doc__)
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
    cols = ("arena", "head_weights", "gradients", "activations", "buffer", "total", "adaptation", "federated",
            "total_meta", "flash")
    print("| use case | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, rep in table.items():
        print(f"| {name} | " + " | ".join(f"{rep[c]:,}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
