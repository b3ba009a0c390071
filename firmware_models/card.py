"""Model cards: one JSON document that says what a built model is, costs and achieves.

The card is what the registry ingests and what `tinyfleet models build --json` prints, so every
number in it is measured on the artifact it describes (sizes from the files, the arena from TFLite
Micro, metrics through the real interpreters). Field reference: docs/models.md.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.memory_budget import account
from firmware_models.tflite_inspect import ModelReport, TensorReport
from firmware_models.versions import tool_versions

CARD_SCHEMA = "tinyfleet.model-card/1"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (artifacts are small; read at once)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _io(t: TensorReport) -> dict[str, Any]:
    return {"name": t.name, "shape": t.shape, "dtype": t.dtype,
            "quantization": None if t.scale is None else {"scale": t.scale, "zero_point": t.zero_point}}


def model_section(report: ModelReport, file_name: str) -> dict[str, Any]:
    """The card's description of one .tflite artifact (model or backbone)."""
    return {
        "file": file_name,
        "sha256": report.sha256,
        "flash_bytes": report.flash_bytes,
        "arena_bytes": report.arena_bytes,
        "arena_reported_bytes": report.arena_reported_bytes,
        "macs": report.macs,
        "params": report.params,
        "ops": [o.op for o in report.ops],
        "inputs": [_io(t) for t in report.inputs],
        "outputs": [_io(t) for t in report.outputs],
    }


def head_section(head_weights: list[np.ndarray], file_name: str, sha256: str, *,
                 sample_bytes: int) -> dict[str, Any]:
    """Layer widths, parameter count and on-device training RAM of the float head.

    The RAM figure is `firmware_models.memory_budget.account` for training every layer with batch
    1 and one buffered raw sample of `sample_bytes` (the same formula devices use), without the
    backbone arena, which the card reports separately.
    """
    widths = [int(head_weights[0].shape[0])] + [int(w.shape[1]) for w in head_weights[0::2]]
    params = int(sum(int(np.asarray(w).size) for w in head_weights))
    budget = account(layer_sizes=widths, gradient_floats=sum(widths[1:]), arena=0, backbone_bytes=0,
                     sample_bytes=sample_bytes)
    return {"file": file_name, "sha256": sha256, "layers": widths, "params": params,
            "activation": "relu", "output": "linear", "training_ram_bytes": budget.ram}


def make_card(*, name: str, task: str, kind: str, description: str, model: ModelReport, model_file: str,
              head: dict[str, Any], metrics: dict[str, Any], provenance: dict[str, Any],
              backbone: ModelReport | None = None, backbone_file: str | None = None,
              sensors: tuple[str, ...] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a card from measured parts.

    Parameters
    ----------
    name, task, kind, description : str
        Identity: `name` is the artifact name, `task` the use case, `kind` regression/classification.
    model : ModelReport
        Inspection (with arena) of the whole int8 network.
    head : dict
        From `head_section`.
    metrics : dict
        ``{"float": {...}, "int8": {...}, ...}`` measured on held-out data.
    provenance : dict
        Where the data came from (generator, seeds, devices, samples), so the card can be reproduced.
    backbone : ModelReport or None, default=None
        Inspection of the frozen backbone; None when the whole network is the head (sine).
    """
    backbone_arena = backbone.arena_bytes if backbone is not None else 0
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA,
        "name": name,
        "task": task,
        "kind": kind,
        "description": description,
        "sensors": list(sensors),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tools": tool_versions(),
        # Top-level copies of the headline numbers: what the registry and tables read first.
        "flash_bytes": model.flash_bytes,
        "arena_bytes": model.arena_bytes,
        "macs": model.macs,
        "params": model.params,
        "sha256": model.sha256,
        "inputs": [_io(t) for t in model.inputs],
        "outputs": [_io(t) for t in model.outputs],
        "model": model_section(model, model_file),
        "backbone": model_section(backbone, backbone_file or "backbone.tflite") if backbone is not None else None,
        "head": head,
        "ram": {
            "inference_arena_bytes": model.arena_bytes,
            "backbone_arena_bytes": backbone_arena,
            "head_training_bytes": head["training_ram_bytes"],
            "online_learning_bytes": (None if backbone_arena is None
                                      else int(backbone_arena) + int(head["training_ram_bytes"])),
        },
        "metrics": metrics,
        "data": provenance,
    }
    if extra:
        card.update(extra)
    return card


def write_card(card: dict[str, Any], path: str | Path) -> Path:
    """Write the card as indented JSON (stable key order as built)."""
    p = Path(path)
    p.write_text(json.dumps(card, indent=2, default=json_default) + "\n")
    return p


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars/arrays and paths (cards, reports, `--json`)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
