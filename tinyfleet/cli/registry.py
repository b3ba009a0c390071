"""`tinyfleet registry`: the semantic registry of models and devices.

Every command takes `--store DIR` (embedded Oxigraph, default under the user's data dir) or
`--endpoint URL` (+ `--update-endpoint`, `--user`; password from TINYFLEET_REGISTRY_PASSWORD) and
`--json`. Errors are one `error: ...` line on stderr (a SHACL report adds one line per violation)
and exit code 1; nothing is written by a command that fails.
"""

from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from tinyfleet import config
from tinyfleet.cli.output import JSON_HELP, err, print_json, run_until, table

app = typer.Typer(help="Semantic registry: add models and devices, match them, query the knowledge graph.",
                  no_args_is_help=True)

StoreOpt = Annotated[Path | None, typer.Option("--store", help="Embedded store directory (default: config/env "
                                                  "`registry`, else the user data dir).", file_okay=False)]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint", help="SPARQL 1.1 query endpoint URL (remote store; "
                                                    "default: config/env `endpoint`).")]
UpdateOpt = Annotated[str | None, typer.Option("--update-endpoint", help="SPARQL update URL (default: config/env "
                                                  "`update_endpoint`, else --endpoint).")]
UserOpt = Annotated[str | None, typer.Option("--user", help="HTTP user; password from TINYFLEET_REGISTRY_PASSWORD.")]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
FileArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


class ExportFormat(StrEnum):
    turtle = "turtle"
    json_ld = "json-ld"
    nt = "nt"


def _open(store: Path | None, endpoint: str | None, update_endpoint: str | None, user: str | None) -> Any:
    """The registry every command uses: flags, else TINYFLEET_* variables, else tinyfleet.toml (`tinyfleet.config`)."""
    from registry.store import open_store

    store = config.path_setting("registry", store)
    endpoint = config.setting("endpoint", endpoint)
    update_endpoint = config.setting("update_endpoint", update_endpoint)
    auth = None
    if user:
        auth = (user, os.environ.get("TINYFLEET_REGISTRY_PASSWORD", ""))
    return open_store(store, endpoint=endpoint, update_endpoint=update_endpoint, auth=auth)


