"""PNG plots of a federated run: learning curve, few-shot comparison, bytes per round.

Matplotlib runs with the non-interactive Agg backend so plots work on headless machines and in CI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curve(rounds: Sequence[Mapping[str, float]], path: Path, *, title: str = "federated training") -> Path:
    """Train loss (and evaluation loss when present) per round."""
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [int(r["round"]) for r in rounds]
    for key, label in (("train_loss", "devices' loss while training (mean over local steps)"),
                       ("eval_loss", "global head on the devices' held-out samples")):
        ys = [r.get(key) for r in rounds]
        if any(y is not None for y in ys):
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def few_shot(curves: Mapping[str, Sequence[float]], path: Path, *, metric: str = "MSE",
             title: str = "few-shot adaptation of new devices") -> Path:
    """Quality after k = 0, 1, ... online SGD steps, one line per initialization."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in curves.items():
        ax.plot(range(len(ys)), ys, marker="o", label=name)
    ax.set_xlabel("online SGD steps on the device")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def few_shot_bands(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], path: Path, *,
                   metric: str, chosen: Mapping[str, int] | None = None, title: str = "few-shot adaptation",
                   log: bool = False) -> Path:
    """Mean query metric after k = 0, 1, ... adaptation steps with its 95 % band, one line per method.

    A dot marks the number of steps each method's procedure uses (chosen on validation devices).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (mean, lo, hi) in curves.items():
        xs = range(len(mean))
        line = ax.plot(xs, mean, label=name)[0]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18)
        k = (chosen or {}).get(name)
        if k is not None and k < len(mean):
            ax.plot([k], [mean[k]], "o", color=line.get_color())
    ax.set_xlabel("adaptation steps on the device (dot: the method's chosen k)")
    ax.set_ylabel(metric)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def bytes_per_round(series: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """Uplink and downlink payload bytes per round, one pair of lines per strategy."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rounds in series.items():
        xs = [int(r["round"]) for r in rounds]
        ax.plot(xs, [r.get("bytes_up", 0) for r in rounds], marker="o", label=f"{name} up")
        ax.plot(xs, [r.get("bytes_down", 0) for r in rounds], linestyle="--", label=f"{name} down")
    ax.set_xlabel("round")
    ax.set_ylabel("MQTT payload bytes")
    ax.set_title("bytes on the wire per round")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
