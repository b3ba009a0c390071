"""Describe a device from its W3C WoT Thing Description and add it to the registry.

The TD is the one `devices.wire.thing_description` publishes (retained on the device's `td` topic):
TD 1.1 JSON-LD whose board facts use `tinyfleet:` terms (= `tf:`), e.g.
`"tinyfleet:board": {"tinyfleet:mcu": ..., "tinyfleet:ramBytes": ..., "tinyfleet:flashBytes": ...}`,
`"tinyfleet:sensors": [...]`, `"tinyfleet:modelSha256": ...`. It is read as plain JSON, not
expanded as JSON-LD, because its `@context` is a remote URL and the registry works offline.

The device is written in the S3N style of the published TinyML-schema graphs (an `s3n:SmartSensor`
whose `ssn:hasSubSystem` are its sensors and an `s3n:MicroController` with RAM/Flash system
properties) plus `tf:` byte shortcuts for matchmaking.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rdflib import Graph, Literal, URIRef
from rdflib.namespace import RDF, XSD
from rdflib.term import Node

from registry.exceptions import RegistryError, RegistryInputError
from registry.namespaces import OM, S3N, SCHEMA, SOSA, SSN, SSNS, TD, TF, mint_device, mint_model, part
from registry.queries import load_query
from registry.store import RegistryStore
from registry.things import Registration, check_td_id, new_registration, registration_of, thing_graph, write_thing
from registry.validation import validate

_URN = "urn:tinyfleet:device:"
_PREFIXES = ("tinyfleet:", "tf:", "https://w3id.org/tinyfleet/ns#")


def _key(k: str) -> str:
    for p in _PREFIXES:
        if k.startswith(p):
            k = k[len(p):]
            break
    return k.replace("_", "").replace("-", "").lower()


def _find(d: Mapping[str, Any], *names: str) -> Any:
    """Value of the first key of `d` equal to one of `names` once prefixes, case and _- are ignored."""
    wanted = {_key(n) for n in names}
    for k, v in d.items():
        if isinstance(k, str) and _key(k) in wanted:
            return v
    return None


def _int(value: Any, what: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise RegistryInputError(f"{source}: {what} must be a whole number of bytes >= 1, got {value!r}")
    return int(value)


def parse_td(td: Any, *, source: str) -> dict[str, Any]:
    """Pull what the registry needs out of a TD: id, title, board, sensors, model, protocol.

    Raises `RegistryInputError` naming `source` for a TD that is not an object or has no
    usable id or RAM figure.
    """
    if not isinstance(td, Mapping):
        raise RegistryInputError(f"{source}: a Thing Description must be a JSON object")
    tid = td.get("id")
    device_id = None
    if isinstance(tid, str) and tid.startswith(_URN):
        device_id = tid[len(_URN):]
    elif isinstance(td.get("title"), str):
        device_id = td["title"]
    if not device_id:
        raise RegistryInputError(f"{source}: the TD has neither an 'id' urn:tinyfleet:device:<id> nor a 'title'")
    board = _find(td, "board") or {}
    if not isinstance(board, Mapping):
        raise RegistryInputError(f"{source}: 'tinyfleet:board' must be an object")
    ram = _find(board, "ramBytes") if board else None
    ram = ram if ram is not None else _find(td, "ramBytes")
    flash = _find(board, "flashBytes") if board else None
    flash = flash if flash is not None else _find(td, "flashBytes")
    if ram is None:
        raise RegistryInputError(f"{source}: the TD states no RAM size (tinyfleet:board.tinyfleet:ramBytes)")
    sensors = _find(td, "sensors") or []
    if not isinstance(sensors, list) or not all(isinstance(s, str) for s in sensors):
        raise RegistryInputError(f"{source}: 'tinyfleet:sensors' must be a list of strings")
    sha = _find(td, "modelSha256")
    if sha is not None and sha != "" and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise RegistryInputError(f"{source}: 'tinyfleet:modelSha256' must be 64 lowercase hex digits, got {sha!r:.80}")
    protocols = set()
    for section in ("properties", "actions", "events"):
        for aff in (td.get(section) or {}).values() if isinstance(td.get(section), Mapping) else []:
            for form in (aff.get("forms") or []) if isinstance(aff, Mapping) else []:
                href = form.get("href", "") if isinstance(form, Mapping) else ""
                if isinstance(href, str) and "://" in href:
                    protocols.add(href.split("://", 1)[0])
    return {
        "device_id": device_id,
        "title": str(td.get("title") or device_id),
        "description": td.get("description") if isinstance(td.get("description"), str) else None,
        "mcu": _find(board, "mcu") if board else _find(td, "mcu"),
        "cpu": _find(board, "cpu") if board else None,
        "board": _find(board, "title") or _find(board, "name") if board else None,
        "ram_bytes": _int(ram, "RAM", source),
        "flash_bytes": _int(flash, "flash", source),
        "sensors": [s.strip().lower() for s in sensors],
        "model_sha256": sha or None,
        "model_version": _find(td, "modelVersion"),
        "fleet": _find(td, "fleet"),
        "use_case": _find(td, "useCase"),
        "protocols": sorted(protocols) or ["mqtt"],
    }


def device_graph(info: Mapping[str, Any], *, online: bool | None = None,
                 last_seen: datetime | None = None) -> tuple[URIRef, Graph]:
    """The RDF description of one device from `parse_td`'s dict."""
    d = mint_device(str(info["device_id"]))
    g = Graph()
    g.add((d, RDF.type, S3N.SmartSensor))
    g.add((d, RDF.type, TD.Thing))
    g.add((d, RDF.type, SOSA.Platform))
    g.add((d, TD.title, Literal(str(info["title"]))))
    g.add((d, SCHEMA.identifier, Literal(str(info["device_id"]))))
    if info.get("description"):
        g.add((d, TD.description, Literal(str(info["description"]))))
    for key, prop in (("fleet", TF.fleet), ("use_case", TF.useCase), ("board", SCHEMA.model)):
        if info.get(key):
            g.add((d, prop, Literal(str(info[key]))))
    for p in info.get("protocols") or []:
        g.add((d, TF.protocol, Literal(str(p))))
    mcu = part(d, "mcu")
    g.add((d, SSN.hasSubSystem, mcu))
    g.add((mcu, RDF.type, S3N.MicroController))
    if info.get("mcu"):
        g.add((d, TF.mcu, Literal(str(info["mcu"]))))
        g.add((mcu, SCHEMA.name, Literal(str(info["mcu"]))))
    capability = part(d, "mcu", "capability")
    g.add((mcu, S3N.hasSystemCapability, capability))
    for kind, cls, value, shortcut in (("ram", TF.RAM, info.get("ram_bytes"), TF.ramBytes),
                                       ("flash", TF.Flash, info.get("flash_bytes"), TF.flashBytes)):
        if value is None:
            continue
        prop = part(d, "mcu", kind)
        g.add((capability, SSNS.hasSystemProperty, prop))
        g.add((prop, RDF.type, S3N.Memory))
        g.add((prop, RDF.type, cls))
        g.add((prop, SCHEMA.value, Literal(int(value))))
        g.add((prop, SCHEMA.unitCode, OM.byte))
        g.add((d, shortcut, Literal(int(value))))
    for s in info.get("sensors") or []:
        node = part(d, "sensor", s)
        g.add((d, SSN.hasSubSystem, node))
        g.add((node, RDF.type, SOSA.Sensor))
        g.add((node, TF.sensorKind, Literal(s)))
        g.add((d, TF.sensorKind, Literal(s)))
    set_sensor_kinds_summary(g, d)
    sha = info.get("model_sha256")
    if sha:
        model = mint_model(str(sha))
        g.add((d, TF.runsModel, model))
        g.add((mcu, SSN.implements, model))
    if info.get("model_version"):
        g.add((d, TF.modelVersion, Literal(str(info["model_version"]))))
    if online is not None:
        g.add((d, TF.online, Literal(bool(online))))
    if last_seen is not None:
        g.add((d, TF.lastSeen, Literal(last_seen.astimezone(UTC).replace(microsecond=0),
                                        datatype=XSD.dateTime)))
    return d, g


