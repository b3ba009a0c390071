"""The end-to-end demo: from nothing to a registered, federated, redeployed fleet, with plots.

Steps (each printed as it happens):

1. start a private Mosquitto, secured like every broker tinyfleet manages (no anonymous access;
   the registry listener, the coordinator and the deploy client each log in with a server account
   of their own; every simulated device is enrolled with its own password), or use ``--broker``;
   and an embedded registry in the output directory;
2. build (or reuse from ``<out>/models``) the int8 model of the use case and register it;
3. start a simulated fleet of mixed boards — some too small for the model, some without the
   sensor — whose agents publish W3C Thing Descriptions; the registry ingests them live;
4. matchmaking picks the eligible devices and says who was excluded and why;
5. federated meta-learning (Reptile) over MQTT on the eligible devices, with a live display;
   FedAvg runs on the same devices with the same budget as the baseline;
6. the resulting head is converted to int8 and deployed to the fleet (safe deploy); the new model
   version and its lineage (run, rounds, devices) go into the registry;
7. brand-new (held-out) devices adapt few-shot from Reptile's, FedAvg's and a scratch head;
8. a summary table, PNG plots and ``report.json`` in the output directory.

Everything started is stopped again (ExitStack), also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from broker.accounts import enroll_device_credentials, ensure_server_account, list_accounts, server_credentials
from broker.files import SECURITY_DIR, SERVER_USER
from broker.process import MosquittoBroker
from broker.secure import is_secured, secured_broker
from devices.link.address import Credentials, parse_broker_url
from federation.checkpoint import load_checkpoint
from federation.coordinator import FINAL_FILE, Coordinator, RunConfig
from federation.fewshot import fewshot_curve, head_sizes, scratch_head
from federation.rollout import package_federated_model, rollout
from federation.session import fleet_grid, initial_parameters
from firmware_models.card import json_default
from firmware_models.exceptions import TinyFleetError
from firmware_models.usecases import get_use_case
from firmware_models.usecases.base import ARTIFACT_BACKBONE, ARTIFACT_BACKBONE_KERAS, ARTIFACT_CARD, ARTIFACT_MODEL
from registry.ingest_model import add_model
from registry.lineage import record_lineage
from registry.presence import PresenceListener
from registry.questions import explain_model
from registry.store import open_store
from tinyfleet import plots

# A mix of real boards: the Uno is too small for any model; the ESP32-CAM has only a camera.
DEFAULT_BOARDS = "nano33ble:4,esp32:3,stm32f429:2,rpi4:1,uno:2,esp32cam:1"
FLEET = "demo"
LISTENER_ACCOUNT = "registry-listener"
DEPLOY_ACCOUNT = "demo-deploy"


@dataclass
class DemoOptions:
    """What `tinyfleet demo` was asked to do."""

    out: Path
    task: str = "sine"
    devices: int = 50
    rounds: int = 100
    newcomers: int = 50
    shots: int = 10
    boards: str = DEFAULT_BOARDS
    broker: str | None = None
    seed: int = 0
    quick: bool = False
    insecure: bool = False

    @classmethod
    def quick_defaults(cls, out: Path, **kw: Any) -> DemoOptions:
        """Smaller fleet and fewer rounds so the whole demo takes about a minute."""
        base: dict[str, Any] = {"devices": 16, "rounds": 8, "newcomers": 20}
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(out=out, quick=True, **base)


Say = Callable[[str], None]
OnRound = Callable[[str, dict[str, Any]], None]


def run_demo(opts: DemoOptions, *, say: Say, on_round: OnRound | None = None) -> dict[str, Any]:
    """Run every step of the demo; returns the report that is also written to ``report.json``."""
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
                              "started": _now()}
    t_start = time.perf_counter()
    uc = get_use_case(opts.task)
    with contextlib.ExitStack() as stack:
        # 1. broker + registry ------------------------------------------------------------------
        url = opts.broker
        broker_dir: Path | None = None
        accounts: dict[str, Credentials | None] = {"server": None, "listener": None, "deploy": None}
        if url is None:
            broker_dir = out / "broker"
            if opts.insecure:
                broker = MosquittoBroker(broker_dir)
            else:
                shutil.rmtree(broker_dir / SECURITY_DIR, ignore_errors=True)  # fresh accounts per demo run
                broker = secured_broker(broker_dir)
            url = broker.start().url
            stack.callback(broker.stop)
            if opts.insecure:
                say(f"1. started a private INSECURE Mosquitto at {url} (anyone on this machine may connect)")
            else:
                accounts = {"server": server_credentials(broker_dir),
                            "listener": ensure_server_account(broker_dir, LISTENER_ACCOUNT),
                            "deploy": ensure_server_account(broker_dir, DEPLOY_ACCOUNT)}
                say(f"1. started a private secured Mosquitto at {url}: anonymous access refused, server "
                    f"accounts {SERVER_USER}, {LISTENER_ACCOUNT}, {DEPLOY_ACCOUNT}; devices get their own passwords")
        else:
            say(f"1. using the broker at {url}")
        address = parse_broker_url(url)
        report["broker"] = {"url": url, "managed": broker_dir is not None,
                            "secured": bool(broker_dir is not None and is_secured(broker_dir)),
                            "anonymous_allowed": None if broker_dir is None else not is_secured(broker_dir),
                            "accounts": sorted(list_accounts(broker_dir)) if broker_dir is not None else []}
        registry_dir = out / "registry"
        shutil.rmtree(registry_dir, ignore_errors=True)  # each demo run starts from an empty registry
        store = open_store(registry_dir)
        stack.callback(store.close)
        say(f"   embedded registry (Oxigraph) in {registry_dir}")

        # 2. model ------------------------------------------------------------------------------
        models_dir = out / "models"
        card = _build_or_reuse(uc, models_dir, seed=opts.seed, quick=opts.quick, say=say)
        model_dir = models_dir / uc.name
        model_iri = add_model(store, model_dir / ARTIFACT_MODEL, model_dir / ARTIFACT_CARD)
        needs = _needs(card)
        say(f"   registered {model_iri} (flash {needs['flash_bytes']} B, RAM {needs['ram_bytes']} B, "
            f"sensors {', '.join(uc.sensors)})")
        report["model"] = {"iri": str(model_iri), "card": card}

        # 3. fleet + live ingestion ---------------------------------------------------------------
        lc = accounts["listener"]
        listener = PresenceListener(store, address, lc, fleet=FLEET)
        stack.enter_context(listener)
        from devices.simulator import FleetSimulator, simulated_ids

        t_enroll = time.perf_counter()
        device_creds = (enroll_device_credentials(broker_dir, simulated_ids(opts.devices, "dev"), fleet=FLEET)
                        if broker_dir is not None else {})
        enroll_seconds = time.perf_counter() - t_enroll
        sim = FleetSimulator(n=opts.devices, use_case=uc.name, address=address, state_root=out / "devices",
                             boards=opts.boards, fleet=FLEET, id_prefix="dev", models_dir=models_dir,
                             samples_per_device=64, telemetry_s=5.0, device_credentials=device_creds, seed=opts.seed)
        stack.callback(sim.stop)
        connected = sim.start(timeout=60)
        if connected < opts.devices:
            raise TinyFleetError(f"only {connected} of {opts.devices} simulated devices connected to {url}")
        if broker_dir is not None:  # the devices were enrolled just now: list every account (no secrets)
            report["broker"]["accounts"] = sorted(list_accounts(broker_dir))
            report["broker"]["enroll_seconds"] = round(enroll_seconds, 3)
        if not listener.wait_for(lambda lst: lst.devices_added >= opts.devices, timeout=60):
            raise TinyFleetError(f"the registry ingested {listener.devices_added} of {opts.devices} "
                                 "Thing Descriptions within 60 s")
        say(f"3. {connected} simulated devices online; the registry ingested {listener.devices_added} "
            "Thing Descriptions from MQTT")

        # 4. matchmaking ----------------------------------------------------------------------------
        match = explain_model(store, model_iri)
        eligible = sorted(_device_id(d) for d in match["eligible"])
        excluded = [{"device": _device_id(d), "reasons": d["reasons"]} for d in match["excluded"]]
        say(f"4. matchmaking: {len(eligible)} eligible, {len(excluded)} excluded")
        for e in excluded:
            say(f"   excluded {e['device']}: {'; '.join(e['reasons'])}")
        report["matchmaking"] = {"eligible": eligible, "excluded": excluded}
        if len(eligible) < 2:
            raise TinyFleetError(f"only {len(eligible)} device(s) can run {uc.name}; need at least 2 "
                                 f"(board mix {opts.boards!r})")

        # 5. federated meta-learning -----------------------------------------------------------------
        initial = initial_parameters(uc.name, models_dir=models_dir, seed=opts.seed)
        runs: dict[str, dict[str, Any]] = {}
        for strategy in ("reptile", "fedavg"):
            say(f"5. {strategy}: {opts.rounds} rounds over MQTT on {len(eligible)} devices")
            runs[strategy] = _federate(opts, strategy, url, out / "runs", models_dir, initial, eligible,
                                       credentials=accounts["server"],
                                       on_round=functools.partial(on_round, strategy) if on_round else None)
        report["runs"] = {k: {kk: vv for kk, vv in v.items() if kk != "final"} for k, v in runs.items()}

        # 6. deploy + lineage ---------------------------------------------------------------------
        reptile = runs["reptile"]
        deployed = _deploy(uc, reptile["final"], model_dir, address, eligible, out, credentials=accounts["deploy"])
        new_iri = add_model(store, deployed["path"], deployed["card"])
        record_lineage(store, new_iri, reptile["run_id"], len(reptile["rounds"]), eligible, "tinyreptile",
                       reptile["started"], reptile["ended"], parent_model=model_iri)
        say(f"6. deployed {deployed['artifact']} ({deployed['sha256'][:12]}) to {len(eligible)} devices: "
            + ", ".join(f"{n} {k}" for k, n in sorted(deployed["outcomes"].items())))
        say(f"   registered version {new_iri} with lineage from run {reptile['run_id']}")
        report["deploy"] = {k: v for k, v in deployed.items() if k not in ("card", "path")}
        report["deploy"]["model_iri"] = str(new_iri)

        # 7. few-shot adaptation of brand-new devices ------------------------------------------------
        say(f"7. {opts.newcomers} brand-new devices adapt with {opts.shots} shots")
        sizes = head_sizes(initial)
        heads = {"reptile": reptile["final"], "fedavg": runs["fedavg"]["final"],
                 "scratch": scratch_head(uc.name, sizes=sizes, seed=opts.seed + 1)}
        backbone_dir = model_dir if (model_dir / ARTIFACT_BACKBONE).is_file() else None
        fewshot = {name: fewshot_curve(h, task=uc.name, shots=opts.shots, n_devices=opts.newcomers,
                                       seed=opts.seed + 7, models_dir=backbone_dir)
                   for name, h in heads.items()}
        report["fewshot"] = fewshot

    # 8. plots + report (everything above is stopped by now) -------------------------------------------
    metric = "loss"
    curves = {name: [float(v) for v in fs["loss_mean"]] for name, fs in fewshot.items()}
    report["plots"] = [str(p) for p in (
        plots.learning_curve(_curve_rows(runs["reptile"]["rounds"]), out / "learning_curve.png",
                             title=f"Reptile on {uc.name}: mean device loss per round"),
        plots.few_shot(curves, out / "few_shot.png", metric=metric,
                       title=f"{uc.name}: new devices, {opts.shots} shots"),
        plots.bytes_per_round({k: v["rounds"] for k, v in runs.items()}, out / "bytes_per_round.png"),
    )]
    report["summary"] = _summary(report, curves)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["ended"] = _now()
    (out / "report.json").write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    return report


# ------------------------------------------------------------------------------------------------ steps
def _build_or_reuse(uc: Any, models_dir: Path, *, seed: int, quick: bool, say: Say) -> dict[str, Any]:
    d = models_dir / uc.name
    card_path = d / ARTIFACT_CARD
    complete = card_path.is_file() and (d / ARTIFACT_MODEL).is_file() and (
        not (d / ARTIFACT_BACKBONE).is_file() or (d / ARTIFACT_BACKBONE_KERAS).is_file())
    if complete:
        say(f"2. reusing the built {uc.name} model in {card_path.parent}")
        return json.loads(card_path.read_text())
    say(f"2. building the {uc.name} model (Keras -> full int8, TFLM arena measured)...")
    t0 = time.perf_counter()
    card = uc.build(models_dir, seed=seed, quick=quick)
    say(f"   built in {time.perf_counter() - t0:.1f} s")
    return card


def _needs(card: dict[str, Any]) -> dict[str, int]:
    model = card.get("model", card)
    return {"flash_bytes": int(model.get("flash_bytes", 0)), "ram_bytes": int(model.get("arena_bytes", 0))}


def _device_id(item: dict[str, Any]) -> str:
    return str(item.get("name") or str(item["iri"]).rsplit(":", 1)[-1].rsplit("/", 1)[-1])


def _federate(opts: DemoOptions, strategy: str, url: str, runs_dir: Path, models_dir: Path,
              initial: dict[str, np.ndarray], eligible: list[str], *, credentials: Credentials | None = None,
              on_round: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    run_id = f"demo-{opts.task}-{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    params: dict[str, Any] = {"fraction_train": 1.0}
    config = RunConfig(run_id=run_id, task=opts.task, strategy=strategy, rounds=opts.rounds, seed=opts.seed,
                       strategy_params=params, quorum=len(eligible),
                       quorum_timeout=30.0, round_timeout=30.0, fleet=FLEET, broker=url, simulate=0)
    run_dir = runs_dir / run_id
    started = _now()
    with fleet_grid(config, run_dir, models_dir=models_dir, allow=set(eligible), credentials=credentials) as grid:
        result = Coordinator(config, grid, run_dir, on_round=on_round).start(initial)
    final, _ = load_checkpoint(run_dir / FINAL_FILE)
    return {"run_id": run_id, "run_dir": str(run_dir), "rounds": result["rounds"], "started": started,
            "ended": _now(), "final_sha256": result["final_sha256"], "final": final}


def _deploy(uc: Any, final: dict[str, np.ndarray], model_dir: Path, address: Any, eligible: list[str],
            out: Path, *, credentials: Credentials | None) -> dict[str, Any]:
    from firmware_models.build import score
    from firmware_models.interpreters import TFLiteModel
    from firmware_models.tflite_inspect import inspect_tflite

    probe = uc.devices("heldout", 8, samples_per_device=32, seed=1234)
    x = np.concatenate([d.x for d in probe])
    y = np.concatenate([d.y for d in probe])
    path = package_federated_model(model_dir, final, x, out / "deployed" / ARTIFACT_MODEL)
    data = path.read_bytes()
    report = inspect_tflite(path)
    int8 = score(TFLiteModel.from_bytes(data).predict(x), y, uc.kind)
    card = {"name": f"{uc.name}-federated", "task": uc.name, "kind": uc.kind, "sensors": list(uc.sensors),
            "description": f"{uc.name}: backbone + head learned by federated Reptile over the demo fleet",
            "metrics": {"int8": int8}}
    result = rollout(data, eligible, address=address, fleet=FLEET, credentials=credentials, client_id=DEPLOY_ACCOUNT,
                     artifact=ARTIFACT_MODEL, arena_bytes=report.arena_bytes, timeout=60)
    return {"artifact": ARTIFACT_MODEL, "sha256": report.sha256, "flash_bytes": report.flash_bytes,
            "arena_bytes": report.arena_bytes, "outcomes": result.outcomes, "card": card, "path": path}


def _curve_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"round": r["round"], "train_loss": r.get("train_loss"), "eval_loss": r.get("eval_loss")} for r in rounds]


def _summary(report: dict[str, Any], curves: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for name, ys in curves.items():
        fs = report["fewshot"][name]
        metric = [float(v) for v in fs.get("metric_mean") or []]
        rounds = report["runs"].get(name, {}).get("rounds", [])
        rows.append({"init": name, "loss_0_steps": ys[0], "loss_5_steps": ys[min(5, len(ys) - 1)],
                     "loss_10_steps": ys[-1], "metric": fs.get("metric"),
                     "metric_10_steps": metric[-1] if metric else None,
                     "bytes_up": sum(int(r.get("bytes_up") or 0) for r in rounds),
                     "bytes_down": sum(int(r.get("bytes_down") or 0) for r in rounds)})
    return rows


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

