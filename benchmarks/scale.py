"""Scale-out benchmark: 10,000 devices over 4 gateways vs a flat 1,000, and sync vs async under intermittency.

``python -m benchmarks.scale`` writes ``docs/results/scale.json``, ``scale.png`` and
``scale.md``. Everything runs as separate processes on this machine, as a deployment would:
Mosquitto site brokers, ``tinyfleet devices simulate`` device groups, ``flower-superlink``,
``flower-supernode`` gateways (Flower starts a ClientApp process per message), and the
coordinator or ServerApp.

Three measurements:

1. **Flat 1,000 and one gateway.** One site of 1,000 devices. The flat coordinator runs Reptile
   rounds against the site broker directly; then the same devices run the same rounds through one
   gateway under the SuperLink. Round time (train + evaluate, every device), bytes per level, and
   max |Δθ| between the two final heads (same seed; the goal is <= 1e-6).
2. **10,000 devices over 4 gateways.** Four sites of 2,500. Round time, its split into Flower's
   delivery, the gateway process start, the site sub-round and the way back, bytes per level
   (MQTT at the sites, Flower's at the SuperLink).
3. **Sync vs async under 30 % intermittency** (flat, one site): 30 % of the devices are online
   `online_s` in every `period_s` (one minute in three, scaled by 1/20). Synchronous Reptile rounds
   sample a quarter of the present devices and wait for them; FedBuff-style rounds keep as many
   tasks in flight and aggregate every half of that, for the same number of device updates. The
   few-shot quality of every intermediate head (10 shots, 5 full-batch steps at lr 0.05, 100
   held-out sine tasks never trained on, as in benchmarks.fedmeta) is measured afterwards, off the
   clock. Target: the best quality the synchronous run reached; reported per seed: wall time and
   device time until each run first reaches it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fleet import machine
from devices.learning.adapt import AdaptConfig
from federation.buffered import BufferedRun
from federation.checkpoint import load_checkpoint, save_checkpoint
from federation.coordinator import CHECKPOINT_FILE, Coordinator, RunConfig
from federation.fewshot import Episode, curves, episodes
from federation.hierarchy.deployment import DeviceGroup, LocalDeployment
from federation.hierarchy.launch import flower_traffic
from federation.hierarchy.server import INITIAL_FILE
from federation.hierarchy.settings import HierarchyConfig
from federation.session import fleet_grid, initial_parameters

OUT = Path("docs/results")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the benchmark measures (``--quick``: a small version of everything, for a smoke test)."""

    flat_devices: int = 1000
    hier_devices: int = 10000
    gateways: int = 4
    rounds: int = 3
    local_steps: int = 50
    lr: float = 0.02
    inter_devices: int = 200
    inter_fraction: float = 0.3
    online_s: float = 3.0
    period_s: float = 9.0
    sample_fraction: float = 0.25
    sync_rounds: int = 30
    seeds: int = 3
    fewshot_devices: int = 100

    @classmethod
    def quick(cls) -> Plan:
        return cls(flat_devices=40, hier_devices=80, gateways=2, rounds=2, local_steps=10, inter_devices=40,
                   online_s=2.0, period_s=6.0, sync_rounds=4, seeds=2, fewshot_devices=10)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, including reaped children) of `pids` so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


class CpuMeter:
    """CPU seconds between two calls of `lap`: the simulated devices, and everything else (the federation).

    "Everything else" is what a real deployment runs on servers: brokers, gateways (SuperNodes,
    SuperExec, every ClientApp process), the SuperLink and ServerApp, or the flat coordinator
    (this process, with `include_self`). The device groups' CPU is what real microcontrollers
    would spend on themselves.
    """

    def __init__(self, deployment: LocalDeployment, *, include_self: bool) -> None:
        from federation.hierarchy.processes import marked_pids

        self._all = lambda: sorted(set(marked_pids(deployment.procs.token)) | set(deployment.broker_pids))
        self._devices = [s.devices.pid for s in deployment.sites if s.devices is not None]
        self.include_self = include_self
        self.last = self._now()

    def _now(self) -> tuple[float, float]:
        own = sum(os.times()[:2]) if self.include_self else 0.0
        devices = cpu_seconds(self._devices)
        return devices, cpu_seconds([p for p in self._all() if p not in self._devices]) + own

    def lap(self) -> dict[str, float]:
        now = self._now()
        (d0, f0), (d1, f1) = self.last, now
        self.last = now
        return {"devices": round(d1 - d0, 2), "federation": round(f1 - f0, 2), "total": round(d1 - d0 + f1 - f0, 2)}


