"""Build all four use-case models and measure them: `python -m benchmarks.models [--quick]`.

Writes `docs/results/models.json` and `docs/results/models.md` (the README table): flash, TFLM
arena, MACs, params of the whole int8 model and of the backbone, head params, float and int8
metrics, build time; and checks the quality floors of issue #4:

* characters: 5-way 5-shot accuracy of head-only adaptation on meta-test characters >= 80%
  (frozen int8 backbone features, the initial head trained by SGD on the 25 support shots with
  `devices.learning.head.MLPHead`, exactly what a device does, accuracy on the query set);
* keywords: int8 accuracy on held-out speakers >= 85%;
* presence: int8 accuracy on held-out rooms >= 90%.

Also an out-of-distribution check for characters on real handwriting: scikit-learn's digits
(8x8 scans of 43 people's digits), 5-way episodes through the same frozen backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from devices.learning.head import MLPHead
from firmware_models.interpreters import TFLiteModel  # noqa: E402
from firmware_models.usecases import USE_CASES, get_use_case  # noqa: E402

FLOORS = {"characters": 0.80, "keywords": 0.85, "presence": 0.90}
ADAPT = {"epochs": 40, "lr": 0.05}   # head-only SGD on the support set (batch 1, shuffled each pass)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def adapt_head(head_path: Path, support: np.ndarray, support_y: np.ndarray, query: np.ndarray,
               query_y: np.ndarray, *, rng: np.random.Generator, epochs: int = ADAPT["epochs"],
               lr: float = ADAPT["lr"]) -> float:
    """Train a fresh copy of the initial head on support features (batch-1 SGD); query accuracy."""
    head = MLPHead.from_npz(head_path, kind="classification")
    for _ in range(epochs):
        for i in rng.permutation(len(support)):
            head.sgd_step(support[i], int(support_y[i]), lr, clip_norm=5.0)
    return float(head.evaluate(query, query_y)["accuracy"])


def digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (8x8, 0..16) as 28x28 ink-up images, MNIST-style 20x20 box."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.zeros((len(d.images), 28, 28), np.float32)
    for i, img in enumerate(d.images):
        big = Image.fromarray((img / 16.0 * 255).astype(np.uint8)).resize((20, 20), Image.Resampling.BILINEAR)
        out[i, 4:24, 4:24] = np.asarray(big, np.float32) / 255.0
    return out[..., None], d.target.astype(np.int64)


def characters_adaptation(out_dir: Path, *, seed: int, episodes: int) -> dict[str, Any]:
    """Head-only few-shot adaptation on held-out writers x evaluation scripts, and on sklearn digits."""
    from firmware_models.usecases import characters
    from firmware_models.usecases.training import nearest_centroid_accuracy

    art = out_dir / "characters"
    backbone = TFLiteModel.from_file(art / "backbone.tflite", backend="litert")
    test_classes, writers = characters._classes("heldout"), characters._writers("heldout")
    rng = np.random.default_rng([seed, 2024])
    result: dict[str, Any] = {"adaptation": dict(ADAPT), "episodes": episodes}
    for k in (1, 5):
        eps = [characters.episode(test_classes, writers[e % len(writers)], 5, k, 5, rng, seed=seed)
               for e in range(episodes)]
        feats = backbone.predict(np.concatenate([a for sx, _, qx, _ in eps for a in (sx, qx)]))
        accs, protos, pos = [], [], 0
        for sx, sy, qx, qy in eps:
            fs, fq = feats[pos:pos + len(sx)], feats[pos + len(sx):pos + len(sx) + len(qx)]
            pos += len(sx) + len(qx)
            accs.append(adapt_head(art / "head.npz", fs, sy, fq, qy, rng=rng))
            protos.append(nearest_centroid_accuracy(fs, sy, fq, qy))
        result[f"5way_{k}shot_head_sgd"] = _mean_ci(accs)
        result[f"5way_{k}shot_nearest_centroid"] = _mean_ci(protos)
    try:
        x, y = digits_28()
    except ImportError:
        result["sklearn_digits"] = "scikit-learn not installed"
        return result
    fx = backbone.predict(x)
    accs, protos = [], []
    for _ in range(episodes):
        classes = rng.choice(10, 5, replace=False)
        sup, qry = [], []
        for c in classes:
            idx = rng.choice(np.flatnonzero(y == c), 10, replace=False)
            sup += list(idx[:5])
            qry += list(idx[5:])
        remap = {int(c): i for i, c in enumerate(classes)}
        sy = np.array([remap[int(v)] for v in y[sup]])
        qy = np.array([remap[int(v)] for v in y[qry]])
        accs.append(adapt_head(art / "head.npz", fx[sup], sy, fx[qry], qy, rng=rng))
        protos.append(nearest_centroid_accuracy(fx[sup], sy, fx[qry], qy))
    result["sklearn_digits_5way_5shot_head_sgd"] = _mean_ci(accs)
    result["sklearn_digits_5way_5shot_nearest_centroid"] = _mean_ci(protos)
    return result


def device_path_accuracy(out_dir: Path, name: str, *, seed: int, n_devices: int, samples: int) -> dict[str, Any]:
    """Held-out devices through what a device runs: int8 backbone (LiteRT) -> float head (MLPHead)."""
    uc = get_use_case(name)
    art = out_dir / name
    backbone = TFLiteModel.from_file(art / "backbone.tflite", backend="litert")
    head = MLPHead.from_npz(art / "head.npz", kind="classification")
    devices = uc.devices("heldout", n_devices, samples_per_device=samples, seed=seed)
    per_device = [float(head.evaluate(backbone.predict(d.x), d.y)["accuracy"]) for d in devices]
    return {"devices": n_devices, "samples_per_device": samples, **_mean_ci(per_device),
            "min_device": float(min(per_device))}


def _mean_ci(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    ci = float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0
    return {"accuracy": round(float(a.mean()), 4), "ci95": round(ci, 4), "n": int(len(a))}


def _fmt_metric(card: dict[str, Any], key: str) -> str:
    m = card["metrics"].get(key, {})
    if "accuracy" in m:
        return f"{100 * m['accuracy']:.1f}%"
    if "mse" in m:
        return f"MSE {m['mse']:.3f}"
    return "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table."""
    lines = ["| model | flash (B) | arena (B) | MACs | params | backbone flash / arena (B) | head params | "
             "float | int8 | build (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["card"]
        bb = c.get("backbone")
        bb_txt = f"{bb['flash_bytes']:,} / {bb['arena_bytes']:,}" if bb else "- (all head)"
        lines.append(f"| {r['name']} | {c['flash_bytes']:,} | {c['arena_bytes']:,} | {c['macs']:,} | {c['params']:,} | "
                     f"{bb_txt} | {c['head']['params']:,} | {_fmt_metric(c, 'float')} | {_fmt_metric(c, 'int8')} | "
                     f"{r['build_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/models"), help="artifact directory")
    parser.add_argument("--results", type=Path, default=Path("docs/results"), help="where models.json/.md go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny builds (smoke run; floors not meaningful)")
    parser.add_argument("--only", nargs="*", default=None, help="use cases to build (default: all)")
    parser.add_argument("--episodes", type=int, default=100, help="few-shot episodes per setting")
    args = parser.parse_args(argv)

    names = args.only or list(USE_CASES)
    rows: list[dict[str, Any]] = []
    for name in names:
        _log(f"== {name}")
        t0 = time.perf_counter()
        card = get_use_case(name).build(args.out, seed=args.seed, quick=args.quick,
                                        progress=lambda s, f: _log(f"  [{100 * f:5.1f}%] {s}"))
        row: dict[str, Any] = {"name": name, "build_seconds": round(time.perf_counter() - t0, 1), "card": card}
        if name == "characters":
            row["adaptation"] = characters_adaptation(args.out, seed=args.seed,
                                                      episodes=10 if args.quick else args.episodes)
            row["floor_metric"] = row["adaptation"]["5way_5shot_head_sgd"]["accuracy"]
        elif name in ("keywords", "presence"):
            row["device_path"] = device_path_accuracy(args.out, name, seed=args.seed, n_devices=2 if args.quick else 8,
                                                      samples=24 if args.quick else 120)
            row["floor_metric"] = card["metrics"]["int8"]["accuracy"]
        if name in FLOORS:
            row["floor"] = FLOORS[name]
            row["floor_met"] = bool(row["floor_metric"] >= FLOORS[name])
        bb = card.get("backbone")
        row["budgets"] = {"backbone_flash_le_64KB": (bb["flash_bytes"] if bb else 0) <= 65536,
                          "backbone_arena_le_64KB": (bb["arena_bytes"] if bb else 0) <= 65536,
                          "head_params_le_4096": card["head"]["params"] <= 4096}
        rows.append(row)
        _log(f"  {name}: {row.get('floor_metric')} (floor {row.get('floor')}) budgets {row['budgets']}")

    args.results.mkdir(parents=True, exist_ok=True)
    summary = [{k: v for k, v in r.items() if k != "card"} | {
        "flash_bytes": r["card"]["flash_bytes"], "arena_bytes": r["card"]["arena_bytes"], "macs": r["card"]["macs"],
        "params": r["card"]["params"], "head_params": r["card"]["head"]["params"],
        "backbone": ({k: r["card"]["backbone"][k] for k in ("flash_bytes", "arena_bytes", "macs", "params")}
                     if r["card"].get("backbone") else None),
        "float": r["card"]["metrics"].get("float"), "int8": r["card"]["metrics"].get("int8"),
        "metric": r["card"]["metrics"].get("metric"), "ram": r["card"]["ram"]} for r in rows]
    payload = {"quick": args.quick, "seed": args.seed, "models": summary}
    (args.results / "models.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    table = markdown(rows)
    (args.results / "models.md").write_text(table)
    print(table)
    return 0 if all(r.get("floor_met", True) and all(r["budgets"].values()) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
