"""Federated meta-learning experiments over MQTT: `python -m benchmarks.fedmeta [--task sine] [--quick]`.

For a use case, trains the head's initialization over a private Mosquitto with a simulated fleet
(`federation.session.fleet_grid` + `federation.coordinator.Coordinator`, exactly what
`tinyfleet federate run --simulate N` does) with

* Reptile (batched, ε annealed 1 → 0), TinyMetaFed (Top-P uplink, last layer local),
* FedAvg with the same local steps, and joint training (FedAvg with one local step),

and judges each final head on ≥ 100 held-out devices (never seen in training): K shots,
k = 0 … 10 adaptation steps (`federation.fewshot`, one step = one full-batch SGD step on the K
shots, the MAML/Reptile sine reading; the same lr and clip for every method). Two baselines need
no federation: from-scratch (a fresh head, same adaptation) and local-only (a fresh head trained
on the device's own shots with as many SGD steps as an average fleet device spent in Reptile's
training, batch-1 as a device runs, plus the adaptation steps). TinyMetaFed heads are judged the
way the algorithm runs on a device: a new device first re-fits its local layers on its shots
(`federation.fewshot.NEW_DEVICE_RECONSTRUCT_STEPS` full-batch steps, local layers only), then takes
the same k adaptation steps; its curve with the strategy's per-round ``reconstruct_steps`` and
without reconstruction is recorded too.

Hyper-parameters are the documented defaults of `federation.strategies.Reptile` / `TinyMetaFed`
and `federation.fewshot` (not tuned here). Writes ``docs/results/fedmeta_<task>.json`` (every
measured curve and each quality bar with value, bar and pass/fail), three PNG plots per task and
``docs/results/fedmeta.md`` (the README table, rebuilt from all JSON files present).
`--task scale` times one Reptile round over 1,000 simulated devices.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from broker.process import MosquittoBroker
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from federation.checkpoint import load_checkpoint  # noqa: E402
from federation.coordinator import CHECKPOINT_FILE, Coordinator, RunConfig  # noqa: E402
from federation.fewshot import (  # noqa: E402
    DEFAULT_ADAPT_LR,
    NEW_DEVICE_RECONSTRUCT_STEPS,
    fewshot_curve,
    head_sizes,
    scratch_head,
)
from federation.session import fleet_grid, initial_parameters  # noqa: E402
from federation.strategies import Reptile, TinyMetaFed  # noqa: E402
from firmware_models.interpreters import TFLiteModel  # noqa: E402
from firmware_models.usecases import get_use_case  # noqa: E402
from firmware_models.usecases.base import ARTIFACT_BACKBONE  # noqa: E402

RESULTS = Path("docs/results")
TASK_PROTOCOL: dict[str, dict[str, Any]] = {
    "sine": {"shots": 10, "rounds": 1000, "fleet": 1000},
    # 5-way 5-shot: a writer's samples cycle through its 5 characters, so 25 shots = 5 per class.
    # A smaller fleet than sine: rendering a writer's 64 glyphs takes ~0.4 s (1,000 writers ~7 min per method).
    "characters": {"shots": 25, "rounds": 300, "fleet": 200},
    "keywords": {"shots": 10, "rounds": 300, "fleet": 200},
    # A room's 10 shots are 10 windows of its week; ~0.26 s to simulate one room's week.
    "presence": {"shots": 10, "rounds": 300, "fleet": 200},
}
"""The experiment's per-use-case defaults: K (the few-shot definition of each issue bar) and the sizes
that keep one use case within ~15 minutes on a shared 2-core machine. Learning rates and step counts
are not here: every method takes them from the strategies' documented defaults."""
REPTILE = Reptile()  # the documented defaults every method below takes its device settings from
TMF = TinyMetaFed()


@dataclass
class Protocol:
    """The experiment's settings (recorded in the JSON)."""

    task: str
    rounds: int
    fleet: int = 1000
    per_round: int = 8
    samples_per_device: int = 64
    shots: int = 10
    adapt_steps: int = 5
    curve_steps: int = 10
    adapt_lr: float = DEFAULT_ADAPT_LR
    heldout_devices: int = 100
    track_devices: int = 30
    track_points: int = 10
    local_only_devices: int = 30
    seed: int = 0
    models_dir: str | None = None
    tmf_reconstruct_steps: int = NEW_DEVICE_RECONSTRUCT_STEPS


