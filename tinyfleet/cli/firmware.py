"""`tinyfleet firmware generate`: a firmware project for a board, from a registry match."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tinyfleet import config
from tinyfleet.cli.output import JSON_HELP, err, print_json, table

app = typer.Typer(help="Generate firmware projects (C learner, codec and agent; TFLite Micro) for boards.",
                  no_args_is_help=True)


@app.command()
def generate(
    model: Annotated[str, typer.Option("--model", help="Registered model version: IRI, sha256 or name.")],
    board: Annotated[str, typer.Option("--board", help="Registered device to build for: IRI, id or title.")],
    out: Annotated[Path, typer.Option("--out", help="Project folder to write (must be new or empty).",
                                      file_okay=False)],
    models: Annotated[Path, typer.Option("--models", help="Built model folder (`tinyfleet models build` output): "
                                         "the folder of the model, or its parent.", file_okay=False)] = Path("models"),
    fleet: Annotated[str | None, typer.Option(help="Fleet name (default: the device's fleet in the registry).")] = None,
    broker: Annotated[str | None, typer.Option(help="Broker URL the device joins (default: config, else "
                                                    "mqtt://localhost:1883).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Say why the board cannot run the model, or how it "
                                          "fits when it can.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing project folder.")] = False,
    store: Annotated[Path | None, typer.Option("--store", help="Embedded registry store directory.",
                                               envvar="TINYFLEET_REGISTRY_STORE", file_okay=False)] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="SPARQL 1.1 query endpoint URL (remote store).",
                                                 envvar="TINYFLEET_REGISTRY_ENDPOINT")] = None,
    update_endpoint: Annotated[str | None, typer.Option("--update-endpoint", help="SPARQL update URL.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="HTTP user; password from "
                                             "TINYFLEET_REGISTRY_PASSWORD.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write a firmware project for BOARD running MODEL, if the registry says the board can run it.

    Cortex-M boards get an Arduino/PlatformIO project (TFLite Micro for the backbone, the C learner
    for the head, the MQTT agent; `make host-test`, `make size`); Linux boards get the libmosquitto
    agent. The project is recorded in the registry (PROV-O: model version -> project -> board).
    Example: tinyfleet firmware generate --model sine --board dev-001 --models models --out fw/dev-001 --json
    """
    from registry.store import open_store
    from tinyfleet.firmware import generate as _generate

    url = str(config.setting("broker", broker) or "mqtt://localhost:1883")
    auth = (user, os.environ.get("TINYFLEET_REGISTRY_PASSWORD", "")) if user else None
    with open_store(store, endpoint=endpoint, update_endpoint=update_endpoint, auth=auth) as st:
        project = _generate(st, model=model, board=board, models_dir=models, out=out, fleet=fleet, broker=url,
                            force=force, explain=explain)
    doc = project.to_json()
    if json_out:
        print_json(doc)
        return
    if explain:
        m = project.match
        err.print(f"{board} can run {model}: RAM {m.get('ram_bytes')} B >= {m.get('ram_needed_bytes')} B needed, "
                  f"flash {m.get('flash_bytes')} B >= {m.get('flash_needed_bytes')} B needed")
    table(f"firmware project {project.project_id}", ["key", "value"],
          [["folder", doc["out"]], ["family", doc["family"]], ["registry IRI", doc["iri"]],
           ["TFLM ops", ", ".join(doc["ops"])],
           ["arena", f"{doc['arena_bytes']} B ({doc['arena_measured_bytes']} measured + {doc['arena_margin_bytes']})"],
           ["head", "-".join(map(str, doc["head"]))], ["learner RAM", f"{doc['learner_ram_bytes']} B"]])
    err.print(f"next: make -C {project.out} host-test size")
