"""`tinyfleet federate run|resume|status`: federated (meta-)learning over MQTT with Flower strategies."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from federation.coordinator import Coordinator, RunConfig, read_status
from federation.exceptions import CheckpointError
from firmware_models.quiet import stdout_to_stderr
from tinyfleet.cli.output import JSON_HELP, err, print_json, progress, quiet_logs, table

app = typer.Typer(
    help="Federated meta-learning over MQTT (Reptile, TinyMetaFed, FedAvg).\n\n"
    "Example: tinyfleet federate run --task sine --strategy reptile --rounds 20 --simulate 8 --json",
    no_args_is_help=True,
)


class Mode(StrEnum):
    sync = "sync"
    async_ = "async"


class StrategyName(StrEnum):
    reptile = "reptile"
    tinymetafed = "tinymetafed"
    fedavg = "fedavg"


RunDir = Annotated[Path, typer.Argument(help="Run directory (printed by `federate run`, e.g. runs/sine-reptile-...).",
                                        file_okay=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
CredentialsOpt = Annotated[Path | None, typer.Option(
    "--credentials", dir_okay=False, help="Server account JSON (username, password, ca, cert, key) for --broker, "
    "e.g. DIR/security/credentials/fleet-server.json of `tinyfleet broker start --dir DIR`.")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Without --broker: leave the private broker open "
                                           "(debugging only; by default it is secured).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log Flower's and the Grid's messages on stderr.")]


@app.command()
def run(
    task: Annotated[str, typer.Option(help="Use case: sine, characters, keywords, presence.")],
    strategy: Annotated[StrategyName, typer.Option(help="Server strategy.")] = StrategyName.reptile,
    rounds: Annotated[int, typer.Option(help="Federated rounds.", min=1, max=100000)] = 10,
    simulate: Annotated[int, typer.Option(help="Start N simulated devices (and, without --broker, a private "
                                               "Mosquitto) for a self-contained run.", min=0)] = 0,
    broker: Annotated[str | None, typer.Option(help="Broker URL mqtt://host:port; without --simulate the run "
                                                    "uses the devices present there.")] = None,
    out: Annotated[Path, typer.Option(help="Parent directory of run directories.", file_okay=False)] = Path("runs"),
    run_id: Annotated[str | None, typer.Option(help="Run id (default: <task>-<strategy>-<time>).")] = None,
    fleet: Annotated[str, typer.Option(help="Fleet name (topic level).")] = "default",
    models: Annotated[Path | None, typer.Option(help="Built model folder (head.npz, backbone.tflite).",
                                                file_okay=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling, devices' data and initial head.", min=0)] = 0,
    local_steps: Annotated[int, typer.Option(help="Online SGD steps per device and round (Reptile default).",
                                             min=1)] = 50,
    lr: Annotated[float, typer.Option(help="Device learning rate (Reptile default).", min=0.0)] = 0.02,
    epsilon: Annotated[float, typer.Option(help="Reptile outer step size at round 1.")] = 1.0,
    epsilon_floor: Annotated[float, typer.Option(help="Reptile step size the schedule anneals toward.")] = 0.0,
    serial: Annotated[bool, typer.Option(help="One device per round (TinyReptile).")] = False,
    fraction: Annotated[float, typer.Option(help="Fraction of present devices sampled per round.",
                                            min=0.0, max=1.0)] = 1.0,
    top_p: Annotated[float, typer.Option(help="TinyMetaFed: fraction of update entries uploaded.")] = 0.05,
    reconstruct_steps: Annotated[int, typer.Option(help="TinyMetaFed: local-layer re-fit steps.", min=0)] = 5,
    round_timeout: Annotated[float, typer.Option(help="Seconds to wait for replies per phase.", min=0.01)] = 30.0,
    min_replies: Annotated[int, typer.Option(help="Fewer valid replies keep the old parameters.", min=1)] = 1,
    quorum: Annotated[int | None, typer.Option(help="Devices required before round 1 (default: --simulate N, "
                                                    "else 1).", min=1)] = None,
    quorum_timeout: Annotated[float, typer.Option(help="Seconds to wait for the quorum.", min=0.0)] = 30.0,
    samples_per_device: Annotated[int, typer.Option(help="Simulated devices' local samples.", min=2)] = 64,
    gateways: Annotated[int, typer.Option(help="Hierarchical run on Flower's deployment runtime: a SuperLink and "
                                               "N gateway SuperNodes, each with its own site broker and 1/N of the "
                                               "--simulate devices (docs/scaling.md).", min=0, max=64,
                                          rich_help_panel="Scale-out")] = 0,
    mode: Annotated[Mode, typer.Option(help="sync: rounds wait for every sampled device; async: FedBuff-style, "
                                            "aggregate as soon as --buffer replies are in.",
                                       rich_help_panel="Scale-out")] = Mode.sync,
    buffer: Annotated[int, typer.Option(help="Async: device replies per aggregation (hierarchical: per gateway "
                                             "answer; 0: a tenth of the devices).", min=0,
                                        rich_help_panel="Scale-out")] = 0,
    max_staleness: Annotated[int, typer.Option(help="Async: replies more model versions old are discarded.", min=0,
                                               rich_help_panel="Scale-out")] = 8,
    staleness_alpha: Annotated[float, typer.Option(help="Async: a reply TAU versions old weighs (1+TAU)^-ALPHA.",
                                                   min=0.0, rich_help_panel="Scale-out")] = 0.5,
    intermittent: Annotated[float, typer.Option(help="Simulated devices that sleep most of the time (fraction).",
                                                min=0.0, max=1.0, rich_help_panel="Scale-out")] = 0.0,
    online: Annotated[float, typer.Option(help="An intermittent device is online ONLINE s of every PERIOD s.",
                                          min=0.0, rich_help_panel="Scale-out")] = 60.0,
    period: Annotated[float, typer.Option(help="Duty-cycle period of intermittent devices (s).", min=0.0,
                                          rich_help_panel="Scale-out")] = 180.0,
    bridge_to: Annotated[Path | None, typer.Option(help="With --gateways: bridge every site broker's TDs, presence "
                                                        "and telemetry up to the broker running from this directory "
                                                        "(`tinyfleet broker start --dir DIR`).", file_okay=False,
                                                   rich_help_panel="Scale-out")] = None,
    credentials: CredentialsOpt = None,
    insecure: InsecureOpt = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run a federated training; writes run.json, metrics.jsonl, checkpoint.npz and final.npz.

    Example: tinyfleet federate run --task sine --strategy tinymetafed --rounds 5 --simulate 6 --json

    Example: tinyfleet federate run --task sine --rounds 3 --simulate 40 --gateways 2 --json
    """
    from devices.link.address import parse_broker_url
    from federation.session import initial_parameters

    if broker is not None:
        parse_broker_url(broker)  # fail on a bad URL before anything starts
    creds = _load_credentials(credentials)
    rid = run_id or f"{task}-{strategy.value}-{time.strftime('%Y%m%d-%H%M%S')}"
    params: dict[str, Any] = {"fraction_train": fraction}
    if strategy is not StrategyName.fedavg:
        params.update(epsilon=epsilon, epsilon_floor=epsilon_floor, serial=serial)
    if strategy is StrategyName.tinymetafed:
        params.update(top_p=top_p, reconstruct_steps=reconstruct_steps)
    if quorum is None and intermittent > 0:  # asleep devices never all show up: start with most of the awake ones
        quorum = max(1, int(0.8 * simulate * (1 - intermittent * (1 - online / max(period, 1e-9)))))
    config = RunConfig(run_id=rid, task=task, strategy=strategy.value, rounds=rounds, seed=seed,
                       local_steps=local_steps, lr=lr, strategy_params=params, round_timeout=round_timeout,
                       min_replies=min_replies, quorum=quorum or max(simulate, 1), quorum_timeout=quorum_timeout,
                       fleet=fleet, broker=broker, simulate=simulate, samples_per_device=samples_per_device)
    run_dir = out / rid
    if (run_dir / "run.json").exists():
        raise CheckpointError(f"{run_dir} already holds a run; use `tinyfleet federate resume {run_dir}` "
                              "or another --run-id")
    from federation.strategies.registry import build_strategy  # validate parameters before starting anything

    build_strategy(config.strategy, {**params, "local_steps": local_steps, "local_lr": lr}
                   if strategy is not StrategyName.fedavg else params, num_rounds=rounds)
    initial = initial_parameters(task, models_dir=models, seed=seed)
    if gateways or mode is Mode.async_ or intermittent > 0 or bridge_to is not None:
        from tinyfleet.cli.federate_scale import ScaleOptions, execute_scaled

        opts = ScaleOptions(gateways=gateways, mode=mode.value, buffer=buffer, max_staleness=max_staleness,
                            staleness_alpha=staleness_alpha, intermittent=intermittent, online=online, period=period,
                            bridge_to=bridge_to)
        execute_scaled(config, run_dir, initial, opts, models=models, json_out=json_out, verbose=verbose,
                       credentials=creds, secure=not insecure)
        return
    _execute(config, run_dir, models, json_out, verbose, lambda c: c.start(initial), creds, not insecure)