def _log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _config(plan: Plan, run_id: str, n: int, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"run_id": run_id, "task": "sine", "strategy": "reptile", "rounds": plan.rounds,
                            "seed": 0, "local_steps": plan.local_steps, "lr": plan.lr, "round_timeout": 300.0,
                            "quorum": n, "quorum_timeout": 600.0, "simulate": n}
    base.update(kw)
    return RunConfig(**base)


def _flat_run(deployment: LocalDeployment, cfg: RunConfig, run_dir: Path, initial: dict[str, np.ndarray], *,
              mode: str = "sync", settings: HierarchyConfig | None = None,
              on_round: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], dict[int, dict]]:
    """A flat run against site 0's broker (the deployment's devices); returns (result, per-round phase ledger)."""
    from broker.accounts import ensure_server_account

    site = deployment.sites[0]
    flat = dataclasses.replace(cfg, broker=site.config.broker, fleet=site.config.fleet, simulate=0)
    creds = ensure_server_account(site.broker_dir, "benchmark")
    meter = CpuMeter(deployment, include_self=True)

    def hook(rec: dict[str, Any]) -> None:
        rec["cpu_s"] = meter.lap()
        if on_round is not None:
            on_round(rec)

    with fleet_grid(flat, run_dir, credentials=creds) as grid:
        if mode == "async":
            assert settings is not None
            result = BufferedRun(dataclasses.replace(settings, run=flat), grid, run_dir, on_round=hook).start(initial)
        else:
            result = Coordinator(flat, grid, run_dir, on_round=hook).start(initial)
        phases = {r["round"]: grid.ledger.round_summary(r["round"])["phases"] for r in result["rounds"]}
    return result, phases


def _hier_run(deployment: LocalDeployment, settings: HierarchyConfig, run_dir: Path,
              initial: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, Any]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / INITIAL_FILE, arrays=initial, state={"round": 0})
    meter = CpuMeter(deployment, include_self=False)
    cpu: dict[int, dict[str, float]] = {}
    flower_run = deployment.submit(settings, run_dir)
    meter.lap()  # from the run's start: `flwr run` itself is not a round
    deployment.wait(run_dir, timeout=settings.run.rounds * 1800 + 600,
                    on_line=lambda rec: cpu.__setitem__(rec["round"], meter.lap()))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        r["cpu_s"] = cpu.get(r["round"])
    final, _ = load_checkpoint(run_dir / "final.npz")
    return rows, final, flower_traffic(deployment, flower_run)


def _flat_summary(rows: list[dict[str, Any]], phases: dict[int, dict]) -> dict[str, Any]:
    per = [{"round": r["round"], "seconds": r["seconds"],
            "train_s": round(phases[r["round"]].get("train", {}).get("seconds", 0.0), 3),
            "eval_s": round(phases[r["round"]].get("evaluate", {}).get("seconds", 0.0), 3),
            "replies": r.get("replies"), "eval_replies": r.get("eval_replies"), "missing": r.get("missing"),
            "device_bytes": r.get("bytes_up", 0) + r.get("bytes_down", 0), "loss": r.get("loss"),
            "cpu_s": r.get("cpu_s")} for r in rows]
    return {"rounds": per, "round_s_median": float(np.median([p["seconds"] for p in per])),
            "train_s_median": float(np.median([p["train_s"] for p in per])),
            **_cpu_medians(per), "device_bytes_per_round": float(np.median([p["device_bytes"] for p in per]))}


