"""`tinyfleet models`: build, inspect and export full-int8 TFLite models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from firmware_models.c_export import write_c_source_pair
from firmware_models.tflite_inspect import ModelReport, inspect_tflite, read_model_bytes, shape_dtype_str
from firmware_models.usecases import ALL, resolve_names
from tinyfleet.cli.output import JSON_HELP, err, print_json, progress, table

app = typer.Typer(help="Build, inspect and export full-int8 TFLite models.", no_args_is_help=True)

# Paths are checked by our own code (not typer's exists=True) so that a bad file gives the
# project's one-line "error: <file>: <problem>" with exit code 1, as for every other bad input.
ModelPath = Annotated[Path, typer.Argument(help="A .tflite file (ours or third-party).", dir_okay=True)]


@app.command()
def build(
    task: Annotated[str, typer.Argument(help=f"Use case to build, or '{ALL}'.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory; artifacts go to OUT/<task>/.")] = Path("models"),
    seed: Annotated[int, typer.Option(help="Seed for data generation and training.", min=0)] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer devices and epochs (for tests and demos).")] = False,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Train on the real public data set at DATA instead of the generator: characters = "
                       "Omniglot folder, keywords = Speech Commands folder, presence = UCI Occupancy folder "
                       "or CSV.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Train a use case's model, convert it to full int8, measure it and export it with its card.

    Example: tinyfleet models build sine --out models --json
    Real data: tinyfleet models build presence --data occupancy_data/ --out models
    """
    from firmware_models.build import prepare_out_dir
    from firmware_models.usecases import get_use_case
    from firmware_models.usecases.base import DataOptionError

    names = resolve_names(task)  # unknown name -> UnknownUseCaseError (exit 2, lists valid names)
    if data is not None and len(names) > 1:
        raise DataOptionError(f"--data {data}: give one use case, not {task!r} (each reads its own data set)")
    use_cases = [get_use_case(name, data=data) for name in names]
    for use_case in use_cases:
        if use_case.data is not None:
            use_case.load_real()  # bad data fails now, before anything is written to --out
    for name in names:
        prepare_out_dir(out, name)  # a bad --out fails now, not after training
    cards: list[dict[str, Any]] = []
    with progress() as bar:
        for name, use_case in zip(names, use_cases, strict=True):
            job = bar.add_task(f"{name}: start", total=100)

            def report(stage: str, frac: float, _job: Any = job, _name: str = name) -> None:
                bar.update(_job, description=f"{_name}: {stage}", completed=round(100 * frac))

            cards.append(use_case.build(out, seed=seed, quick=quick, progress=report))
    if as_json:
        print_json(cards[0] if len(cards) == 1 else cards)
        return
    table("built models", ["task", "flash B", "arena B", "MACs", "params", "float", "int8", "dir"],
          [[c["task"], c["flash_bytes"], c["arena_bytes"], c["macs"], c["params"],
            _headline(c["metrics"].get("float")), _headline(c["metrics"].get("int8")), out / c["name"]]
           for c in cards])


def _headline(m: dict[str, float] | None) -> str:
    if not m:
        return "-"
    return ", ".join(f"{k}={v:.4g}" for k, v in m.items())


@app.command()
def inspect(
    model: ModelPath,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    no_arena: Annotated[bool, typer.Option("--no-arena", help="Skip the TFLite Micro arena measurement.")] = False,
) -> None:
    """Operators, tensors, quantization, params, MACs, flash, the measured TFLM arena and a static estimate.

    When TFLite Micro cannot run the model (e.g. a hybrid uint8 model), the arena line gives TFLM's
    own reason and the static estimate (greedy plan of tensor lifetimes + TFLM bookkeeping) remains.

    Example: tinyfleet models inspect models/sine/model.tflite --json
    """
    report = inspect_tflite(model, measure_arena=not no_arena)
    if as_json:
        print_json(report.to_dict())
        return
    if report.arena_error:
        typer.echo(f"warning: {report.arena_error} (static arena estimate {report.arena_estimate_bytes} B)", err=True)
    _print_report(report)


def _print_report(r: ModelReport) -> None:
    arena = (f"{r.arena_bytes}" if r.arena_bytes is not None
             else f"n/a ({r.arena_error})" if r.arena_error else "not measured")
    estimate = f"{r.arena_estimate_bytes}" if r.arena_estimate_bytes is not None else "-"
    if r.arena_estimate_bytes is not None and r.arena_bytes:
        estimate += f" ({100.0 * (r.arena_estimate_bytes - r.arena_bytes) / r.arena_bytes:+.1f} % vs measured)"
    table(str(r.source), ["property", "value"], [
        ["flash bytes", r.flash_bytes],
        ["TFLM arena bytes (measured)", arena],
        ["TFLM arena bytes (static estimate)", estimate],
        ["arena reported by TFLM (lower bound)", r.arena_reported_bytes if r.arena_reported_bytes else "-"],
        ["params", r.params],
        ["MACs", r.macs],
        ["operators", len(r.ops)],
        ["inputs", "; ".join(shape_dtype_str(t) for t in r.inputs)],
        ["outputs", "; ".join(shape_dtype_str(t) for t in r.outputs)],
        ["sha256", r.sha256],
    ])
    table("operators (execution order)", ["#", "op", "inputs", "outputs", "MACs"],
          [[o.index, o.op, o.inputs, o.outputs, o.macs] for o in r.ops])


@app.command()
def export(
    model: ModelPath,
    out: Annotated[Path, typer.Option("--out", help="Directory for <name>_model_data.h/.cc.")],
    name: Annotated[str | None, typer.Option("--name", help="C name prefix (default: the file's stem).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write a model as an aligned C array pair (`<name>_model_data.h/.cc`) for firmware.

    Example: tinyfleet models export models/sine/model.tflite --out firmware --name sine
    """
    data = read_model_bytes(model)
    h_path, cc_path = write_c_source_pair(data, out, name or model.stem)
    result = {"header": str(h_path), "source": str(cc_path), "bytes": len(data)}
    if as_json:
        print_json(result)
    else:
        err.print(f"wrote {h_path} and {cc_path} ({len(data)} bytes)")
