"""The C device side, measured: `python -m benchmarks.firmware [--models DIR] [--seeds 3]`.

Writes `docs/results/firmware.json` and `docs/results/firmware.png`. For the sine head and for one
backbone use case's head (characters, 64-32-5 on the int8 CNN's features), from the quick builds
(`tinyfleet models build sine|characters --quick`):

* ``c_vs_numpy_max_abs``: max |weight difference| between the C learner (host build) and
  `MLPHead.sgd_steps` after 1,000 batch-1 SGD steps on the same seeded stream (lr 0.005, clip 10),
  for each seed; the worst seed is reported. ``reference_spread`` is numpy against itself started
  one float32 ulp away (the floor), and ``chaos_spread_lr_0.02`` the same at lr 0.02, where
  batch-1 SGD is chaotic and no second implementation can agree to 1e-5.
  ``c_vs_numpy_fedprox_max_abs``: the same with FedProx's proximal term (``proximal_mu`` 0.5,
  anchored at the start head), the C learner's ``tf_head_sgd_step_prox`` against
  `MLPHead.sgd_steps(proximal_mu=0.5)`.
* ``cortex_m4``: text/data/bss of the learner + codec ELF (arm-none-eabi-gcc 12, -mcpu=cortex-m4
  -mfloat-abi=hard -O2, no stdio), ``learner`` = that minus an empty start-up ELF, ``predicted_ram``
  = `firmware_models.memory_budget` (head weights + error vectors + activations + one raw sample).
* ``instructions_per_sgd_step``: QEMU mps2-an386 with ``-icount shift=0`` (1 instruction = 1 ns,
  read from the 25 MHz CMSDK timer over 200 steps, checked by a calibration loop);
  ``us_per_sample_64mhz`` = instructions / 64, i.e. one instruction per cycle (a lower bound).
* ``c_devices``: 4 C agents (tf-agent, libmosquitto) + 2 Python devices on a secured Mosquitto in a
  3-round `tinyfleet federate run --strategy tinymetafed`; ``rounds_accepted`` counts rounds in
  which all 6 devices' train and evaluate replies were accepted (no failure, nothing missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from devices.c.build import build_host_test, run_host_test  # noqa: E402
from devices.c.cortex_m4 import measure_size, run_one_step  # noqa: E402
from devices.c.files import HeadLayout, golden_learner, reference_spread  # noqa: E402
from devices.learning.head import MLPHead  # noqa: E402
from devices.simulator import LearnerFactory  # noqa: E402
from firmware_models.usecases import get_use_case  # noqa: E402

OUT = Path("docs/results")
TINYFLEET = str(Path(sys.executable).with_name("tinyfleet"))
STEPS, LR, CLIP = 1000, 0.005, 10.0
PROXIMAL_MU = 0.5
USE_CASES = {"sine": 1, "characters": 1}  # value: bytes per raw input element (int8)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TINYFLEET, *args], capture_output=True, text=True, timeout=timeout, check=False)


def ensure_models(models: Path, name: str) -> Path:
    if not (models / name / "head.npz").is_file():
        _log(f"building {name} (quick)")
        proc = _cli("models", "build", name, "--out", str(models), "--quick", "--json")
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
    return models / name


def agreement(folder: Path, name: str, seeds: int, build_dir: Path) -> dict[str, Any]:
    """C learner vs numpy after 1,000 steps, per seed, on the use case's real features."""
    uc = get_use_case(name)
    head = MLPHead.from_npz(folder / "head.npz", kind=uc.kind)
    exe = build_host_test(HeadLayout.of(head), out_dir=build_dir)
    per_seed, spreads, prox = [], [], []
    for seed in range(seeds):
        data = uc.devices("train", 1, samples_per_device=64, seed=seed)[0]
        feats = LearnerFactory(uc, folder if name != "sine" else None, seed=seed)(0, data).features(data.x)
        for mu in (0.0, PROXIMAL_MU):
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "learner.tfb").write_bytes(golden_learner(
                    head, feats, data.y, steps=STEPS, lr=LR, clip=CLIP, seed=seed, proximal_mu=mu,
                    ridge_lambda=1e-2 if mu == 0.0 else None))
                (Path(tmp) / "codec.bin").write_bytes(b"")
                run = run_host_test(exe, Path(tmp))
            (per_seed if mu == 0.0 else prox).append(float(run["max_abs_weight_diff"]))  # type: ignore[arg-type]
            if mu == 0.0:
                out = run
        order = np.random.default_rng(seed).integers(0, len(feats), size=STEPS)
        spreads.append(reference_spread(head, np.asarray(feats, np.float32), np.asarray(data.y), order, lr=LR,
                                        clip=CLIP))
        if seed == 0:
            chaos = reference_spread(head, np.asarray(feats, np.float32), np.asarray(data.y), order, lr=0.02,
                                     clip=CLIP)
            ridge = float(out["ridge_max_abs"])  # type: ignore[arg-type]
    return {"c_vs_numpy_max_abs": max(per_seed), "per_seed": per_seed, "steps": STEPS, "lr": LR, "clip": CLIP,
            "c_vs_numpy_fedprox_max_abs": max(prox), "fedprox_per_seed": prox, "proximal_mu": PROXIMAL_MU,
            "reference_spread": max(spreads), "chaos_spread_lr_0.02": chaos, "ridge_vs_numpy_max_abs": ridge,
            "head": list(head.layer_sizes)}