def _hier_summary(rows: list[dict[str, Any]], traffic: dict[str, Any]) -> dict[str, Any]:
    keys = ("delivery", "startup", "site", "return")
    per = []
    for r in rows:
        per.append({
            "round": r["round"], "seconds": r["seconds"], "train_s": r.get("phase_s"), "eval_s": r.get("eval_phase_s"),
            "replies": r.get("replies"), "eval_replies": r.get("eval_replies"), "missing": r.get("missing"),
            "gateway_replies": r.get("gateway_replies"),
            "device_bytes": sum(r.get(k, 0) for k in ("bytes_up", "bytes_down", "eval_bytes_up", "eval_bytes_down")),
            "gateway_payload_bytes": sum(r.get(k, 0) for k in ("top_bytes_up", "top_bytes_down", "eval_top_bytes_up",
                                                               "eval_top_bytes_down")),
            "train_split_s": {k: r.get(f"gateway_{k}_s") for k in keys},
            "eval_split_s": {k: r.get(f"eval_gateway_{k}_s") for k in keys},
            "site_sub_round_s": r.get("site_seconds_max"), "loss": r.get("loss"), "cpu_s": r.get("cpu_s")})
    n = max(len(rows), 1)
    wire = (traffic.get("superlink_bytes_in") or 0) + (traffic.get("superlink_bytes_out") or 0)
    return {"rounds": per, "round_s_median": float(np.median([p["seconds"] for p in per])),
            "train_s_median": float(np.median([p["train_s"] or 0 for p in per])),
            **_cpu_medians(per), "device_bytes_per_round": float(np.median([p["device_bytes"] for p in per])),
            "gateway_payload_bytes_per_round": float(np.median([p["gateway_payload_bytes"] for p in per])),
            "superlink_wire_bytes_per_round": wire / n if wire else None, "flower": traffic}


def _cpu_medians(per: list[dict[str, Any]]) -> dict[str, float]:
    """Median CPU seconds per round: total, the simulated devices', and the federation's (servers)."""
    return {f"cpu_s_{k}_median": float(np.median([(p["cpu_s"] or {}).get(k, 0.0) for p in per]))
            for k in ("total", "devices", "federation")}


def flat_and_one_gateway(plan: Plan, work: Path) -> dict[str, Any]:
    """Flat rounds and the same rounds through one gateway, on the same 1,000 devices."""
    n = plan.flat_devices
    initial = initial_parameters("sine", seed=0)
    t0 = time.monotonic()
    with LocalDeployment(work / "dep-flat", gateways=1, devices=n, group=DeviceGroup(seed=0),
                         ready_timeout=900) as deployment:
        ready = time.monotonic() - t0
        _log(f"flat: {n} devices ready in {ready:.1f} s")
        flat, phases = _flat_run(deployment, _config(plan, "flat", n), work / "flat", initial)
        _log(f"flat: rounds {[r['seconds'] for r in flat['rounds']]}")
        rows, final, traffic = _hier_run(deployment, HierarchyConfig(run=_config(plan, "one-gateway", n), gateways=1),
                                         work / "one-gateway", initial)
        _log(f"one gateway: rounds {[r['seconds'] for r in rows]}")
    delta = max(float(np.max(np.abs(final[k] - flat["final"][k]))) for k in final)
    return {"devices": n, "ready_s": round(ready, 2), "flat": _flat_summary(flat["rounds"], phases),
            "one_gateway": _hier_summary(rows, traffic), "max_abs_delta_theta": delta,
            "equal_within_1e-6": delta <= 1e-6}


def many_gateways(plan: Plan, work: Path) -> dict[str, Any]:
    n, g = plan.hier_devices, plan.gateways
    t0 = time.monotonic()
    with LocalDeployment(work / "dep-hier", gateways=g, devices=n, group=DeviceGroup(seed=1),
                         ready_timeout=1800) as deployment:
        ready = time.monotonic() - t0
        _log(f"hierarchical: {n} devices over {g} gateways ready in {ready:.1f} s")
        rows, _, traffic = _hier_run(deployment, HierarchyConfig(run=_config(plan, "hier", n, seed=1), gateways=g),
                                     work / "hier", initial_parameters("sine", seed=1))
        _log(f"hierarchical: rounds {[r['seconds'] for r in rows]}")
    return {"devices": n, "gateways": g, "ready_s": round(ready, 2), **_hier_summary(rows, traffic)}