@app.command()
def resume(
    run_dir: RunDir,
    models: Annotated[Path | None, typer.Option(help="Built model folder, as given to `federate run`.",
                                                file_okay=False)] = None,
    credentials: CredentialsOpt = None,
    insecure: InsecureOpt = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Continue an interrupted run from its last checkpoint (same settings, same seed).

    Example: tinyfleet federate resume runs/sine-reptile-20260101-120000 --json
    """
    config = RunConfig.load(run_dir)
    _execute(config, run_dir, models, json_out, verbose, lambda c: c.resume(), _load_credentials(credentials),
             not insecure)


@app.command()
def status(run_dir: RunDir, json_out: JsonOpt = False) -> None:
    """Show a run's progress: rounds done, state, last round's metrics.

    Example: tinyfleet federate status runs/sine-reptile-20260101-120000
    """
    info = read_status(run_dir)
    if json_out:
        print_json(info)
        return
    last = info.get("last") or {}
    rows = [["run", info["run_id"]], ["task", info["task"]], ["strategy", info["strategy"]],
            ["state", info["state"]], ["rounds", f"{info['rounds_done']}/{info['rounds']}"],
            ["last loss", _fmt(last.get("loss"))], ["last replies/failures",
                                                   f"{last.get('replies', '-')}/{last.get('failures', '-')}"]]
    if "final_sha256" in info:
        rows.append(["final sha256", info["final_sha256"]])
    table(f"federated run {info['run_dir']}", ["field", "value"], rows)


def _load_credentials(path: Path | None) -> Any:
    """Read --credentials before anything starts (a bad file is a one-line error)."""
    if path is None:
        return None
    from broker.accounts import load_credentials

    return load_credentials(path)


def _execute(config: RunConfig, run_dir: Path, models: Path | None, json_out: bool, verbose: bool,
             go: Any, credentials: Any = None, secure: bool = True) -> None:
    from federation.session import fleet_grid

    quiet_logs(verbose)
    with progress(enabled=not json_out) as bar:
        task_id = bar.add_task(f"{config.strategy} on {config.task}", total=config.rounds)

        def on_round(record: dict[str, Any]) -> None:
            bar.update(task_id, completed=record["round"],
                       description=f"{config.strategy} on {config.task} loss {_fmt(record.get('loss'))}")

        with stdout_to_stderr(), fleet_grid(config, run_dir, models_dir=models, credentials=credentials,
                                                    secure=secure) as grid:
            result = go(Coordinator(config, grid, run_dir, on_round=on_round))
    summary = {"run_id": result["run_id"], "run_dir": result["run_dir"], "task": config.task,
               "strategy": config.strategy, "rounds": result["rounds"], "final_sha256": result["final_sha256"]}
    if json_out:
        print_json(summary)
        return
    rows = [[r["round"], _fmt(r.get("loss")), r.get("replies"), r.get("failures"), r.get("missing"),
             r.get("bytes_up"), r.get("bytes_down"), r.get("seconds")] for r in result["rounds"]]
    table(f"{config.strategy} on {config.task} ({result['run_dir']})",
          ["round", "loss", "replies", "failures", "missing", "bytes up", "bytes down", "s"], rows)
    err.print(f"final parameters sha256 {result['final_sha256']}")


def _fmt(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("-" if x is None else str(x))