def mcu(folder: Path, name: str, build_dir: Path) -> dict[str, Any]:
    uc = get_use_case(name)
    head = MLPHead.from_npz(folder / "head.npz", kind=uc.kind)
    card = json.loads((folder / "card.json").read_text())
    section = card.get("backbone") or card["model"]
    sample_bytes = int(np.prod(section["inputs"][0]["shape"][1:])) * USE_CASES[name]
    size = measure_size(head, sample_bytes=sample_bytes, out_dir=build_dir)
    data = uc.devices("train", 1, samples_per_device=8, seed=0)[0]
    feats = LearnerFactory(uc, folder if name != "sine" else None, seed=0)(0, data).features(data.x)
    step = run_one_step(head, feats[0], data.y[0], lr=0.02, clip=CLIP, out_dir=build_dir)
    return {"cortex_m4": size["elf"], "cortex_m4_learner": size["learner"], "measured_learner_ram": size["learner_ram"],
            "predicted_ram": size["predicted"]["ram"], "predicted": size["predicted"],
            "ram_vs_predicted": size["ram_vs_predicted"], "learner_flash": size["learner_flash"],
            "learner_code_bytes": size["learner_code"], "sample_bytes": sample_bytes,
            "instructions_per_sgd_step": step["instructions_per_sgd_step"],
            "us_per_sample_64mhz": step["us_per_sample_64mhz"], "qemu_step_vs_numpy_max_abs": step["max_abs_vs_numpy"],
            "qemu_instructions_per_timer_tick": step["instructions_per_tick"]}