@dataclass
class Method:
    """One federated method: strategy name, its local steps and strategy parameters."""

    name: str
    strategy: str
    local_steps: int
    lr: float
    params: dict[str, Any] = field(default_factory=dict)
    extra_steps: int = 0  # device SGD steps per round besides local_steps (TinyMetaFed's reconstruction)
    local_layers: tuple[int, ...] = ()  # re-fitted by each new device before few-shot adaptation


def methods() -> list[Method]:
    """Reptile, TinyMetaFed, FedAvg (same local steps) and joint training, all from documented defaults."""
    sampling = {"min_evaluate_nodes": 1, "fraction_evaluate": 1e-9}  # one device reports eval loss per round
    rep = {"epsilon": REPTILE.epsilon, "epsilon_floor": REPTILE.epsilon_floor, **sampling}
    return [
        Method("reptile", "reptile", REPTILE.local_steps, REPTILE.local_lr, rep),
        Method("tinymetafed", "tinymetafed", TMF.local_steps, TMF.local_lr,
               {**rep, "top_p": TMF.top_p, "reconstruct_steps": TMF.reconstruct_steps,
                "local_layers": list(TMF.local_layers)}, extra_steps=TMF.reconstruct_steps,
               local_layers=TMF.local_layers),
        Method("fedavg", "fedavg", REPTILE.local_steps, REPTILE.local_lr, dict(sampling)),
        Method("joint", "fedavg", 1, REPTILE.local_lr, dict(sampling)),
    ]


@contextlib.contextmanager
def memoized_devices(task: str) -> Iterator[None]:
    """Serve repeated `UseCase.devices` calls of `task` from memory during one benchmark run.

    Every method trains on the same seeded fleet and is judged on the same seeded held-out
    devices, so generating them again (rendering glyphs, simulating rooms' weeks, synthesizing
    speech) for each of the four methods and each tracked round only burns the shared CPU. The
    calls are pure functions of (split, n, samples, seed, data), so results are identical.
    """
    cls = type(get_use_case(task))
    original = cls.devices
    cache: dict[tuple[Any, ...], list[Any]] = {}

    def devices(self: Any, split: str, n_devices: int, *, samples_per_device: int, seed: int = 0) -> list[Any]:
        key = (str(getattr(self, "data", None)), split, int(n_devices), int(samples_per_device), int(seed))
        if key not in cache:
            cache[key] = original(self, split, n_devices, samples_per_device=samples_per_device, seed=seed)
        return list(cache[key])

    cls.devices = devices  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.devices = original  # type: ignore[method-assign]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def judge(m: Method, p: Protocol, head: Any, *, max_steps: int, n_devices: int, seed: int,
          reconstruct_steps: int | None = None) -> dict[str, Any]:
    """Few-shot curve of `head`; methods with local layers reconstruct them first (see the module docstring)."""
    r = p.tmf_reconstruct_steps if reconstruct_steps is None else reconstruct_steps
    return fewshot_curve(head, task=p.task, shots=p.shots, max_steps=max_steps, lr=p.adapt_lr, n_devices=n_devices,
                         seed=seed, models_dir=Path(p.models_dir) if p.models_dir else None,
                         reconstruct_layers=list(m.local_layers) or None,
                         reconstruct_steps=r if m.local_layers else 0)