FEWSHOT = AdaptConfig(steps=5, lr=0.05, step="batch")
"""The few-shot judge of every intermediate head: 10 shots, 5 full-batch steps at lr 0.05 (as documented above)."""
_EPISODES: dict[int, list[Episode]] = {}


def _fewshot(head: dict[str, np.ndarray], plan: Plan) -> float:
    eps = _EPISODES.setdefault(plan.fewshot_devices,
                               episodes("sine", plan.fewshot_devices, shots=10, queries=100, seed=4242))
    return curves(head, eps, kind="regression", config=FEWSHOT).mean(FEWSHOT.steps)


def _trajectory(plan: Plan, run_dir: Path, start: float, points: list[tuple[float, int, float, dict]],
                initial: dict[str, np.ndarray]) -> Callable[[dict[str, Any]], None]:
    """An `on_round` hook that snapshots the head after every round (evaluated after the run)."""
    points.append((0.0, 0, 0.0, initial))

    def hook(rec: dict[str, Any]) -> None:
        arrays, _ = load_checkpoint(run_dir / CHECKPOINT_FILE)
        replies = int(rec.get("replies") or 0)
        device_s = float(rec.get("train_seconds") or 0.0) * replies  # mean per reply x replies
        points.append((time.monotonic() - start, replies, device_s, arrays))
    return hook


def _curve(plan: Plan, points: list[tuple[float, int, float, dict]]) -> list[dict[str, float]]:
    out, updates, device_s = [], 0, 0.0
    for t, replies, dev_s, head in points:
        updates += replies
        device_s += dev_s
        out.append({"t": round(t, 3), "updates": updates, "device_train_s": round(device_s, 4),
                    "fewshot_mse": _fewshot(head, plan)})
    return out


