"""Federated runs for the dashboard, read from run directories (`run.json` + `metrics.jsonl`).

The coordinator (`federation.coordinator`) writes `run.json` when a run starts and appends one JSON
line per round to `metrics.jsonl` (flushed), `final.npz` when it ends: reading those files is all a
live learning curve needs, also while the run goes on in another process. A torn last line (a run
killed mid-write) is skipped, as the coordinator's own reader does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The coordinator's file names (federation.coordinator.RUN_FILE, ...; a test keeps them equal). Not
# imported from there: that module imports Flower, which would add ~4 s to every server start.
RUN_FILE, METRICS_FILE, FINAL_FILE = "run.json", "metrics.jsonl", "final.npz"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_ROUNDS_READ = 100_000


@dataclass(frozen=True)
class RunDir:
    run_id: str
    path: Path


def find_runs(roots: Sequence[Path]) -> dict[str, RunDir]:
    """Run directories in `roots` (a root may itself be a run directory), by run id."""
    found: dict[str, RunDir] = {}
    for root in roots:
        root = Path(root)
        candidates = [root] if (root / RUN_FILE).is_file() else sorted(p for p in _children(root))
        for d in candidates:
            cfg = _read_config(d)
            run_id = str(cfg.get("run_id") or d.name)
            if _RUN_ID.match(run_id) and run_id not in found:
                found[run_id] = RunDir(run_id, d)
    return found


def _children(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if (p / RUN_FILE).is_file()]
    except OSError:
        return []


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round records of `metrics.jsonl` (torn or foreign lines skipped)."""
    try:
        lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()[:MAX_ROUNDS_READ]
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("round"), int):
            out.append(rec)
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def curve_points(rounds: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Columns for the dashboard's charts: round, loss (eval, else train), train/eval loss, bytes."""
    return {"round": [r["round"] for r in rounds],
            "loss": [_number(r.get("loss")) for r in rounds],
            "train_loss": [_number(r.get("train_loss")) for r in rounds],
            "eval_loss": [_number(r.get("eval_loss")) for r in rounds],
            "bytes_up": [int(_number(r.get("bytes_up")) or 0) for r in rounds],
            "bytes_down": [int(_number(r.get("bytes_down")) or 0) for r in rounds],
            "replies": [r.get("replies") for r in rounds]}


def run_summary(run: RunDir) -> dict[str, Any]:
    """Settings, progress, state (running / finished / interrupted) and totals of one run."""
    cfg = _read_config(run.path)
    rounds = read_rounds(run.path)
    finished = (run.path / FINAL_FILE).is_file()
    total = cfg.get("rounds") if isinstance(cfg.get("rounds"), int) else None
    last = rounds[-1] if rounds else {}
    return {"run_id": run.run_id, "task": cfg.get("task"), "strategy": cfg.get("strategy"), "fleet": cfg.get("fleet"),
            "rounds": total, "rounds_done": len(rounds),
            "state": "finished" if finished else ("running" if rounds else "starting"),
            "loss": _number(last.get("loss")), "first_loss": _number(rounds[0].get("loss")) if rounds else None,
            "bytes_up": sum(int(_number(r.get("bytes_up")) or 0) for r in rounds),
            "bytes_down": sum(int(_number(r.get("bytes_down")) or 0) for r in rounds)}