def run_method(m: Method, p: Protocol, broker_url: str, work: Path) -> dict[str, Any]:
    """Train `m` over MQTT; return per-round ledger, tracked few-shot quality and the final head."""
    run_dir = work / f"{p.task}-{m.name}"
    cfg = RunConfig(run_id=f"fedmeta-{p.task}-{m.name}", task=p.task, strategy=m.strategy, rounds=p.rounds,
                    seed=p.seed, local_steps=m.local_steps, lr=m.lr,
                    strategy_params={"fraction_train": p.per_round / p.fleet, **m.params}, round_timeout=60.0,
                    quorum=p.fleet, quorum_timeout=120.0, fleet=f"fm{m.name}", broker=broker_url,
                    simulate=p.fleet, samples_per_device=p.samples_per_device)
    models = Path(p.models_dir) if p.models_dir else None
    track = sorted({max(1, round(p.rounds * (i + 1) / p.track_points)) for i in range(p.track_points)})
    cum = {"steps": 0, "bytes": 0, "bytes_up": 0}
    ledger: list[dict[str, Any]] = []

    def on_round(rec: dict[str, Any]) -> None:
        cum["steps"] += int(rec.get("replies", 0)) * (m.local_steps + m.extra_steps)
        cum["bytes"] += int(rec.get("bytes_up_train", 0)) + int(rec.get("bytes_down_train", 0))
        cum["bytes_up"] += int(rec.get("bytes_up_train", 0))
        row = {"round": rec["round"], "replies": rec.get("replies", 0), "seconds": rec.get("seconds"),
               "bytes_up_train": rec.get("bytes_up_train", 0), "bytes_down_train": rec.get("bytes_down_train", 0),
               "device_steps": cum["steps"], "bytes_cum": cum["bytes"], "bytes_up_cum": cum["bytes_up"]}
        if rec["round"] in track:
            arrays, _ = load_checkpoint(run_dir / CHECKPOINT_FILE)
            c = judge(m, p, arrays, max_steps=p.adapt_steps, n_devices=p.track_devices, seed=p.seed + 1)
            row["fewshot_loss"] = c["loss_mean"][-1]
            row["fewshot_metric"] = c["metric_mean"][-1]
            _log(f"  {m.name} round {rec['round']}/{p.rounds}: few-shot loss {row['fewshot_loss']:.3f} "
                 f"({cum['steps']} device steps, {cum['bytes']} B)")
        ledger.append(row)

    t0 = time.perf_counter()
    with fleet_grid(cfg, run_dir, models_dir=models) as grid:
        out = Coordinator(cfg, grid, run_dir, on_round=on_round).start(
            initial_parameters(p.task, models_dir=models, seed=p.seed))
    return {"method": m.name, "strategy": m.strategy, "local_steps": m.local_steps, "lr": m.lr,
            "strategy_params": m.params, "train_seconds": round(time.perf_counter() - t0, 2),
            "final_sha256": out["final_sha256"], "rounds": ledger, "final": out["final"]}


def local_only(p: Protocol, sizes: list[int], steps: int) -> dict[str, Any]:
    """Each held-out device trains a fresh head on its own K shots only (batch-1 SGD, `steps` steps)."""
    uc = get_use_case(p.task)
    devs = uc.devices("heldout", p.local_only_devices, samples_per_device=p.shots + 100, seed=p.seed)
    losses, metrics = [], []
    key = "mse" if uc.kind == "regression" else "accuracy"
    backbone = None
    if p.models_dir is not None:  # the same frozen backbone the fleet runs (use cases with one)
        mdir = Path(p.models_dir)
        mdir = mdir / p.task if (mdir / p.task).is_dir() else mdir
        if (mdir / ARTIFACT_BACKBONE).is_file():
            backbone = TFLiteModel.from_file(mdir / ARTIFACT_BACKBONE)
    for i, d in enumerate(devs):
        head = MLPHead(scratch_head(p.task, sizes=sizes, seed=p.seed), kind=uc.kind)
        learner = OnlineLearner(head, backbone, lr=REPTILE.local_lr, seed=i)
        learner.train(d.x[:p.shots], d.y[:p.shots], steps)
        ev = learner.evaluate(d.x[p.shots:], d.y[p.shots:])
        losses.append(ev["loss"])
        metrics.append(ev[key])
    return {"devices": len(devs), "sgd_steps": steps, "lr": REPTILE.local_lr, "loss": float(np.mean(losses)),
            "metric": float(np.mean(metrics))}


def _first_reaching(rows: list[dict[str, Any]], target: float, lower_is_better: bool) -> dict[str, Any] | None:
    for r in rows:
        q = r.get("fewshot_loss")
        if q is not None and (q <= target if lower_is_better else q >= target):
            return r
    return None