@app.command("add-model")
def add_model(file: FileArg,
              card: Annotated[Path | None, typer.Option(
                  "--card", exists=True, dir_okay=False,
                  help="Model card JSON (name, task, metrics, sensors...).")] = None,
              allow_static_arena: Annotated[bool, typer.Option(
                  "--allow-static-arena", help="If TFLite Micro cannot run the model, register it with the static "
                                               "arena estimate (marked as an estimate in the graph).")] = False,
              store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
              user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Inspect a .tflite (TFLite Micro arena measured) and add or replace its description.

    The same file added again under another name keeps both names (the second as an alias).

    Example: tinyfleet registry add-model models/sine/model.tflite --card models/sine/card.json
    """
    from registry.ingest_model import add_model as _add
    from registry.questions import model_summary

    with _open(store, endpoint, update_endpoint, user) as st:
        iri = _add(st, file, card, allow_static_arena=allow_static_arena)
        row = model_summary(st, iri)
    result = {"iri": str(iri), "name": row["name"], "aliases": row["aliases"], "ram_needed_bytes": row["ram"],
              "ram_method": row["method"], "flash_needed_bytes": row["flash"]}
    if json_out:
        print_json(result)
    else:
        how = "arena" if row["method"] == "measured" else "static arena estimate"
        also = f", also named {', '.join(row['aliases'])}" if row["aliases"] else ""
        err.print(f"added model {result['name']} <{iri}> ({how} {row['ram']} B, flash {row['flash']} B{also})")


@app.command("add-device")
def add_device(td: FileArg, store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
               user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Add or replace a device from its W3C WoT Thing Description (JSON).

    Example: tinyfleet registry add-device td/dev-001.json --json
    """
    from registry.ingest_device import add_device as _add

    with _open(store, endpoint, update_endpoint, user) as st:
        iri = _add(st, td)
    if json_out:
        print_json({"iri": str(iri)})
    else:
        err.print(f"added device <{iri}>")


@app.command("import")
def import_(file: FileArg,
            base: Annotated[str | None, typer.Option(
                "--base", help="IRI to resolve relative IRIs against when the file declares no @base.")] = None,
            drop_relative: Annotated[bool, typer.Option(
                "--drop-relative", help="Leave out triples whose relative IRI has no base (default: refuse the "
                                        "file).")] = False,
            store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
            user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Import Turtle / JSON-LD (also TinyML-schema style graphs of either generation) atomically.

    Blank nodes become IRIs in a namespace of the graph's own, legacy TinyML-schema terms get their
    w3id twins, published kB figures become byte figures; all or nothing.

    Example: tinyfleet registry import tinyml-kg.ttl --store ./reg
    """
    from registry.interop import import_file

    with _open(store, endpoint, update_endpoint, user) as st:
        n = import_file(st, file, base=base, drop_relative=drop_relative)
        total = len(st)
    if json_out:
        print_json({"file": str(file), "triples": n, "store_triples": total})
    else:
        err.print(f"imported {n} triples from {file} (store holds {total})")


@app.command("validate")
def validate(file: FileArg, json_out: JsonOpt = False) -> None:
    """Check a .tflite (+ nothing written), a TD (.json) or a Turtle/JSON-LD file against the shapes.

    Example: tinyfleet registry validate td/dev-001.json
    """
    from registry.exceptions import ValidationFailedError
    from registry.validation import violations

    suffix = file.suffix.lower()
    found: list[str] = []
    try:
        if suffix == ".tflite":
            from registry.ingest_model import describe_model_file

            _, g = describe_model_file(file)
            found = violations(g)
        elif suffix == ".json" and _looks_like_td(file):
            from registry.ingest_device import device_graph, parse_td, read_td

            _, g = device_graph(parse_td(read_td(file), source=str(file)))
            found = violations(g)
        else:
            from registry.interop import prepare

            prepare(file)
    except ValidationFailedError as exc:
        found = exc.violations
    if json_out:
        print_json({"file": str(file), "valid": not found, "violations": found})
    elif not found:
        err.print(f"{file}: valid")
    if found:
        if not json_out:
            raise ValidationFailedError(str(file), found)
        raise typer.Exit(1)


def _looks_like_td(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and ("tinyfleet:board" in doc or str(doc.get("id", "")).startswith("urn:tinyfleet:"))


@app.command("match")
def match(model: Annotated[str | None, typer.Option("--model", help="Model IRI, sha256 or name.")] = None,
          device: Annotated[str | None, typer.Option("--device", help="Device IRI, id or title.")] = None,
          ram: Annotated[str | None, typer.Option("--ram", help="Devices with at least this RAM, e.g. 127kB, 64KiB, "
                                                                "2MB or bytes (no model needed).")] = None,
          flash: Annotated[str | None, typer.Option("--flash", help="Devices with at least this flash.")] = None,
          sensor: Annotated[list[str] | None, typer.Option("--sensor", help="Devices with this sensor kind "
                                                                            "(repeat for several).")] = None,
          explain: Annotated[bool, typer.Option("--explain", help="Also list what was excluded and why.")] = False,
          store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
          user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Devices that can run a model (--model), models that fit a device (--device), or devices for
    ad-hoc requirements (--ram/--flash/--sensor).

    Example: tinyfleet registry match --model sine --explain --json
    Example: tinyfleet registry match --ram 127kB --flash 576kB --sensor camera
    """
    from registry import questions as q
    from registry.exceptions import RegistryUsageError
    from registry.requirements import devices_for_requirements

    adhoc = ram is not None or flash is not None or bool(sensor)
    if [model is not None, device is not None, adhoc].count(True) != 1:
        raise RegistryUsageError("give exactly one of --model, --device, or requirements (--ram/--flash/--sensor)")
    if adhoc and explain:
        raise RegistryUsageError("--explain needs --model or --device")
    with _open(store, endpoint, update_endpoint, user) as st:
        if adhoc:
            rows = devices_for_requirements(st, ram=ram, flash=flash, sensors=sensor or [])
            why = None
        elif model is not None:
            rows = q.devices_for_model(st, model)
            why = q.explain_model(st, model)["excluded"] if explain else None
        else:
            assert device is not None  # exactly one of the two, checked above
            rows = q.models_for_device(st, device)
            why = q.explain_device(st, device)["excluded"] if explain else None
    if json_out:
        print_json({"matches": rows, "excluded": why} if explain else rows)
        return
    if adhoc:
        wanted = [f"RAM >= {ram}" if ram else "", f"flash >= {flash}" if flash else ""] + list(sensor or [])
        title = "devices with " + ", ".join(w for w in wanted if w)
    else:
        title = f"devices that can run {model}" if model is not None else f"models that fit {device}"
    table(title, ["name", "RAM (B)", "needed", "flash (B)", "needed", "sensors"],
          [[r["name"], r["ram_bytes"], r["ram_needed_bytes"], r["flash_bytes"], r["flash_needed_bytes"],
            " ".join(r["sensors"])] for r in rows])
    if why is not None:
        table("excluded", ["name", "why"], [[r["name"], "; ".join(r["reasons"])] for r in why])


@app.command("models")
def models(task: Annotated[str | None, typer.Option("--task", help="The model's task (e.g. keywords; "
                                                                    "published graphs: classification).")] = None,
           sensor: Annotated[list[str] | None, typer.Option("--sensor", help="Models that consume this sensor "
                                                                             "kind (repeat for several).")] = None,
           ram: Annotated[str | None, typer.Option("--ram", help="Models that need at most this RAM "
                                                                 "(e.g. 127kB).")] = None,
           flash: Annotated[str | None, typer.Option("--flash", help="Models that need at most this flash.")] = None,
           text: Annotated[str | None, typer.Option("--text", help="Name or description contains this "
                                                                   "(case-insensitive).")] = None,
           order_by: Annotated[str, typer.Option("--order-by", help="name, ram, flash, macs, or a metric such as "
                                                                    "accuracy (best first).")] = "name",
           ascending: Annotated[bool | None, typer.Option("--ascending/--descending",
                                                          help="Override the order's direction.")] = None,
           store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
           user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Models for a task or sensor that fit given RAM/flash, ordered by a metric or a figure.

    Example: tinyfleet registry models --task keywords --order-by accuracy --json
    Example: tinyfleet registry models --sensor camera --ram 127kB --flash 576kB
    """
    from registry.requirements import models_for_requirements

    with _open(store, endpoint, update_endpoint, user) as st:
        rows = models_for_requirements(st, task=task, sensors=sensor or [], ram=ram, flash=flash, text=text,
                                       order_by=order_by, ascending=ascending)
    if json_out:
        print_json(rows)
        return
    metric = rows[0]["metric"] if rows else None
    table("models", ["name", "task", "RAM needed (B)", "flash needed (B)", "MACs", "sensors", metric or "-"],
          [[r["name"], r["task"] or "", r["ram_needed_bytes"], r["flash_needed_bytes"], r["macs"] or "",
            " ".join(r["sensors"]), "" if r["value"] is None else f"{r['value']:.4g}"] for r in rows])


@app.command("query")
def query(file: FileArg, store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
          user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Run a read-only SPARQL query from FILE.rq (updates are refused).

    Example: tinyfleet registry query my-query.rq --json
    """
    from registry.exceptions import RegistryInputError
    from registry.questions import raw_query

    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RegistryInputError(f"{file}: not UTF-8 text") from None
    with _open(store, endpoint, update_endpoint, user) as st:
        result = raw_query(st, text)
    if json_out:
        print_json(result)
    elif result["type"] == "select":
        table(str(file), result["vars"], [[r.get(v, "") for v in result["vars"]] for r in result["rows"]])
    elif result["type"] == "ask":
        typer.echo("true" if result["boolean"] else "false")
    else:
        typer.echo(result["turtle"])


@app.command("search")
def search(text: str, store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
           user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Free-text search over model and device names, ids and descriptions.

    Example: tinyfleet registry search keyword
    """
    from registry.questions import search as _search

    with _open(store, endpoint, update_endpoint, user) as st:
        rows = _search(st, text)
    if json_out:
        print_json(rows)
    else:
        table(f"search: {text}", ["kind", "name", "matched", "iri"],
              [[r["kind"], r["name"], str(r["matched"])[:60], r["iri"]] for r in rows])


@app.command("inventory")
def inventory(store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
              user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Which model version runs where, online or not.

    Example: tinyfleet registry inventory --json
    """
    from registry.questions import inventory as _inventory

    with _open(store, endpoint, update_endpoint, user) as st:
        rows = _inventory(st)
    if json_out:
        print_json(rows)
    else:
        table("fleet inventory", ["device", "online", "last seen", "model", "version", "sha256"],
              [[r["name"], {True: "yes", False: "no", None: "?"}[r["online"]], r["last_seen"] or "",
                r["model_name"] or "", r["model_version"] or "", (r["sha256"] or "")[:12]] for r in rows])


@app.command("lineage")
def lineage(model: str, store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
            user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Which federated runs, rounds and devices produced a model version.

    Example: tinyfleet registry lineage sine-federated --json
    """
    from registry.questions import lineage as _lineage

    with _open(store, endpoint, update_endpoint, user) as st:
        result = _lineage(st, model)
    if json_out:
        print_json(result)
    else:
        table(f"lineage of {model}", ["run", "strategy", "rounds", "started", "ended", "devices", "parent"],
              [[r["run_id"], r["strategy"], r["rounds"], r["started"], r["ended"], len(r["devices"]),
                r["parent_name"] or r["parent"] or ""] for r in result["runs"]])


@app.command("listen")
def listen(broker: Annotated[str | None, typer.Option("--broker", help="mqtt://host:port of the fleet's broker "
                                                                    "(default: config/env `broker`).")] = None,
           fleet: Annotated[str | None, typer.Option("--fleet", help="Fleet to follow; '+' = every fleet (default: "
                                                                   "config/env `fleet`, else '+').")] = None,
           duration: Annotated[float | None, typer.Option(
               "--duration", min=0.0, help="Stop after S seconds (default: until Ctrl-C).")] = None,
           mqtt_user: Annotated[str | None, typer.Option("--mqtt-user", help="MQTT user name (default: config/env "
                                                                        "`username`).")] = None,
           ca: Annotated[Path | None, typer.Option("--ca", exists=True, dir_okay=False,
                                                      help="CA certificate (mqtts).")] = None,
           cert: Annotated[Path | None, typer.Option("--cert", exists=True, dir_okay=False,
                                                        help="Client certificate (mqtts).")] = None,
           key: Annotated[Path | None, typer.Option("--key", exists=True, dir_okay=False,
                                                       help="Client key (mqtts).")] = None,
           credentials: Annotated[Path | None, typer.Option(
               "--credentials", dir_okay=False, help="Server account JSON (username, password, ca, cert, key), "
               "e.g. DIR/security/credentials/<account>.json of `tinyfleet broker start --dir DIR`; overrides "
               "--mqtt-user/--ca/--cert/--key.")] = None,
           store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
           user: UserOpt = None, json_out: JsonOpt = False) -> None:
    """Keep the registry in sync with devices' retained TDs and presence on MQTT, then print counts.

    Why a command of its own: the registry must follow the live fleet (devices that join, leave or
    drop and trigger their Last Will) without any device talking to it directly.
    MQTT password from TINYFLEET_MQTT_PASSWORD (or TINYFLEET_PASSWORD).

    Example: tinyfleet registry listen --broker mqtt://127.0.0.1:1883 --fleet lab --duration 60
    """
    from devices.link.address import Credentials, parse_broker_url
    from devices.wire.topics import check_name
    from registry.exceptions import RegistryError
    from registry.presence import PresenceListener
    from registry.questions import device_counts

    broker = config.setting("broker", broker)
    if not broker:
        raise config.ConfigError("no broker to listen to: pass --broker mqtt://host:port (or set `broker` in "
                                 "tinyfleet.toml / TINYFLEET_BROKER)")
    fleet = str(config.setting("fleet", fleet, default="+"))
    mqtt_user = config.setting("username", mqtt_user)
    credentials = config.path_setting("credentials", credentials)
    address = parse_broker_url(broker)
    if fleet != "+":
        check_name(fleet, what="fleet name")
    if credentials is not None:
        from broker.accounts import load_credentials

        creds = load_credentials(credentials)
    else:
        creds = Credentials(mqtt_user, config.mqtt_password(), ca, cert, key)
    started = time.monotonic()
    with _open(store, endpoint, update_endpoint, user) as st:
        try:
            with PresenceListener(st, address, creds, fleet=fleet) as listener:
                if not json_out:
                    err.print(f"listening on {address.url} for fleet {fleet!r}"
                              + (f" for {duration:g} s" if duration is not None else " (Ctrl-C to stop)"))
                run_until(duration)
        except (OSError, ConnectionError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RegistryError(f"MQTT broker {address.url} unreachable: {reason}") from None
        counts = device_counts(st)
        devices, online = counts["devices"], counts["online"]
    result = {"broker": address.url, "fleet": fleet, "seconds": round(time.monotonic() - started, 3),
              "tds_ingested": listener.devices_added, "presence_updates": listener.presence_updates,
              "rejected": listener.rejected, "rejected_reasons": dict(listener.rejected_reasons),
              "store_devices": devices, "store_devices_online": online}
    if json_out:
        print_json(result)
        return
    table("registry listen", ["TDs ingested", "presence updates", "rejected", "devices in store", "online"],
          [[listener.devices_added, listener.presence_updates, len(listener.rejected), devices, online]])
    for line in listener.rejected:
        err.print(f"rejected: {line}")


@app.command("export")
def export(fmt: Annotated[ExportFormat, typer.Option("--format", help="Serialization.")] = ExportFormat.turtle,
           store: StoreOpt = None, endpoint: EndpointOpt = None, update_endpoint: UpdateOpt = None,
           user: UserOpt = None) -> None:
    """Print the whole registry graph (Turtle, JSON-LD or N-Triples) on stdout.

    Example: tinyfleet registry export --format json-ld > registry.jsonld
    """
    with _open(store, endpoint, update_endpoint, user) as st:
        g = st.triples_graph()
    typer.echo(g.serialize(format=fmt.value))
