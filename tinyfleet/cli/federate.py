"""`tinyfleet federate run|resume|status`: federated (meta-)learning over MQTT with Flower strategies."""

from __future__ import annotations

import contextlib
import math
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from federation.coordinator import Coordinator, RunConfig, read_status
from federation.exceptions import CheckpointError, StrategyParameterError
from federation.signals import sigterm_unwinds
from firmware_models.quiet import stdout_to_stderr
from tinyfleet import config as settings
from tinyfleet.cli.federate_scale import float_opt
from tinyfleet.cli.output import JSON_HELP, err, print_json, progress, quiet_logs, table

app = typer.Typer(
    help="Federated (meta-)learning over MQTT with Flower strategies (Reptile, TinyMetaFed, FedAvg, or any "
    "flwr:<Class> such as flwr:FedMedian).\n\n"
    "Example: tinyfleet federate run --task sine --strategy flwr:FedProx --strategy-arg proximal_mu=0.5 "
    "--rounds 5 --simulate 6 --json",
    no_args_is_help=True,
)


class Mode(StrEnum):
    sync = "sync"
    async_ = "async"


RunDir = Annotated[Path, typer.Argument(help="Run directory (printed by `federate run`, e.g. runs/sine-reptile-...).",
                                        file_okay=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
CredentialsOpt = Annotated[Path | None, typer.Option(
    "--credentials", dir_okay=False, help="Server account JSON (username, password, ca, cert, key) for --broker, "
    "e.g. DIR/security/credentials/fleet-server.json of `tinyfleet broker start --dir DIR`.")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Without --broker: leave the private broker open "
                                           "(debugging only; by default it is secured).")]
BrokerDirOpt = Annotated[Path | None, typer.Option(
    "--broker-dir", file_okay=False, help="Directory of a broker started by `tinyfleet broker start --dir`: its URL "
    "is used (unless --broker), this process gets a server account of its own there (fleet-server-<pid>, so that "
    "concurrent runs do not disconnect each other) and --simulate devices are enrolled there.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log Flower's and the Grid's messages on stderr.")]
AllowUndescribedOpt = Annotated[bool, typer.Option(
    "--allow-undescribed", help="Also sample devices that publish no Thing Description (devices that have one must "
    "still declare the run's use case and enough RAM to train the model).")]
RegistryOpt = Annotated[str | None, typer.Option(
    "--registry", help="Sample by the registry's device records (embedded store directory; fed by `tinyfleet "
    "registry listen`) instead of the retained Thing Descriptions. Default: config key 'registry'.")]
RegistryEndpointOpt = Annotated[str | None, typer.Option(
    "--registry-endpoint", help="As --registry, from a remote SPARQL endpoint. Default: config key 'endpoint'.")]
BrokerTimeoutOpt = Annotated[float | None, float_opt(
    "--broker-timeout", min=0.0, help="Seconds the coordinator keeps reconnecting to a lost broker before it stops "
    "with exit 1 (the run stays resumable); default 60, or what the run was started with.")]


class Aggregation(StrEnum):
    mean = "mean"
    median = "median"
    trimmed_mean = "trimmed-mean"
    krum = "krum"


ROBUST_STRATEGIES = ("fedavg", "reptile", "tinymetafed")
"""The specs `--aggregate` applies to (a flwr:<Class> strategy aggregates its own way, e.g. flwr:FedMedian)."""


@app.command()
@sigterm_unwinds()  # `kill <pid>` unwinds the run: its private broker and devices stop too
def run(
    task: Annotated[str, typer.Option(help="Use case: sine, characters, keywords, presence.")],
    strategy: Annotated[str, typer.Option(help="Server strategy: reptile, tinyreptile, tinymetafed, fedavg, any "
                                               "Flower strategy as flwr:<Class> (e.g. flwr:FedMedian, flwr:FedProx) "
                                               "or your own as package.module:Class.")] = "reptile",
    strategy_arg: Annotated[list[str] | None, typer.Option(
        "--strategy-arg", help="Constructor argument of the strategy, key=value (repeatable; typed as the "
        "parameter's default: int, float, true/false or text), e.g. --strategy-arg proximal_mu=0.5.")] = None,
    rounds: Annotated[int, typer.Option(help="Federated rounds.", min=1, max=100000)] = 10,
    simulate: Annotated[int, typer.Option(help="Start N simulated devices (and, without --broker, a private "
                                               "Mosquitto) for a self-contained run.", min=0)] = 0,
    broker: Annotated[str | None, typer.Option(help="Broker URL mqtt://host:port (default: config/env "
                                                    "`broker`); without --simulate the run uses the devices "
                                                    "present there.")] = None,
    out: Annotated[Path, typer.Option(help="Parent directory of run directories.", file_okay=False)] = Path("runs"),
    run_id: Annotated[str | None, typer.Option(help="Run id (default: <task>-<strategy>-<time>).")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet name (topic level; default: config/env `fleet`, "
                                                   "else 'default').")] = None,
    models: Annotated[Path | None, typer.Option(help="Built model folder (head.npz, backbone.tflite; default: "
                                                     "config/env `models`).", file_okay=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling, devices' data and initial head.", min=0)] = 0,
    local_steps: Annotated[int, typer.Option(help="Online SGD steps per device and round (Reptile default).",
                                             min=1)] = 50,
    lr: Annotated[float, float_opt(help="Device learning rate (Reptile default).", min=0.0)] = 0.02,
    epsilon: Annotated[float | None, float_opt(help="Reptile outer step size at round 1 (default 1; "
                                                       "tinyreptile: its validated default).")] = None,
    epsilon_floor: Annotated[float, float_opt(help="Reptile step size the schedule anneals toward.")] = 0.0,
    schedule: Annotated[str, typer.Option(help="How epsilon anneals: linear, cosine or constant.")] = "linear",
    serial: Annotated[bool, typer.Option(help="One device per round (TinyReptile).")] = False,
    fraction: Annotated[float, float_opt(help="Fraction of present devices sampled per round, in (0, 1].")] = 1.0,
    aggregate: Annotated[Aggregation, typer.Option(
        help="fedavg, reptile, tinymetafed: combine the replies by the strategy's mean, or robustly by Flower's "
        "coordinate-wise median, trimmed mean or Krum (docs/reliability.md, threat model).")] = Aggregation.mean,
    trim: Annotated[float, float_opt(help="--aggregate trimmed-mean: fraction cut at each end, in [0, 0.5).")
                    ] = 0.2,
    malicious: Annotated[int, typer.Option(help="--aggregate krum: devices assumed malicious (Krum's f).",
                                           min=0)] = 1,
    top_p: Annotated[float, float_opt(help="TinyMetaFed: fraction of update entries uploaded.")] = 0.05,
    reconstruct_steps: Annotated[int, typer.Option(help="TinyMetaFed: local-layer SGD re-fit steps (devices "
                                                        "without the closed-form readout, or --readout-lambda 0).",
                                                   min=0)] = 5,
    readout_lambda: Annotated[float, float_opt(help="TinyMetaFed: re-fit the last layer in closed form (ridge "
                                                       "lambda) before training; 0: --reconstruct-steps SGD steps.",
                                                  min=0.0)] = 0.0,
    error_feedback: Annotated[bool, typer.Option(help="TinyMetaFed: devices keep what Top-P left out for the "
                                                      "next round.")] = True,
    downlink: Annotated[str, typer.Option(help="TinyMetaFed: delta-q8 (int8 deltas to what each device holds) "
                                               "or dense.")] = "delta-q8",
    round_timeout: Annotated[float, float_opt(help="Seconds to wait for replies per phase.", min=0.01)] = 30.0,
    min_replies: Annotated[int, typer.Option(help="Fewer valid replies keep the old parameters.", min=1)] = 1,
    quorum: Annotated[int | None, typer.Option(help="Eligible devices required before round 1 (default: --simulate "
                                                    "N, else 1: a run on --broker starts with the first eligible "
                                                    "device; give the fleet's size to wait for all).", min=1)] = None,
    quorum_timeout: Annotated[float, float_opt(help="Seconds to wait for the quorum.", min=0.0)] = 30.0,
    samples_per_device: Annotated[int, typer.Option(help="Simulated devices' local samples.", min=2)] = 64,
    gateways: Annotated[int, typer.Option(help="Hierarchical run on Flower's deployment runtime: a SuperLink and "
                                               "N gateway SuperNodes, each with its own site broker and 1/N of the "
                                               "--simulate devices (docs/scaling.md).", min=0, max=64,
                                          rich_help_panel="Scale-out")] = 0,
    mode: Annotated[Mode, typer.Option(help="sync: rounds wait for every sampled device; async: FedBuff-style, "
                                            "aggregate as soon as --buffer replies are in.",
                                       rich_help_panel="Scale-out")] = Mode.sync,
    buffer: Annotated[int, typer.Option(help="Async: device replies per aggregation (hierarchical: per gateway "
                                             "answer); 0: a tenth of the devices, at least 1 (flat: of those present "
                                             "at the start; hierarchical: of each site's). At most --simulate.",
                                        min=0,
                                        rich_help_panel="Scale-out")] = 0,
    max_staleness: Annotated[int, typer.Option(help="Async: replies more model versions old are discarded.", min=0,
                                               rich_help_panel="Scale-out")] = 8,
    staleness_alpha: Annotated[float, float_opt(help="Async: a reply TAU versions old weighs (1+TAU)^-ALPHA.",
                                                   min=0.0, rich_help_panel="Scale-out")] = 0.5,
    intermittent: Annotated[float, float_opt(help="Simulated devices that sleep most of the time (fraction).",
                                                min=0.0, max=1.0, rich_help_panel="Scale-out")] = 0.0,
    online: Annotated[float, float_opt(help="An intermittent device is online ONLINE s of every PERIOD s.",
                                          min=0.0, rich_help_panel="Scale-out")] = 60.0,
    period: Annotated[float, float_opt(help="Duty-cycle period of intermittent devices (s).", min=0.0,
                                          rich_help_panel="Scale-out")] = 180.0,
    bridge_to: Annotated[Path | None, typer.Option(help="With --gateways: bridge every site broker's TDs, presence "
                                                        "and telemetry up to the broker running from this directory "
                                                        "(`tinyfleet broker start --dir DIR`).", file_okay=False,
                                                   rich_help_panel="Scale-out")] = None,
    broker_timeout: BrokerTimeoutOpt = None,
    credentials: CredentialsOpt = None,
    broker_dir: BrokerDirOpt = None,
    allow_undescribed: AllowUndescribedOpt = False,
    registry: RegistryOpt = None,
    registry_endpoint: RegistryEndpointOpt = None,
    insecure: InsecureOpt = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run a federated training; writes run.json, metrics.jsonl, checkpoint.npz and final.npz.

    Devices are sampled only if their Thing Description declares --task as use case and enough RAM
    to train the model on the device (see docs/protocol.md).

    Example: tinyfleet federate run --task sine --strategy tinymetafed --rounds 5 --simulate 6 --json

    Example: tinyfleet federate run --task sine --rounds 3 --simulate 40 --gateways 2 --json
    """
    from devices.link.address import parse_broker_url
    from federation.session import initial_parameters

    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise StrategyParameterError(f"--fraction must be a number in (0, 1]; got {fraction}")
    broker = settings.setting("broker", broker) if broker_dir is None else broker
    fleet = str(settings.setting("fleet", fleet))
    models = settings.path_setting("models", models)
    if broker is not None:
        parse_broker_url(broker)  # fail on a bad URL before anything starts
    from federation.strategies.registry import build_strategy

    broker = broker or _managed_url(broker_dir)
    creds = _load_credentials(settings.path_setting("credentials", credentials))
    params = _strategy_params(strategy, strategy_arg or [], fraction=fraction, epsilon=epsilon,
                              epsilon_floor=epsilon_floor, serial=serial, top_p=top_p,
                              reconstruct_steps=reconstruct_steps, schedule=schedule,
                              readout_lambda=readout_lambda or None, error_feedback=error_feedback,
                              downlink=downlink)
    params.update(_robust(strategy, aggregate, trim=trim, malicious=malicious))
    rid = run_id or f"{task}-{_slug(strategy)}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = RunConfig(run_id=rid, task=task, strategy=strategy, rounds=rounds, seed=seed,
                       local_steps=local_steps, lr=lr, strategy_params=params, round_timeout=round_timeout,
                       min_replies=min_replies, quorum=quorum or max(simulate, 1), quorum_timeout=quorum_timeout,
                       fleet=fleet, broker=broker, simulate=simulate, samples_per_device=samples_per_device,
                       allow_undescribed=allow_undescribed,
                       broker_timeout=60.0 if broker_timeout is None else broker_timeout)
    scaled = bool(gateways or mode is Mode.async_ or intermittent > 0 or bridge_to is not None)
    if scaled:
        from tinyfleet.cli.federate_scale import ScaleOptions, check_options, refuse_registry

        refuse_registry(registry, registry_endpoint)

        opts = ScaleOptions(gateways=gateways, mode=mode.value, buffer=buffer, max_staleness=max_staleness,
                            staleness_alpha=staleness_alpha, intermittent=intermittent, online=online, period=period,
                            bridge_to=bridge_to)
        check_options(config, opts)  # before any of these values is used
    if quorum is None and intermittent > 0:  # asleep devices never all show up: start with most of the awake ones
        config.quorum = max(1, int(0.8 * simulate * (1 - intermittent * (1 - online / max(period, 1e-9)))))
    run_dir = out / rid
    if (run_dir / "run.json").exists():
        raise CheckpointError(f"{run_dir} already holds a run; use `tinyfleet federate resume {run_dir}` "
                              "or another --run-id")
    from tinyfleet.cli.federate_scale import SCALE_FILE

    if (run_dir / SCALE_FILE).is_file():  # left by a start that failed before run.json: not this run's options
        (run_dir / SCALE_FILE).unlink()
    from federation.coordinator import strategy_defaults

    build_strategy(config.strategy, params, num_rounds=rounds,  # validate parameters before starting anything
                   defaults=strategy_defaults(config))
    initial = initial_parameters(task, models_dir=models, seed=seed)
    if scaled:
        from tinyfleet.cli.federate_scale import execute_scaled

        execute_scaled(config, run_dir, initial, opts, models=models, json_out=json_out, verbose=verbose,
                       credentials=creds, secure=not insecure, broker_dir=broker_dir)
        return
    _execute(config, run_dir, models, json_out, verbose, lambda c: c.start(initial), creds, not insecure,
             broker_dir=broker_dir, registry=(registry, registry_endpoint))


@app.command()
@sigterm_unwinds()
def resume(
    run_dir: RunDir,
    models: Annotated[Path | None, typer.Option(help="Built model folder, as given to `federate run` (default: "
                                                     "config/env `models`).", file_okay=False)] = None,
    broker_timeout: BrokerTimeoutOpt = None,
    credentials: CredentialsOpt = None,
    broker_dir: BrokerDirOpt = None,
    registry: RegistryOpt = None,
    registry_endpoint: RegistryEndpointOpt = None,
    insecure: InsecureOpt = False,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Continue an interrupted run from its last checkpoint (same settings, same strategy, same seed).

    Synchronous runs of always-on devices end with the digest an uninterrupted run would have.

    --mode async runs go on from their last aggregation.

    Hierarchical runs (--gateways) cannot be resumed.

    Example: tinyfleet federate resume runs/sine-reptile-20260101-120000 --json
    """
    from tinyfleet.cli.federate_scale import execute_scaled, resumable_options

    scaled = resumable_options(run_dir)
    config = RunConfig.load(run_dir)
    if broker_dir is not None:  # the managed broker may have restarted on another port
        config.broker = _managed_url(broker_dir)
    if broker_timeout is not None:
        config.broker_timeout = broker_timeout
    models = settings.path_setting("models", models)
    if scaled is not None:  # asynchronous, or with intermittent simulated devices: the same kind of run again
        from tinyfleet.cli.federate_scale import refuse_registry

        refuse_registry(registry, registry_endpoint)
        execute_scaled(config, run_dir, None, scaled, models=models, json_out=json_out, verbose=verbose,
                       credentials=_load_credentials(settings.path_setting("credentials", credentials)),
                       secure=not insecure, broker_dir=broker_dir)
        return
    _execute(config, run_dir, models, json_out, verbose, lambda c: c.resume(),
             _load_credentials(settings.path_setting("credentials", credentials)), not insecure, broker_dir=broker_dir,
             registry=(registry, registry_endpoint))


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


def _strategy_params(spec: str, args: list[str], *, fraction: float, **builtin: Any) -> dict[str, Any]:
    """The constructor arguments run.json records: --strategy-arg values over the options the class takes.

    The Reptile/TinyMetaFed options (--epsilon, --top-p, ...) apply to the strategies that take them;
    --fraction is `fraction_train` of every strategy that has one.
    """
    from federation.strategies.registry import parse_strategy_args, resolve_strategy, strategy_parameters

    takes = strategy_parameters(resolve_strategy(spec))
    params: dict[str, Any] = {"fraction_train": fraction} if "fraction_train" in takes else {}
    if spec in ("reptile", "tinyreptile", "tinymetafed"):
        params.update({k: v for k, v in builtin.items() if k in takes and (v is not None or k == "readout_lambda")})
        if spec == "tinyreptile":
            params.pop("serial", None)  # always serial
    params.update(parse_strategy_args(spec, args))
    return params


def _robust(spec: str, aggregate: Aggregation, *, trim: float, malicious: int) -> dict[str, Any]:
    """The `--aggregate` options as constructor arguments (``aggregation``, ``trim``, ``num_malicious_nodes``)."""
    if spec not in ROBUST_STRATEGIES:
        if aggregate is not Aggregation.mean:
            raise StrategyParameterError(f"--aggregate applies to {', '.join(ROBUST_STRATEGIES)}; {spec} aggregates "
                                         "its own way (Flower's robust strategies are flwr:FedMedian, "
                                         "flwr:FedTrimmedAvg, flwr:Krum)")
        return {}
    out: dict[str, Any] = {"aggregation": aggregate.value}
    if aggregate is Aggregation.trimmed_mean:
        out["trim"] = trim
    if aggregate is Aggregation.krum:
        out["num_malicious_nodes"] = malicious
    return out


def _slug(spec: str) -> str:
    """A run-directory-friendly form of a strategy spec (``flwr:FedMedian`` -> ``flwr-FedMedian``)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in spec)


def _load_credentials(path: Path | None) -> Any:
    """Read --credentials before anything starts (a bad file is a one-line error)."""
    if path is None:
        return None
    from broker.accounts import load_credentials

    return load_credentials(path)


def _registry_describe(store: Any, fleet: str) -> Any:
    """A `federation.selection.Describe` over the registry's records of `fleet`.

    The registry is asked at most every `REGISTRY_REFRESH_S` seconds (the coordinator checks
    eligibility on every poll for devices, and a remote store answers in tens of milliseconds).
    """
    from federation.selection import Description
    from registry.questions import sampling_records

    cache: dict[str, Any] = {"at": -1e9, "by_id": {}}

    def describe(device_id: str) -> Description | None:
        now = time.monotonic()
        if now - cache["at"] > REGISTRY_REFRESH_S:
            cache["by_id"] = {r["id"]: Description(r["use_case"], r["ram_bytes"], source="registry record")
                              for r in sampling_records(store, fleet)}
            cache["at"] = now
        return cache["by_id"].get(device_id)

    return describe


REGISTRY_REFRESH_S = 5.0


def _managed_url(broker_dir: Path | None) -> str | None:
    """The URL of the broker running from `broker_dir` (None without one); a one-line error if none runs."""
    if broker_dir is None:
        return None
    from broker.process import read_state
    from devices.exceptions import DeviceLinkError

    state = read_state(broker_dir)
    if state is None:
        raise DeviceLinkError(f"no broker runs from {broker_dir} (start it with `tinyfleet broker start --dir "
                              f"{broker_dir}`)")
    return state.url


def _execute(config: RunConfig, run_dir: Path, models: Path | None, json_out: bool, verbose: bool,
             go: Any, credentials: Any = None, secure: bool = True, *, broker_dir: Path | None = None,
             registry: tuple[str | None, str | None] = (None, None)) -> None:
    """Run `go` on a Coordinator over the run's grid; with a configured registry, sample by its records."""
    from federation.session import fleet_grid

    if broker_dir is not None:
        from broker.accounts import process_server_account
        from broker.files import is_secured

        if credentials is None and is_secured(broker_dir):
            credentials = process_server_account(broker_dir)
    quiet_logs(verbose)
    path, endpoint = settings.setting("registry", registry[0]), settings.setting("endpoint", registry[1])
    with contextlib.ExitStack() as stack, progress(enabled=not json_out) as bar:
        describe = None
        if path is not None or endpoint is not None:
            from registry.store import open_store

            store = open_store(path, endpoint=endpoint)
            stack.callback(store.close)
            describe = _registry_describe(store, config.fleet)
        task_id = bar.add_task(f"{config.strategy} on {config.task}", total=config.rounds)

        def on_round(record: dict[str, Any]) -> None:
            bar.update(task_id, completed=record["round"],
                       description=f"{config.strategy} on {config.task} loss {_fmt(record.get('loss'))}")

        with stdout_to_stderr(), fleet_grid(config, run_dir, models_dir=models, credentials=credentials,
                                            secure=secure, broker_dir=broker_dir, describe=describe) as grid:
            result = go(Coordinator(config, grid, run_dir, on_round=on_round))
    summary = {"run_id": result["run_id"], "run_dir": result["run_dir"], "task": config.task,
               "strategy": config.strategy, "rounds": result["rounds"], "final_sha256": result["final_sha256"]}
    if json_out:
        print_json(summary)
        return
    rows = [[r["round"], _fmt(r.get("loss")), r.get("replies"), r.get("failures"), r.get("eval_replies"),
             r.get("eval_failures"), r.get("missing"), r.get("bytes_up"), r.get("bytes_down"), r.get("seconds")]
            for r in result["rounds"]]
    table(f"{config.strategy} on {config.task} ({result['run_dir']})",
          ["round", "loss", "replies", "failures", "eval replies", "eval failures", "missing", "bytes up",
           "bytes down", "s"], rows)
    err.print(f"final parameters sha256 {result['final_sha256']}")


def _fmt(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("-" if x is None else str(x))