def _bar(value: float | None, bar: float, op: str, note: str = "") -> dict[str, Any]:
    ok = value is not None and math.isfinite(value) and (value <= bar if op == "<=" else value >= bar)
    return {"value": value, "bar": bar, "op": op, "pass": bool(ok), "note": note}


def bars(p: Protocol, res: dict[str, Any]) -> dict[str, Any]:
    """Each quality bar of issue #6 that applies to `p.task`: measured value, bar, pass/fail."""
    f = {k: v["fewshot"]["loss_mean"][p.adapt_steps] for k, v in res["methods"].items()}
    f["scratch"] = res["scratch"]["loss_mean"][p.adapt_steps]
    rep, fed = res["methods"]["reptile"], res["methods"]["fedavg"]
    out: dict[str, Any] = {}
    if p.task == "sine":
        out["sine_reptile_mse"] = _bar(f["reptile"], 0.5, "<=", f"{p.shots} shots, {p.adapt_steps} full-batch steps")
        out["sine_reptile_vs_joint"] = _bar(f["reptile"] / f["joint"], 0.5, "<=", "Reptile MSE / joint-training MSE")
    out["reptile_vs_fedavg"] = _bar(f["reptile"] / f["fedavg"], 1.0, "<=",
                                    "Reptile loss / FedAvg loss (same local steps); <= 1 means Reptile >= FedAvg")
    last_f = fed["rounds"][-1]
    target = last_f["fewshot_loss"]  # same tracked held-out devices on both sides
    hit = _first_reaching(rep["rounds"], target, True)
    out["reptile_steps_to_fedavg_quality"] = _bar(
        hit["device_steps"] / last_f["device_steps"] if hit else None, 0.5, "<=",
        f"device SGD steps until Reptile's tracked few-shot loss reaches FedAvg's final "
        f"({target:.4g}, tracked devices) / FedAvg's total" + ("" if hit else "; never reached"))
    out["reptile_bytes_to_fedavg_quality"] = _bar(
        hit["bytes_cum"] / last_f["bytes_cum"] if hit else None, 0.5, "<=",
        "train-phase bytes (up + down) at that point / FedAvg's total" + ("" if hit else "; never reached"))
    tmf = res["methods"]["tinymetafed"]
    up = lambda r: np.mean([x["bytes_up_train"] / max(x["replies"], 1) for x in r["rounds"]])  # noqa: E731
    out["tinymetafed_upload_per_round"] = _bar(float(up(tmf) / up(rep)), 0.25, "<=",
                                               "TinyMetaFed / Reptile uploaded bytes per device-round")
    if res["kind"] == "regression":
        rec = res["methods"]["tinymetafed"]["fewshot"].get("reconstruct_steps", 0)
        out["tinymetafed_quality_loss"] = _bar(f["tinymetafed"] / f["reptile"] - 1.0, 0.10, "<=",
                                               f"relative MSE increase vs Reptile (TinyMetaFed: {rec} local-layer "
                                               f"reconstruction steps on the shots, then the same {p.adapt_steps})")
    else:
        acc = {k: v["fewshot"]["metric_mean"][p.adapt_steps] for k, v in res["methods"].items()}
        out["tinymetafed_quality_loss"] = _bar(100 * (acc["reptile"] - acc["tinymetafed"]), 1.0, "<=",
                                               "accuracy points lost vs Reptile")
        if p.task == "characters":
            out["characters_reptile_vs_joint"] = _bar(100 * (acc["reptile"] - acc["joint"]), 5.0, ">=",
                                                      "accuracy points Reptile - joint")
    return out