def set_sensor_kinds_summary(g: Graph, device: Node) -> None:
    """Write `tf:sensorKinds`: the device's `tf:sensorKind` values, sorted, unique, space-separated.

    Why a denormalized helper triple: a match returns thousands of devices with their sensor kinds,
    and gathering them with GROUP_CONCAT over ~14 sensor rows per device was most of the query's
    time (docs/results/registry.md). One literal per device is one index lookup. It is derived from
    the `tf:sensorKind` triples of the same description (never written by hand) and replaced with it.
    """
    g.remove((device, TF.sensorKinds, None))
    kinds = sorted({str(k) for k in g.objects(device, TF.sensorKind)})
    if kinds:
        g.add((device, TF.sensorKinds, Literal(" ".join(kinds))))


def read_td(path: Path) -> Any:
    """Read a TD file; one-line error for a missing or non-JSON file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryInputError(f"{path}: Thing Description not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryInputError(f"{path}: Thing Description is not valid JSON ({exc})") from None


def is_device_td(td: Mapping[str, Any]) -> bool:
    """True for a tinyfleet device's TD: it states a board (`tinyfleet:board`), which the registry
    needs to describe the device; any other TD is kept as a plain Thing."""
    return _find(td, "board") is not None


def td_id_of(td: Mapping[str, Any], device_id: str) -> str:
    """The id under which the directory keeps a device's TD: its own IRI id, else its device URN."""
    tid = td.get("id")
    if isinstance(tid, str):
        try:
            check_td_id(tid)
            return tid
        except RegistryError:
            pass
    return _URN + device_id