def c_devices(folder: Path, name: str, work: Path, build_dir: Path) -> dict[str, Any]:
    """4 C + 2 Python devices on a secured broker, a real 3-round TinyMetaFed run."""
    from broker.accounts import enroll_devices
    from devices.c.fleet import c_device_ids, prepare_c_devices, start_c_devices, stop_c_devices, wait_started

    fleet, n_c, n_py, samples = f"bench-{name}", 4, 2, 64
    mq = work / f"mq-{name}"
    proc = _cli("broker", "start", "--dir", str(mq), "--json")
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    info = json.loads(proc.stdout)
    models = ["--models", str(folder)] if name != "sine" else []
    devs: list[Any] = []
    sim = None
    try:
        creds = work / f"creds-{name}"
        creds.mkdir(mode=0o700)
        paths = {}
        for e in enroll_devices(mq, c_device_ids(n_c), fleet=fleet):
            (creds / f"{e.name}.json").write_text(json.dumps(e.to_json()))
            (creds / f"{e.name}.json").chmod(0o600)
            paths[e.name] = creds / f"{e.name}.json"
        devs, layout = prepare_c_devices(n_c, use_case=name, broker_url=info["url"], fleet=fleet, root=work / name,
                                         credentials=paths, models_dir=folder if name != "sine" else None,
                                         samples_per_device=samples, seed=100)
        start_c_devices(devs, layout, samples=samples, build_dir=build_dir)
        wait_started(devs)
        sim = subprocess.Popen([TINYFLEET, "devices", "simulate", "--n", str(n_py), "--task", name, "--broker-dir",
                                str(mq), "--fleet", fleet, "--telemetry", "0", "--samples", str(samples), *models],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        run = _cli("federate", "run", "--task", name, "--strategy", "tinymetafed", "--rounds", "3", "--broker",
                   info["url"], "--credentials", info["server_credentials"], "--fleet", fleet, "--quorum",
                   str(n_c + n_py), "--quorum-timeout", "120", "--round-timeout", "120", "--local-steps", "20",
                   "--out", str(work / "runs"), "--run-id", f"bench-{name}", "--json", *models)
        if run.returncode != 0:
            raise SystemExit(run.stderr[-3000:])
        rounds = [json.loads(ln) for ln in (work / "runs" / f"bench-{name}" / "metrics.jsonl").read_text().splitlines()]
        n = n_c + n_py
        accepted = sum(1 for r in rounds if (r["sampled"], r["replies"], r["failures"], r["missing"]) == (n, n, 0, 0)
                       and (r["eval_replies"], r["eval_failures"]) == (n, 0))
        return {"n": n_c, "python_devices": n_py, "rounds": len(rounds), "rounds_accepted": accepted,
                "strategy": "tinymetafed", "run_seconds": round(time.monotonic() - t0, 1),
                "final_loss": rounds[-1].get("loss"), "bytes_up_last_round": rounds[-1]["bytes_up"]}
    finally:
        if sim is not None and sim.poll() is None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
        stop_c_devices(devs)
        _cli("broker", "stop", "--dir", str(mq))


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["use_cases"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = np.arange(len(names))
    pred = [results["use_cases"][n]["predicted_ram"] for n in names]
    meas = [results["use_cases"][n]["measured_learner_ram"] for n in names]
    a.bar(x - 0.2, pred, 0.4, label="predicted (memory_budget)")
    a.bar(x + 0.2, meas, 0.4, label="Cortex-M4 ELF (data + bss)")
    a.set_xticks(x, [f"{n}\n{'-'.join(map(str, results['use_cases'][n]['head']))}" for n in names])
    a.set_ylabel("learner RAM (bytes)")
    a.legend(fontsize=8)
    us = [results["use_cases"][n]["us_per_sample_64mhz"] for n in names]
    b.bar(x, us, 0.5, color="tab:green")
    b.set_xticks(x, names)
    b.set_ylabel("µs per SGD step at 64 MHz (1 IPC)")
    fig.suptitle("C learner on a Cortex-M4F (QEMU mps2-an386, -icount)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("models-quick"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
                               "use_cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench-fw-") as tmp:
        work, build_dir = Path(tmp), Path(tmp) / "build"
        for name in USE_CASES:
            folder = ensure_models(args.models, name)
            _log(f"{name}: C vs numpy")
            entry = agreement(folder, name, args.seeds, build_dir)
            _log(f"{name}: Cortex-M4 size and QEMU step")
            entry.update(mcu(folder, name, build_dir))
            _log(f"{name}: 4 C + 2 Python devices in a federated run")
            entry["c_devices"] = c_devices(folder, name, work, build_dir)
            results["use_cases"][name] = entry
            _log(json.dumps(entry, indent=1, default=float))
    results["tinyol"] = {"us_per_sample": None, "source": "TinyOL: TinyML with Online-Learning on Microcontrollers "
                         "(Ren, Anicic, Runkler; IJCNN 2021; arXiv:2103.08295)",
                         "note": "its per-sample figure could not be retrieved here: the reachable copies "
                                 "(arXiv abstract, docslib.org/doc/3168421) only expose the abstract"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "firmware.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    plot(results, args.out / "firmware.png")
    _log(f"wrote {args.out / 'firmware.json'} and {args.out / 'firmware.png'}")


if __name__ == "__main__":
    main()
