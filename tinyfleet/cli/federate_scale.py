"""The scale-out half of `tinyfleet federate run`: ``--gateways N``, ``--mode async`` and intermittent devices.

Kept apart from `tinyfleet.cli.federate` so that the flat command stays readable: this module
only checks the option combinations and hands over to `federation.hierarchy.launch` (gateways on
Flower's deployment runtime) or `federation.buffered` (asynchronous rounds on one broker).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import typer

from federation.coordinator import RunConfig
from federation.exceptions import CheckpointError, FederationError
from firmware_models.exceptions import TinyFleetError
from firmware_models.quiet import stdout_to_stderr
from tinyfleet.cli.output import err, print_json, progress, quiet_logs, table


class UsageError(TinyFleetError):
    """A combination of options that cannot work together."""

    exit_code = 2


def finite_float(param: typer.CallbackParam, value: float | None) -> float | None:
    """Typer callback of every float option of `federate run|resume`: NaN and infinity are usage errors.

    Why: Click's range checks compare, and every comparison with NaN is false, so ``--online nan``
    passed ``min=0.0`` and failed later with a traceback (or, ``--staleness-alpha nan``, not at all).
    """
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{param.opts[0] if param.opts else param.name} must be a finite number; got {value}")
    return value


def float_opt(*args: Any, **kwargs: Any) -> Any:
    """`typer.Option` for a float: non-finite values are refused (`finite_float`)."""
    return typer.Option(*args, callback=finite_float, **kwargs)


@dataclass(frozen=True)
class ScaleOptions:
    """The scale-out options of `federate run` (see its --help)."""

    gateways: int = 0
    mode: str = "sync"
    buffer: int = 0
    max_staleness: int = 8
    staleness_alpha: float = 0.5
    intermittent: float = 0.0
    online: float = 60.0
    period: float = 180.0
    bridge_to: Path | None = None

    def save(self, run_dir: Path) -> None:
        """Keep the options with the run (``scale.json``): `federate resume` starts the same kind of run again."""
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = {**asdict(self), "bridge_to": None if self.bridge_to is None else str(self.bridge_to)}
        (run_dir / SCALE_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> ScaleOptions:
        """The options `save` wrote; a file edited into nonsense is a one-line error that names it."""
        kinds: dict[str, tuple[type, ...]] = {"mode": (str,), "bridge_to": (str, type(None))}
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            values = {f.name: doc[f.name] for f in fields(cls) if f.name in doc}
            missing = sorted({f.name for f in fields(cls)} - set(values))
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            for k, v in values.items():
                default = getattr(cls, k)
                ok = kinds.get(k, (int,) if isinstance(default, int) else (int, float))
                if isinstance(v, bool) or not isinstance(v, ok) or (isinstance(v, float) and not math.isfinite(v)):
                    raise ValueError(f"{k} is {v!r}")
            if values.get("bridge_to") is not None:
                values["bridge_to"] = Path(str(values["bridge_to"]))
            return cls(**values)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: unreadable scale-out options ({exc})") from None


SCALE_FILE = "scale.json"
"""The scale-out options of a run, next to its run.json."""


def refuse_registry(registry: str | None, endpoint: str | None) -> None:
    """Scale-out runs sample devices by their TDs on the broker, not by registry records: say so, do not ignore it."""
    if registry is not None or endpoint is not None:
        raise UsageError("--registry/--registry-endpoint select devices in synchronous flat runs only; drop them "
                         "for --gateways, --mode async and --intermittent runs")


def check_options(config: RunConfig, opts: ScaleOptions) -> None:
    """Refuse combinations that cannot work, before anything starts."""
    from federation.buffered import ASYNC_STRATEGIES
    from federation.hierarchy.settings import HIERARCHICAL_STRATEGIES

    if opts.intermittent > 0 and not 0 < opts.online < opts.period:
        raise UsageError(f"--online ({opts.online:g}) must be > 0 and < --period ({opts.period:g})")
    if opts.intermittent > 0 and not config.simulate:
        raise UsageError("--intermittent applies to simulated devices: add --simulate N")
    if opts.mode == "async" and config.strategy not in ASYNC_STRATEGIES:
        raise UsageError(f"--mode async supports --strategy {' or '.join(ASYNC_STRATEGIES)} (TinyMetaFed's sparse "
                         "updates cannot be re-based onto a newer model)")
    if opts.mode == "async" and config.strategy_params.get("serial"):
        raise UsageError("--mode async keeps a task in flight on every idle device; it has no --serial form")
    if opts.mode == "async" and config.strategy_params.get("fraction_train", 1.0) != 1.0:
        raise UsageError("--mode async sends each new version to every idle device; --fraction does not apply "
                         "(limit the devices in flight with a smaller fleet or --buffer)")
    if opts.mode == "async" and not opts.gateways and config.simulate and opts.buffer > config.simulate:
        raise UsageError(f"--buffer {opts.buffer} is more than the --simulate {config.simulate} devices: a version "
                         "is trained at most once per device, so the buffer would never fill")
    if opts.bridge_to is not None and not opts.gateways:
        raise UsageError("--bridge-to joins site brokers to a central one: it needs --gateways N")
    if not opts.gateways:
        return
    if config.broker is not None or not config.simulate:
        raise UsageError("--gateways N starts its own sites: use it with --simulate M and without --broker "
                         "(existing sites: deploy the Flower app yourself, docs/scaling.md)")
    if config.simulate < opts.gateways:
        raise UsageError(f"--simulate {config.simulate} cannot fill {opts.gateways} sites (one device each at least)")
    if config.strategy not in HIERARCHICAL_STRATEGIES:
        raise UsageError(f"--gateways supports --strategy {' or '.join(HIERARCHICAL_STRATEGIES)}: a site's aggregate "
                         f"of {config.strategy} does not compose into the flat update (TinyMetaFed's Top-P uplink "
                         "ends at the gateway; a median of medians is not a median)")
    if config.strategy_params.get("aggregation", "mean") != "mean":
        raise UsageError("--gateways composes site means into the flat mean; a robust --aggregate runs at each site "
                         "alone (run it flat, or per site)")
    if config.strategy_params.get("serial"):
        raise UsageError("--serial (one device per round) has no hierarchical form; drop --gateways")


def resumable_options(run_dir: Path) -> ScaleOptions | None:
    """The scale-out options `run_dir` was started with (None: a plain flat run); refuses what cannot resume.

    Asynchronous runs resume from their last aggregation (`BufferedRun.resume`), flat runs with
    intermittent devices with those devices again; hierarchical runs cannot (yet): say so rather than
    resume them as flat runs.
    """
    from federation.checkpoint import load_checkpoint
    from federation.coordinator import CHECKPOINT_FILE
    from federation.hierarchy.server import STATUS_FILE

    if (run_dir / STATUS_FILE).exists():
        raise UsageError(f"{run_dir} is a hierarchical run (--gateways); it cannot be resumed: start a new run "
                         "from its checkpoint.npz instead")
    opts = ScaleOptions.load(run_dir / SCALE_FILE) if (run_dir / SCALE_FILE).is_file() else None
    if opts is not None and opts.gateways:
        raise UsageError(f"{run_dir} is a hierarchical run (--gateways); it cannot be resumed: start a new run "
                         "from its checkpoint.npz instead")
    if (run_dir / CHECKPOINT_FILE).is_file():
        _, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
        mode = meta.get("mode", "sync")
        if opts is None and mode == "async":
            raise UsageError(f"{run_dir} is an asynchronous run without its {SCALE_FILE} (started by an older "
                             "tinyfleet); it cannot be resumed")
        if opts is not None and opts.mode != mode:
            raise CheckpointError(f"{run_dir / SCALE_FILE} says --mode {opts.mode}, but the checkpoint is of a "
                                  f"--mode {mode} run")
        if mode == "async":  # refuse a broken checkpoint before brokers and devices start
            from federation.buffered import read_progress

            cfg = RunConfig.load(run_dir)
            read_progress(run_dir, cfg.run_id, cfg.seed)
    return opts


def execute_scaled(config: RunConfig, run_dir: Path, initial: dict[str, np.ndarray] | None, opts: ScaleOptions, *,
                   models: Path | None, json_out: bool, verbose: bool, credentials: Any = None,
                   secure: bool = True, broker_dir: Path | None = None) -> None:
    """Run (or, with no `initial`, resume), then print the same summary a flat run prints (plus the scale-out facts)."""
    from federation.hierarchy.settings import HierarchyConfig

    check_options(config, opts)
    # --buffer 0 is resolved where the devices are known (`federation.buffered.default_buffer`)
    settings = HierarchyConfig(run=config, gateways=opts.gateways, mode=opts.mode, buffer=opts.buffer,
                               max_staleness=opts.max_staleness, staleness_alpha=opts.staleness_alpha)
    quiet_logs(verbose)
    with progress(enabled=not json_out) as bar:
        task_id = bar.add_task(f"{config.strategy} on {config.task}", total=config.rounds)

        def on_round(record: dict[str, Any]) -> None:
            bar.update(task_id, completed=record.get("round", 0))

        with stdout_to_stderr():
            if opts.gateways:
                if initial is None:
                    raise UsageError("a hierarchical run cannot be resumed")  # resumable_options says so first
                result = _hierarchical(settings, run_dir, initial, opts, models, secure, on_round)
            else:
                result = _flat(settings, run_dir, initial, opts, models, credentials, secure, on_round, broker_dir)
    summary = {"run_id": result["run_id"], "run_dir": result["run_dir"], "task": config.task,
               "strategy": config.strategy, "mode": opts.mode, "gateways": opts.gateways,
               "rounds": result["rounds"], "final_sha256": result["final_sha256"]}
    for key in ("deployment", "flower"):
        if key in result:
            summary[key] = result[key]
    if json_out:
        print_json(summary)
        return
    rows = [[r["round"], _fmt(r.get("loss")), r.get("replies"), r.get("failures"), r.get("bytes_up"),
             r.get("bytes_down"), r.get("seconds")] for r in result["rounds"]]
    table(f"{config.strategy} on {config.task}, {opts.mode}"
          + (f", {opts.gateways} gateways" if opts.gateways else "") + f" ({result['run_dir']})",
          ["round", "loss", "replies", "failures", "bytes up", "bytes down", "s"], rows)
    err.print(f"final parameters sha256 {result['final_sha256']}")


def _hierarchical(settings: Any, run_dir: Path, initial: dict[str, np.ndarray], opts: ScaleOptions,
                  models: Path | None, secure: bool, on_round: Any) -> dict[str, Any]:
    from federation.hierarchy.deployment import DeviceGroup
    from federation.hierarchy.launch import run_hierarchical

    cfg = settings.run
    central = central_dir = None
    if opts.bridge_to is not None:
        from broker.process import read_state
        from devices.link.address import parse_broker_url

        info = read_state(opts.bridge_to)
        if info is None:
            raise FederationError(f"no broker runs from {opts.bridge_to} (start it with `tinyfleet broker start "
                                  f"--dir {opts.bridge_to}`)")
        central, central_dir = parse_broker_url(info.url), Path(opts.bridge_to)
    opts.save(run_dir)  # so that `federate resume` says what this run is, even before its first round
    group = DeviceGroup(task=cfg.task, samples_per_device=cfg.samples_per_device, models_dir=models,
                        intermittent=opts.intermittent, online_s=opts.online, period_s=opts.period, seed=cfg.seed)
    return run_hierarchical(settings, run_dir, initial=initial, group=group, secure=secure, central=central,
                            central_dir=central_dir, on_round=on_round)


def _flat(settings: Any, run_dir: Path, initial: dict[str, np.ndarray] | None, opts: ScaleOptions,
          models: Path | None, credentials: Any, secure: bool, on_round: Any,
          broker_dir: Path | None) -> dict[str, Any]:
    """A flat run with scale-out options on one broker; `initial` None resumes the run in `run_dir`."""
    from devices.simulator import FaultKnobs
    from federation.coordinator import Coordinator
    from federation.session import fleet_grid

    cfg = settings.run
    if initial is not None:
        if (run_dir / "run.json").exists():
            raise CheckpointError(f"{run_dir} already holds a run; use another --run-id")
        opts.save(run_dir)
    faults = FaultKnobs(intermittent_fraction=opts.intermittent, online_s=opts.online, period_s=opts.period)
    with fleet_grid(cfg, run_dir, models_dir=models, credentials=credentials, secure=secure, faults=faults,
                    broker_dir=broker_dir) as grid:
        if settings.mode == "async":
            from federation.buffered import BufferedRun

            run = BufferedRun(settings, grid, run_dir, on_round=on_round)
            return run.start(initial) if initial is not None else run.resume()
        coordinator = Coordinator(cfg, grid, run_dir, on_round=on_round)
        return coordinator.start(initial) if initial is not None else coordinator.resume()


def _fmt(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("-" if x is None else str(x))
