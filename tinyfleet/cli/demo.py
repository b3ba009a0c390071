"""`tinyfleet demo`: the end-to-end demo (what the README's `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from firmware_models.quiet import stdout_to_stderr
from tinyfleet.cli.output import JSON_HELP, err, print_json, progress, quiet_logs, table
from tinyfleet.cli.serve import serve_demo_output


def demo(
    out: Annotated[Path, typer.Option(help="Output directory (models cache, registry, runs, plots, report).",
                                      file_okay=False)] = Path("demo-out"),
    task: Annotated[str, typer.Option(help="Use case: sine, characters, keywords, presence.")] = "sine",
    quick: Annotated[bool, typer.Option(help="Small fleet and few rounds (about a minute).")] = False,
    devices: Annotated[int | None, typer.Option(help="Simulated devices (default 50; 16 with --quick).",
                                                min=2, max=2000)] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds per strategy (default 100; 8 with --quick).",
                                               min=1, max=10000)] = None,
    broker: Annotated[str | None, typer.Option(help="Use this broker (mqtt://host:port) instead of a private "
                                                    "Mosquitto.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of data, sampling and initial heads.", min=0)] = 0,
    insecure: Annotated[bool, typer.Option("--insecure", help="Leave the private broker open (debugging only; "
                                           "by default it refuses anonymous clients).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log Flower's and the devices' messages.")] = False,
    serve: Annotated[bool, typer.Option("--serve", help="At the end, serve the dashboard of the demo's registry "
                                        "and runs until Ctrl-C.")] = False,
    serve_port: Annotated[int, typer.Option("--serve-port", min=0, max=65535, help="Port for --serve.")] = 8080,
) -> None:
    """Run the end-to-end demo: broker, registry, model, fleet, matchmaking, Reptile vs FedAvg,
    safe deploy with lineage, few-shot adaptation of new devices, plots and report.json.

    Example: tinyfleet demo --quick --out demo-out
    """
    from devices.link.address import parse_broker_url
    from firmware_models.usecases import get_use_case
    from tinyfleet import config
    from tinyfleet.demo import DemoOptions, run_demo

    quiet_logs(verbose)
    broker = config.setting("broker", broker)
    if broker is not None:
        parse_broker_url(broker)
    get_use_case(task)  # unknown names fail before anything starts
    kw: dict[str, Any] = {"task": task, "broker": broker, "seed": seed, "devices": devices, "rounds": rounds,
                          "insecure": insecure}
    opts = (DemoOptions.quick_defaults(out, **kw) if quick
            else DemoOptions(out=out, **{k: v for k, v in kw.items() if v is not None}))

    def say(line: str) -> None:
        if not json_out:
            err.print(line, highlight=False)

    with progress(enabled=not json_out) as bar:
        tasks: dict[str, Any] = {}

        def on_round(strategy: str, rec: dict[str, Any]) -> None:
            if strategy not in tasks:
                tasks[strategy] = bar.add_task(strategy, total=opts.rounds)
            loss = rec.get("loss")
            bar.update(tasks[strategy], completed=rec["round"],
                       description=f"{strategy:8s} round {rec['round']:3d}  replies {rec.get('replies')}  "
                                   f"loss {loss if loss is None else f'{loss:.4g}'}  "
                                   f"bytes {int(rec.get('bytes_up') or 0) + int(rec.get('bytes_down') or 0)}")

        with stdout_to_stderr():
            report = run_demo(opts, say=say, on_round=on_round)

    if json_out:
        print_json({k: report[k] for k in ("broker", "summary", "matchmaking", "deploy", "plots", "seconds")}
                   | {"report": str(out / "report.json")})
        if serve:
            serve_demo_output(out, port=serve_port)
        return
    metric = report["summary"][0].get("metric") or "metric"
    table(f"few-shot {task}: mean loss of {opts.newcomers} new devices ({opts.shots} shots)",
          ["init", "loss, 0 steps", "5 steps", "10 steps", f"{metric}, 10 steps", "bytes up", "bytes down"],
          [[r["init"], f"{r['loss_0_steps']:.4g}", f"{r['loss_5_steps']:.4g}", f"{r['loss_10_steps']:.4g}",
            "-" if r["metric_10_steps"] is None else f"{r['metric_10_steps']:.4g}",
            r["bytes_up"], r["bytes_down"]] for r in report["summary"]])
    err.print(f"plots: {', '.join(report['plots'])}\nreport: {out / 'report.json'} "
              f"({report['seconds']} s)", highlight=False)
    if serve:
        serve_demo_output(out, port=serve_port)