def _first(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first trained head (not the initial one) at least as good as `target`."""
    return next((p for p in curve[1:] if p["fewshot_mse"] <= target), None)


def sync_vs_async(plan: Plan, work: Path) -> dict[str, Any]:
    n = plan.inter_devices
    availability = (1 - plan.inter_fraction) + plan.inter_fraction * plan.online_s / plan.period_s
    present = max(1, int(n * availability))
    sampled = max(2, int(plan.sample_fraction * present))
    buffer = max(1, sampled // 2)
    versions = plan.sync_rounds * sampled // buffer  # the same number of device updates
    runs: list[dict[str, Any]] = []
    for seed in range(plan.seeds):
        group = DeviceGroup(seed=100 + seed, intermittent=plan.inter_fraction, online_s=plan.online_s,
                            period_s=plan.period_s)
        initial = initial_parameters("sine", seed=seed)
        with LocalDeployment(work / f"dep-int{seed}", gateways=1, devices=n, group=group,
                             ready_timeout=900) as deployment:
            quorum = max(1, int(0.8 * present))
            # no evaluate phase in either mode (quality is judged offline): a synchronous evaluate phase
            # would wait for sleeping devices too, which the asynchronous run never does
            common = {"seed": seed, "quorum": quorum, "round_timeout": 60.0,
                      "strategy_params": {"fraction_train": plan.sample_fraction, "fraction_evaluate": 0.0,
                                          "min_evaluate_nodes": 0}}
            sync_cfg = _config(plan, f"sync{seed}", n, rounds=plan.sync_rounds, **common)
            points: list[tuple[float, int, float, dict]] = []
            t0 = time.monotonic()
            _flat_run(deployment, sync_cfg, work / f"sync{seed}", initial,
                      on_round=_trajectory(plan, work / f"sync{seed}", t0, points, initial))
            sync_wall = time.monotonic() - t0
            async_cfg = _config(plan, f"async{seed}", n, rounds=versions, **{**common, "strategy_params": {}})
            settings = HierarchyConfig(run=async_cfg, mode="async", buffer=buffer, concurrency=sampled)
            apoints: list[tuple[float, int, float, dict]] = []
            t1 = time.monotonic()
            _flat_run(deployment, async_cfg, work / f"async{seed}", initial, mode="async", settings=settings,
                      on_round=_trajectory(plan, work / f"async{seed}", t1, apoints, initial))
            async_wall = time.monotonic() - t1
        sync_curve, async_curve = _curve(plan, points), _curve(plan, apoints)
        target = min(p["fewshot_mse"] for p in sync_curve[1:])  # the best the synchronous run reached
        hit_s, hit_a = _first(sync_curve, target), _first(async_curve, target)
        run: dict[str, Any] = {"seed": seed, "target_fewshot_mse": target, "sync_wall_s": round(sync_wall, 2),
               "async_wall_s": round(async_wall, 2), "sync": sync_curve, "async": async_curve,
               "sync_to_target": hit_s, "async_to_target": hit_a,
               "wall_ratio": (hit_a["t"] / hit_s["t"]) if hit_a and hit_s and hit_s["t"] > 0 else None}
        for name, hit in (("sync", hit_s), ("async", hit_a)):
            if hit is not None:  # awake device-hours of the whole fleet until the target
                run[f"{name}_fleet_device_hours"] = round(n * availability * hit["t"] / 3600, 4)
        runs.append(run)
        _log(f"seed {seed}: target {target:.3f}; sync {hit_s and hit_s['t']} s, async {hit_a and hit_a['t']} s")
    ratios = [float(r["wall_ratio"]) for r in runs if r["wall_ratio"] is not None]
    return {"devices": n, "intermittent_fraction": plan.inter_fraction, "online_s": plan.online_s,
            "period_s": plan.period_s, "availability": availability, "sync_rounds": plan.sync_rounds,
            "sampled_per_round": sampled, "async_buffer": buffer, "async_concurrency": sampled,
            "async_versions": versions, "runs": runs, "wall_ratio": _ci(ratios),
            "reached": sum(1 for r in runs if r["async_to_target"] is not None),
            "device_train_s_ratio": _ci([r["async_to_target"]["device_train_s"] / r["sync_to_target"]["device_train_s"]
                                         for r in runs if r["async_to_target"] and r["sync_to_target"]
                                         and r["sync_to_target"]["device_train_s"] > 0])}


def _ci(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "ci95": None}
    v = np.asarray(values, dtype=float)
    half = T95.get(len(v) - 1, 1.96) * float(v.std(ddof=1)) / math.sqrt(len(v)) if len(v) > 1 else None
    return {"n": len(v), "mean": float(v.mean()), "ci95": half, "values": [float(x) for x in v]}


def goals(doc: dict[str, Any]) -> dict[str, Any]:
    hier, eq, inter = doc["hierarchical"], doc["flat_and_one_gateway"], doc["intermittent"]
    ratio = inter["wall_ratio"]["mean"]
    return {
        "round_10k_le_30s": {"value": hier["round_s_median"], "bar": 30.0, "pass": hier["round_s_median"] <= 30.0},
        "async_wall_le_half": {"value": ratio, "bar": 0.5, "pass": ratio is not None and ratio <= 0.5
                               and inter["reached"] == len(inter["runs"])},
        "one_gateway_equals_flat": {"value": eq["max_abs_delta_theta"], "bar": 1e-6,
                                    "pass": eq["max_abs_delta_theta"] <= 1e-6}}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eq, hier, inter = doc["flat_and_one_gateway"], doc["hierarchical"], doc["intermittent"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    labels = [f"flat\n{eq['devices']:,}", f"1 gateway\n{eq['devices']:,}",
              f"{hier['gateways']} gateways\n{hier['devices']:,}"]
    runs = [eq["flat"], eq["one_gateway"], hier]
    train = [float(np.median([r["train_s"] or 0 for r in x["rounds"]])) for x in runs]
    ev = [float(np.median([r["eval_s"] or 0 for r in x["rounds"]])) for x in runs]
    ax = axes[0]
    ax.bar(labels, train, label="train phase", color="#4c72b0")
    ax.bar(labels, ev, bottom=train, label="evaluate phase", color="#9ecae1")
    ax.axhline(30, color="k", ls="--", lw=1, label="goal: 30 s at 10,000")
    ax.set_ylabel("seconds per round (median)")
    ax.set_title("Round time")
    ax.legend(fontsize=8)
    ax = axes[1]
    dev = [x["device_bytes_per_round"] for x in runs]
    top = [0.0, eq["one_gateway"]["gateway_payload_bytes_per_round"], hier["gateway_payload_bytes_per_round"]]
    xs = np.arange(3)
    ax.bar(xs - 0.2, dev, 0.4, label="device level (MQTT payloads)", color="#55a868")
    ax.bar(xs + 0.2, top, 0.4, label="gateway level (Flower array payloads)", color="#c44e52")
    ax.set_xticks(xs, labels)
    ax.set_yscale("log")
    ax.set_ylabel("bytes per round (both directions)")
    ax.set_title("Bytes per level")
    ax.legend(fontsize=8)
    ax = axes[2]
    for name, color in (("sync", "#4c72b0"), ("async", "#dd8452")):
        for i, run in enumerate(inter["runs"]):
            c = run[name]
            ax.plot([p["t"] for p in c], [p["fewshot_mse"] for p in c], color=color, alpha=0.8, lw=1.2,
                    label=name if i == 0 else None)
    for run in inter["runs"]:
        ax.axhline(run["target_fewshot_mse"], color="grey", lw=0.6, ls=":")
    ax.set_ylim(0, 3 * max(run["target_fewshot_mse"] for run in inter["runs"]))  # the untrained start is off the top
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("few-shot MSE (10 shots, 5 steps)")
    ax.set_title(f"{inter['intermittent_fraction']:.0%} intermittent, {inter['devices']} devices")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(doc: dict[str, Any]) -> str:
    eq, hier, inter, g = doc["flat_and_one_gateway"], doc["hierarchical"], doc["intermittent"], doc["goals"]
    m = doc["machine"]
    lines = [
        "# Scale-out benchmark", "",
        f"`python -m benchmarks.scale` on {doc['date']}, {doc['wall_s'] / 60:.0f} min, on this "
        f"{m['cpus']}-core machine (1-minute load average before/after {m['loadavg_1min_before_after'][0]:.1f}/"
        f"{m['loadavg_1min_before_after'][1]:.1f}; the benchmark's own processes raise it). Sine, Reptile, "
        f"{doc['plan']['local_steps']} local steps; every device trains and evaluates every round."
        + ("" if "reused_from_earlier_run" not in doc else " Parts measured by separate invocations (`--only`), "
           "merged into one JSON; times and loads above are the last invocation's, each part's load is below."),
        "",
        "| setup | devices | round s (median) | train s | evaluate s | CPU s/round: devices + federation | "
        "load avg before→after | device bytes/round | gateway bytes/round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, x, n, part in (("flat", eq["flat"], eq["devices"], eq),
                             ("1 gateway", eq["one_gateway"], eq["devices"], eq),
                             (f"{hier['gateways']} gateways", hier, hier["devices"], hier)):
        ev = float(np.median([r["eval_s"] or 0 for r in x["rounds"]]))
        top = x.get("gateway_payload_bytes_per_round")
        cpu = f"{x['cpu_s_devices_median']:.0f} + {x['cpu_s_federation_median']:.0f}"
        load = "→".join(f"{v:.1f}" for v in part.get("loadavg_1min_before_after", [])) or "-"
        lines.append(f"| {name} | {n:,} | {x['round_s_median']:.1f} | {x['train_s_median']:.1f} | {ev:.1f} | {cpu} | "
                     f"{load} | {x['device_bytes_per_round']:,.0f} | {'-' if top is None else f'{top:,.0f}'} |")
    split = hier["rounds"][-1]["train_split_s"]
    floor = hier["cpu_s_devices_median"] / m["cpus"]
    lines += ["", f"CPU floor: the {hier['devices']:,} simulated devices alone use {hier['cpu_s_devices_median']:.0f} "
              f"CPU-s per round (training and evaluating on this machine's cores, as real devices would on their "
              f"own), so no round here can be shorter than {floor:.0f} s on {m['cpus']} cores even if the "
              f"federation cost nothing.", "",
              f"Where a {hier['devices']:,}-device train phase goes (last round, slowest gateway): Flower's "
              f"delivery {split['delivery']} s, gateway process start {split['startup']} s, site sub-round "
              f"{split['site']} s, way back {split['return']} s.", "",
              f"One gateway vs flat on the same devices: max |Δθ| = {eq['max_abs_delta_theta']:.2e}.", "",
              f"Intermittency ({inter['intermittent_fraction']:.0%} of {inter['devices']} devices online "
              f"{inter['online_s']:g} s in {inter['period_s']:g} s): sync samples {inter['sampled_per_round']} per "
              f"round for {inter['sync_rounds']} rounds; async keeps {inter['async_concurrency']} in flight, buffer "
              f"{inter['async_buffer']}, {inter['async_versions']} versions (same device updates).", "",
              "| seed | target few-shot MSE | sync s to target | async s to target | ratio | "
              "fleet device-h sync / async | device train s sync / async |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in inter["runs"]:
        s, a = r["sync_to_target"], r["async_to_target"]
        ratio = "-" if r["wall_ratio"] is None else f"{r['wall_ratio']:.3f}"
        hours = f"{r.get('sync_fleet_device_hours', '-')} / {r.get('async_fleet_device_hours', '-')}"
        train = f"{s['device_train_s'] if s else '-'} / {a['device_train_s'] if a else '-'}"
        lines.append(f"| {r['seed']} | {r['target_fewshot_mse']:.3f} | {s['t'] if s else '-'} | "
                     f"{a['t'] if a else 'not reached'} | {ratio} | {hours} | {train} |")
    wr = inter["wall_ratio"]
    lines += ["", f"Wall-time ratio async/sync: {wr['mean'] if wr['mean'] is None else round(wr['mean'], 3)}"
              + (f" ± {wr['ci95']:.3f} (95 % CI, n={wr['n']})" if wr.get("ci95") else ""), "", "Goals:", ""]
    for k, v in g.items():
        lines.append(f"- {k}: {v['value']} vs {v['bar']} → {'pass' if v['pass'] else 'MISS'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--quick", action="store_true", help="a small version of everything (smoke test)")
    ap.add_argument("--only", choices=("flat", "hier", "intermittent"), action="append",
                    help="run only these parts (the JSON then lacks the others)")
    ap.add_argument("--render", action="store_true", help="only redraw the plot and table from the JSON in --out")
    args = ap.parse_args(argv)
    if args.render:
        stem = "scale_quick" if args.quick else "scale"
        doc = json.loads((args.out / f"{stem}.json").read_text())
        doc["goals"] = goals(doc)
        plot(doc, args.out / f"{stem}.png")
        (args.out / f"{stem}.md").write_text(markdown(doc))
        return 0
    plan = Plan.quick() if args.quick else Plan()
    parts = set(args.only or ("flat", "hier", "intermittent"))
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tinyfleet-scale-"))
    doc: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "plan": dataclasses.asdict(plan),
                           "machine": machine()}
    try:
        steps = (("flat", "flat_and_one_gateway", flat_and_one_gateway), ("hier", "hierarchical", many_gateways),
                 ("intermittent", "intermittent", sync_vs_async))
        for part, key, fn in steps:
            if part in parts:
                before = os.getloadavg()[0]
                doc[key] = fn(plan, work)
                doc[key]["loadavg_1min_before_after"] = [before, os.getloadavg()[0]]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    doc["machine"]["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale_quick" if args.quick else "scale"
    previous = args.out / f"{stem}.json"
    if parts != {"flat", "hier", "intermittent"} and previous.is_file():  # keep the parts not re-measured
        old = json.loads(previous.read_text())
        for key in ("flat_and_one_gateway", "hierarchical", "intermittent"):
            if key not in doc and key in old:
                doc[key] = old[key]
                doc.setdefault("reused_from_earlier_run", []).append({"part": key, "date": old.get("date")})
    if all(k in doc for k in ("flat_and_one_gateway", "hierarchical", "intermittent")):
        doc["goals"] = goals(doc)
        plot(doc, args.out / f"{stem}.png")
        (args.out / f"{stem}.md").write_text(markdown(doc))
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    _log(f"wrote {args.out / stem}.json in {doc['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