def plots(p: Protocol, res: dict[str, Any], out_dir: Path) -> list[str]:
    """Quality vs adaptation steps, vs bytes communicated, vs rounds (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ylabel = f"few-shot held-out {'MSE' if res['kind'] == 'regression' else 'loss'}"
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in [*res["methods"].items(), ("scratch", {"fewshot": res["scratch"]})]:
        ax.plot(r["fewshot"]["steps"], r["fewshot"]["loss_mean"], marker="o", ms=3, label=name)
    ax.set(xlabel=f"adaptation steps (full batch, {p.shots} shots)", ylabel=ylabel, yscale="log",
           title=f"{p.task}: {res['methods']['reptile']['fewshot']['n_devices']} held-out devices")
    ax.legend()
    for kind, xkey, xlabel in (("bytes", "bytes_cum", "bytes communicated (train phase, up + down)"),
                               ("rounds", "round", "rounds")):
        if kind == "bytes":
            fig.tight_layout()
            fig.savefig(out_dir / f"fedmeta_{p.task}_adapt.png", dpi=120)
            plt.close(fig)
            files.append(f"fedmeta_{p.task}_adapt.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in res["methods"].items():
            pts = [(x[xkey], x["fewshot_loss"]) for x in r["rounds"] if "fewshot_loss" in x]
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
        ax.axhline(res["scratch"]["loss_mean"][p.adapt_steps], color="grey", ls="--", label="scratch")
        ax.set(xlabel=xlabel, ylabel=f"{ylabel} after {p.adapt_steps} steps", yscale="log",
               xscale="log" if kind == "bytes" else "linear", title=f"{p.task}: quality vs {kind}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"fedmeta_{p.task}_{kind}.png", dpi=120)
        plt.close(fig)
        files.append(f"fedmeta_{p.task}_{kind}.png")
    return files


def run_task(p: Protocol, out_dir: Path) -> dict[str, Any]:
    """All methods of one use case over one private broker; returns (and writes) the result document."""
    uc = get_use_case(p.task)
    res: dict[str, Any] = {"task": p.task, "kind": uc.kind, "protocol": p.__dict__, "methods": {},
                           "step_definition": "one adaptation step = one SGD step on the mean loss of the "
                                              f"{p.shots} shots (federation.fewshot, step='batch')"}
    with tempfile.TemporaryDirectory(prefix="fedmeta-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        url = broker.start().url
        try:
            for m in methods():
                _log(f"{p.task}: {m.name} ({p.rounds} rounds, {p.per_round} of {p.fleet} devices, "
                     f"{m.local_steps} local steps)")
                r = run_method(m, p, url, Path(tmp))
                final = r.pop("final")
                r["fewshot"] = judge(m, p, final, max_steps=p.curve_steps, n_devices=p.heldout_devices, seed=p.seed)
                if m.local_layers:  # the same head judged with less reconstruction, for the record
                    r["fewshot_by_reconstruct_steps"] = {
                        str(k): judge(m, p, final, max_steps=p.curve_steps, n_devices=p.heldout_devices, seed=p.seed,
                                      reconstruct_steps=k)["loss_mean"] for k in (0, TMF.reconstruct_steps)}
                _log(f"  {m.name}: few-shot loss after {p.adapt_steps} steps "
                     f"{r['fewshot']['loss_mean'][p.adapt_steps]:.4f} ({r['train_seconds']} s)")
                res["methods"][m.name] = r
        finally:
            broker.stop()
    sizes = head_sizes(initial_parameters(p.task, models_dir=Path(p.models_dir) if p.models_dir else None))
    res["scratch"] = fewshot_curve(scratch_head(p.task, sizes=sizes, seed=p.seed + 17), task=p.task, shots=p.shots,
                                   max_steps=p.curve_steps, lr=p.adapt_lr, n_devices=p.heldout_devices, seed=p.seed,
                                   models_dir=Path(p.models_dir) if p.models_dir else None)
    per_device = res["methods"]["reptile"]["rounds"][-1]["device_steps"] // p.fleet
    res["local_only"] = local_only(p, sizes, per_device + p.adapt_steps)
    res["bars"] = bars(p, res)
    res["plots"] = plots(p, res, out_dir)
    for r in res["methods"].values():
        r["fewshot"].pop("per_device_final", None)
    res["scratch"].pop("per_device_final", None)
    (out_dir / f"fedmeta_{p.task}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    return res


def scale_round(n: int, out_dir: Path) -> dict[str, Any]:
    """Wall time of one Reptile round (train + one-device evaluate) over `n` simulated sine devices."""
    with tempfile.TemporaryDirectory(prefix="fedmeta-scale-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        url = broker.start().url
        try:
            cfg = RunConfig(run_id="fedmeta-scale", task="sine", strategy="reptile", rounds=1, seed=0,
                            local_steps=REPTILE.local_steps, lr=REPTILE.local_lr,
                            strategy_params={"fraction_train": 1.0, "fraction_evaluate": 1e-9,
                                             "min_evaluate_nodes": 1},
                            round_timeout=120.0, quorum=n, quorum_timeout=300.0, fleet="scale", broker=url,
                            simulate=n, samples_per_device=64)
            t0 = time.perf_counter()
            rows: list[dict[str, Any]] = []
            with fleet_grid(cfg, Path(tmp) / "run") as grid:
                t_connect = time.perf_counter() - t0
                Coordinator(cfg, grid, Path(tmp) / "run", on_round=rows.append).start(initial_parameters("sine"))
        finally:
            broker.stop()
    r = rows[0]
    doc = {"devices": n, "local_steps": REPTILE.local_steps, "replies": r.get("replies"),
           "failures": r.get("failures"), "missing": r.get("missing"), "round_seconds": r["seconds"],
           "connect_seconds": round(t_connect, 2), "cpu_count": os.cpu_count(),
           "bar": _bar(float(r["seconds"]), 10.0, "<=", f"one Reptile round, {n} simulated devices, all sampled")}
    (out_dir / "fedmeta_scale.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def write_markdown(out_dir: Path) -> None:
    """`docs/results/fedmeta.md`: one table per task from every fedmeta_<task>.json present."""
    lines = ["# Federated meta-learning results (`python -m benchmarks.fedmeta`)", "",
             "Generated; every number is measured. Few-shot quality = mean held-out loss after the adaptation "
             "steps (one step = one full-batch SGD step on the shots), over the held-out devices stated.", ""]
    for path in sorted(out_dir.glob("fedmeta_*.json")):
        doc = json.loads(path.read_text())
        if path.stem == "fedmeta_scale":
            b = doc["bar"]
            lines += ["## Scale", "", f"One Reptile round over {doc['devices']} simulated devices "
                      f"({doc['replies']} replies, {doc['missing']} missing, {doc['local_steps']} local steps each, "
                      f"{doc['cpu_count']} CPU cores): **{doc['round_seconds']:.2f} s** (bar ≤ {b['bar']} s: "
                      f"{'pass' if b['pass'] else 'FAIL'}); connecting the fleet took {doc['connect_seconds']} s.", ""]
            continue
        p = doc["protocol"]
        k = p["adapt_steps"]
        notes: list[str] = []
        reg = doc["kind"] == "regression"
        metric = "MSE" if reg else "loss"
        acc_cols = "" if reg else f" accuracy after 0 / {k} steps |"
        lines += [f"## {doc['task']}{' (quick)' if doc.get('quick') else ''}", "",
                  f"{p['rounds']} rounds × {p['per_round']} of {p['fleet']} simulated devices over MQTT; "
                  f"{p['shots']} shots, {k} adaptation steps at lr {p['adapt_lr']}, {p['heldout_devices']} "
                  "held-out devices.", "",
                  f"| method | local steps | {metric} after 0 steps | {metric} after {k} steps |{acc_cols} "
                  "device SGD steps | train bytes (up+down) | uploaded bytes/device-round | train s |",
                  "|---|---|---|---|---|---|---|---|" + ("" if reg else "---|")]
        for name, r in doc["methods"].items():
            last = r["rounds"][-1]
            up = np.mean([x["bytes_up_train"] / max(x["replies"], 1) for x in r["rounds"]])
            acc = "" if reg else f" {r['fewshot']['metric_mean'][0]:.3f} / {r['fewshot']['metric_mean'][k]:.3f} |"
            lines.append(f"| {name} | {r['local_steps']} | {r['fewshot']['loss_mean'][0]:.3f} | "
                         f"{r['fewshot']['loss_mean'][k]:.3f} |{acc} {last['device_steps']} | {last['bytes_cum']} | "
                         f"{up:.0f} | {r.get('train_seconds', '–')} |")
        tmf = doc["methods"].get("tinymetafed", {})
        if "fewshot_by_reconstruct_steps" in tmf:
            by = {**tmf["fewshot_by_reconstruct_steps"], str(tmf["fewshot"].get("reconstruct_steps", 0)):
                  tmf["fewshot"]["loss_mean"]}
            notes.append("TinyMetaFed's row: each new device first re-fits its local layer on its shots for "
                         f"R = {tmf['fewshot'].get('reconstruct_steps', 0)} full-batch steps (local layer only), "
                         "then takes the same adaptation steps as every method. Same head, by R: " + "; ".join(
                             f"R = {r}: {metric} {c[0]:.3f} after 0 steps, {c[k]:.3f} after {k}, "
                             f"best {min(c):.3f} (after {c.index(min(c))})"
                             for r, c in sorted(by.items(), key=lambda kv: int(kv[0]))) + ".")
        s = doc["scratch"]
        acc = "" if reg else f" {s['metric_mean'][0]:.3f} / {s['metric_mean'][k]:.3f} |"
        lines.append(f"| from scratch | – | {s['loss_mean'][0]:.3f} | {s['loss_mean'][k]:.3f} |{acc} 0 | 0 | – | – |")
        lo = doc["local_only"]
        acc = "" if reg else f" – / {lo['metric']:.3f} |"
        lines += [f"| local only ({lo['devices']} devices) | {lo['sgd_steps']} (batch 1) | – | {lo['loss']:.3f} |{acc} "
                  f"{lo['sgd_steps']} per device | 0 | – | – |", "", "| bar | measured | bar | result | note |",
                  "|---|---|---|---|---|"]
        for name, b in doc["bars"].items():
            v = "n/a" if b["value"] is None else f"{b['value']:.3f}"
            verdict = "pass" if b["pass"] else "**FAIL**"
            lines.append(f"| {name} | {v} | {b['op']} {b['bar']} | {verdict} | {b['note']} |")
        lines += ["", *notes, "", *[f"![{q}]({q})" for q in doc["plots"]], ""]
    (out_dir / "fedmeta.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sine", choices=["sine", "characters", "keywords", "presence", "scale", "all"])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (labelled quick in the results)")
    ap.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    ap.add_argument("--models", type=Path, default=None, help="built model folder (characters, keywords, presence)")
    ap.add_argument("--fleet", type=int, default=None, help="simulated training devices (default: TASK_PROTOCOL)")
    ap.add_argument("--per-round", type=int, default=8, help="devices sampled per round")
    ap.add_argument("--shots", type=int, default=None, help="K shots per new device (default: TASK_PROTOCOL)")
    ap.add_argument("--heldout", type=int, default=100, help="held-out devices judged (>= 100 for the issue bars)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rebuild", action="store_true", help="recompute bars and tables from the JSON files only")
    args = ap.parse_args(argv)
    if args.rebuild:
        for path in sorted(args.out.glob("fedmeta_*.json")):
            doc = json.loads(path.read_text())
            if "protocol" in doc:
                doc["bars"] = bars(Protocol(**doc["protocol"]), doc)
                path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        write_markdown(args.out)
        return 0
    logging.basicConfig(level=logging.WARNING)
    for name in ("flwr", "federation", "tinyfleet.devices"):  # Flower logs every round at INFO on its own handler
        logging.getLogger(name).setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = ["sine", "scale", "characters", "keywords", "presence"] if args.task == "all" else [args.task]
    for task in tasks:
        if task == "scale":
            doc = scale_round(100 if args.quick else 1000, args.out)
            _log(f"scale: {doc['devices']} devices, round {doc['round_seconds']} s")
            continue
        if task != "sine" and args.models is None:
            _log(f"{task}: skipped (needs --models DIR from `tinyfleet models build {task} --out DIR`)")
            continue
        d = TASK_PROTOCOL[task]
        rounds = args.rounds or (200 if args.quick else d["rounds"])
        p = Protocol(task=task, rounds=rounds, fleet=args.fleet or d["fleet"], shots=args.shots or d["shots"],
                     per_round=args.per_round, heldout_devices=args.heldout,
                     models_dir=str(args.models) if args.models else None)
        with memoized_devices(task):
            res = run_task(p, args.out)
        if args.quick:
            res["quick"] = True
            (args.out / f"fedmeta_{task}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        for name, b in res["bars"].items():
            _log(f"  bar {name}: {b['value']} {b['op']} {b['bar']} -> {'pass' if b['pass'] else 'FAIL'}")
    write_markdown(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