def add_device(store: RegistryStore, td: Path | str | Mapping[str, Any], *, source: str | None = None,
               online: bool | None = None, last_seen: datetime | None = None,
               registration: Registration | None = None) -> URIRef:
    """Validate and add (or replace) one device from its TD (a file path or the parsed JSON).

    Presence that the store already holds is kept unless `online`/`last_seen` are given, so a
    re-published TD does not make a device look offline. The TD document itself is kept as the
    directory's record of it (`registry.things`), so `tinyfleet serve` lists every ingested device;
    `registration` (default: created kept, modified now) is that record's WoT registration info.
    """
    if isinstance(td, (str, Path)):
        source = source or str(td)
        td = read_td(Path(td))
    source = source or "Thing Description"
    info = parse_td(td, source=source)
    doc: Mapping[str, Any] = td if isinstance(td, Mapping) else {}  # parse_td refused anything else
    iri = mint_device(str(info["device_id"]))
    if store.ask(load_query("is_a"), {"e": iri, "cls": TF.RevokedDevice}):
        raise RegistryInputError(f"{source}: device {info['device_id']!r} was revoked; its TDs are refused")
    td_id = td_id_of(doc, str(info["device_id"]))
    if registration is None:
        now = datetime.now(UTC)
        registration = new_registration(registration_of(store, td_id), None, now, max_ttl=1.0)
    if online is None or last_seen is None:
        rows = store.select(load_query("device_presence"), {"d": iri})
        if rows:
            known_online, seen = rows[0].get("online"), rows[0].get("seen")
            if online is None and isinstance(known_online, Literal):
                online = bool(known_online.toPython())
            if last_seen is None and isinstance(seen, Literal):
                value = seen.toPython()
                last_seen = value if isinstance(value, datetime) else None
    _, g = device_graph(info, online=online, last_seen=last_seen)
    thing, record, tg = thing_graph(doc, td_id, registration)
    g += tg
    g.add((thing, TF.describesDevice, iri))
    validate(g, source=source)
    write_thing(store, g, thing, record, owners=[iri])
    return iri


def set_presence(store: RegistryStore, device_id: str, *, online: bool, seen: datetime | None = None) -> bool:
    """Record a device's presence (one atomic update); False when the device is not registered."""
    d = mint_device(device_id)
    if not store.ask(load_query("is_a"), {"e": d, "cls": S3N.SmartSensor}):
        return False
    seen = seen or datetime.now(UTC)
    g = Graph()
    g.add((d, TF.online, Literal(bool(online))))
    g.add((d, TF.lastSeen, Literal(seen.astimezone(UTC).replace(microsecond=0), datatype=XSD.dateTime)))
    store.write(g, replace_values=[(d, TF.online), (d, TF.lastSeen)])
    return True


def mark_device_revoked(store: RegistryStore, device_id: str, *, when: datetime | None = None) -> bool:
    """Mark a registered device revoked (`tinyfleet devices revoke`): offline, never matched, TDs refused.

    The record stays (lineage and history still point at it). Returns False when the device is not
    registered.
    """
    d = mint_device(device_id)
    if not store.ask(load_query("is_a"), {"e": d, "cls": S3N.SmartSensor}):
        return False
    g = Graph()
    g.add((d, RDF.type, TF.RevokedDevice))
    g.add((d, TF.online, Literal(False)))
    g.add((d, TF.lastSeen, Literal((when or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0),
                                   datatype=XSD.dateTime)))
    store.write(g, replace_values=[(d, TF.online), (d, TF.lastSeen)])
    return True
