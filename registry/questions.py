"""The questions the fleet asks the registry, as functions over any `RegistryStore`.

Each function runs one parametrized query from registry/queries/*.rq and returns plain dicts
(JSON-ready: ints, floats, strings, booleans), so the CLI, the demo and the federation code share
one answer. User text (names, search terms) only ever travels as bound RDF literals.
"""

from __future__ import annotations

from typing import Any

from rdflib import Literal, URIRef
from rdflib.term import Node

from registry.exceptions import AmbiguousNameError, ReadOnlyQueryError, RegistryInputError, UnknownEntityError
from registry.namespaces import NNET, S3N, check_iri, is_sha256, mint_model
from registry.queries import load_query
from registry.store import RegistryStore
from registry.values import python_value

_py = python_value


def rows_py(rows: list[dict[str, Node]]) -> list[dict[str, Any]]:
    """Query rows with RDF terms turned into JSON-ready Python values."""
    return [{k: _py(v) for k, v in r.items()} for r in rows]


def resolve(store: RegistryStore, ref: str, *, kind: str) -> URIRef:
    """Turn a user's reference (IRI, sha256, schema:name, td:title or id) into one IRI.

    Parameters
    ----------
    ref : str
        What the user typed. Treated as data only: it is bound as a literal, never parsed as SPARQL.
    kind : {"model", "device"}
    """
    cls = NNET.NeuralNetwork if kind == "model" else S3N.SmartSensor
    if not ref or len(ref) > 2048:
        raise RegistryInputError(f"{kind} reference must be 1-2048 characters")
    if "://" in ref or ref.startswith("urn:"):
        iri = check_iri(ref, what=f"{kind} IRI")
        if store.ask(load_query("is_a"), {"e": iri, "cls": cls}):
            return iri
        raise UnknownEntityError(f"no {kind} with IRI <{ref}> in the registry")
    if kind == "model" and is_sha256(ref):
        iri = mint_model(ref)
        if store.ask(load_query("is_a"), {"e": iri, "cls": cls}):
            return iri
    found = [r["entity"] for r in store.select(load_query("resolve"), {"cls": cls, "key": Literal(ref)})]
    if not found:
        raise UnknownEntityError(f"no {kind} named {ref!r} in the registry")
    if len(found) > 1:
        raise AmbiguousNameError(f"{len(found)} {kind}s are named {ref!r}; use one of: "
                                 + ", ".join(f"<{f}>" for f in found[:5]))
    return URIRef(str(found[0]))


def _sensors(text: Any) -> list[str]:
    return sorted(str(text).split()) if text else []


def devices_for_model(store: RegistryStore, model: str | URIRef, *, use_index: bool = True) -> list[dict[str, Any]]:
    """Devices that can run `model`, with the RAM/flash figures compared and their sensor kinds.

    Answered from the store's capability index when it can answer exactly (`use_index=False`
    forces the SPARQL query devices_for_model.rq; both give the same rows).
    """
    m = model if isinstance(model, URIRef) else resolve(store, model, kind="model")
    index = store.capabilities() if use_index else None
    fast = index.devices_for_model(str(m)) if index is not None else None
    if fast is not None:
        return fast
    out = []
    for r in store.select_values(load_query("devices_for_model"), {"model": m}):
        out.append({"iri": r["device"], "name": r.get("name"), "ram_bytes": r.get("ram"),
                    "ram_needed_bytes": r.get("ram_need"), "flash_bytes": r.get("flash"),
                    "flash_needed_bytes": r.get("flash_need"), "sensors": _sensors(r.get("sensors")),
                    "online": r.get("online")})
    return out


def sampling_records(store: RegistryStore, fleet: str) -> list[dict[str, Any]]:
    """``[{"id", "use_case", "ram_bytes"}]`` of every device of `fleet`: what federated sampling reads.

    A value is None when the device's Thing Description did not state it (the coordinator then
    does not sample the device and says why).
    """
    rows = store.select_values(load_query("sampling_records"), {"fleet": Literal(fleet)})
    return [{"id": r["id"], "use_case": r.get("use_case"), "ram_bytes": r.get("ram")} for r in rows]


def _reasons(r: dict[str, Any]) -> list[str]:
    why = []
    ram, need = r.get("ram"), r.get("ram_need")
    if ram is None:
        why.append("RAM size unknown")
    elif need is not None and ram < need:
        why.append(f"too little RAM: {ram} B < {need} B needed")
    flash, fneed = r.get("flash"), r.get("flash_need") or 0
    if fneed and flash is None:
        why.append("flash size unknown")
    elif fneed and flash is not None and flash < fneed:
        why.append(f"too little flash: {flash} B < {fneed} B needed")
    if need is None and "ram_need" in r:
        why.append("model states no RAM requirement")
    missing = _sensors(r.get("missing_sensors"))
    if missing:
        why.append("missing sensor" + ("s" if len(missing) > 1 else "") + ": " + ", ".join(missing))
    return why


def explain_model(store: RegistryStore, model: str | URIRef) -> dict[str, Any]:
    """Every device, split into `eligible` and `excluded` (each excluded one with its reasons)."""
    m = model if isinstance(model, URIRef) else resolve(store, model, kind="model")
    eligible, excluded = [], []
    for r in store.select_values(load_query("device_fit_all"), {"model": m}):
        item = {"iri": r["device"], "name": r.get("name"), "ram_bytes": r.get("ram"),
                "ram_needed_bytes": r.get("ram_need"), "flash_bytes": r.get("flash"),
                "flash_needed_bytes": r.get("flash_need"), "online": r.get("online")}
        why = _reasons(r)
        if why:
            excluded.append({**item, "reasons": why})
        else:
            eligible.append(item)
    return {"model": str(m), "eligible": eligible, "excluded": excluded}


def models_for_device(store: RegistryStore, device: str | URIRef, *, use_index: bool = True) -> list[dict[str, Any]]:
    """Models that fit `device`, with the RAM/flash figures compared and the sensors they need.

    From the capability index when it can answer exactly; `use_index=False` runs models_for_device.rq.
    """
    d = device if isinstance(device, URIRef) else resolve(store, device, kind="device")
    index = store.capabilities() if use_index else None
    fast = index.models_for_device(str(d)) if index is not None else None
    if fast is not None:
        return fast
    out = []
    for r in store.select_values(load_query("models_for_device"), {"device": d}):
        out.append({"iri": r["model"], "name": r.get("name"), "task": r.get("task"), "ram_bytes": r.get("ram"),
                    "ram_needed_bytes": r.get("ram_need"), "flash_bytes": r.get("flash"),
                    "flash_needed_bytes": r.get("flash_need"), "sensors": _sensors(r.get("sensors"))})
    return out


def explain_device(store: RegistryStore, device: str | URIRef) -> dict[str, Any]:
    """Every model, split into `eligible` and `excluded` for `device` (with reasons)."""
    d = device if isinstance(device, URIRef) else resolve(store, device, kind="device")
    eligible, excluded = [], []
    for r in store.select_values(load_query("model_fit_all"), {"device": d}):
        item = {"iri": r["model"], "name": r.get("name"), "task": r.get("task"), "ram_bytes": r.get("ram"),
                "ram_needed_bytes": r.get("ram_need"), "flash_bytes": r.get("flash"),
                "flash_needed_bytes": r.get("flash_need")}
        why = _reasons(r)
        (excluded.append({**item, "reasons": why}) if why else eligible.append(item))
    return {"device": str(d), "eligible": eligible, "excluded": excluded}


def models_by_metric(store: RegistryStore, metric: str, *, minimum: float | None = None,
                     maximum: float | None = None, task: str | None = None, sensor: str | None = None,
                     ascending: bool = False) -> list[dict[str, Any]]:
    """Models with `metric` in [minimum, maximum] (for `task` / `sensor` if given), best first.

    `ascending=True` orders lowest first (for losses such as mse).
    """
    b: dict[str, Node] = {"metric": Literal(metric),
                          "min": Literal(float(minimum if minimum is not None else -1e300)),
                          "max": Literal(float(maximum if maximum is not None else 1e300))}
    if task:
        b["task"] = Literal(task)
    if sensor:
        b["sensor"] = Literal(sensor.lower())
    rows = [{"iri": r["model"], "name": r.get("name"), "task": r.get("task"), "metric": r.get("metric", metric),
             "value": r.get("value"), "precision": r.get("precision")}
            for r in store.select_values(load_query("models_by_metric"), b)]
    if ascending:
        rows.sort(key=lambda r: (r["value"], r["name"] or ""))
    return rows


def inventory(store: RegistryStore) -> list[dict[str, Any]]:
    """Which model version runs where, online or not, last seen when."""
    return [{"iri": r["device"], "id": r.get("id"), "name": r.get("name"), "online": r.get("online"),
             "last_seen": r.get("last_seen"), "model": r.get("model"), "model_name": r.get("model_name"),
             "model_version": r.get("model_version"), "sha256": r.get("sha256"), "mcu": r.get("mcu"),
             "ram_bytes": r.get("ram"), "flash_bytes": r.get("flash")}
            for r in store.select_values(load_query("inventory"))]


def lineage(store: RegistryStore, model: str | URIRef) -> dict[str, Any]:
    """The federated runs that generated `model` (PROV-O), with rounds, devices and parent model."""
    m = model if isinstance(model, URIRef) else resolve(store, model, kind="model")
    runs = []
    for r in store.select_values(load_query("lineage"), {"model": m}):
        runs.append({"run": r["run"], "run_id": r.get("run_id"), "strategy": r.get("strategy"),
                     "rounds": r.get("rounds"), "started": r.get("started"), "ended": r.get("ended"),
                     "devices": sorted(str(r.get("devices") or "").split()), "parent": r.get("parent"),
                     "parent_name": r.get("parent_name")})
    return {"model": str(m), "runs": runs, "firmware": firmware_projects(store, m)}


def firmware_projects(store: RegistryStore, model: str | URIRef) -> list[dict[str, Any]]:
    """Firmware projects generated from `model` (PROV-O: model version -> firmware project -> board)."""
    m = model if isinstance(model, URIRef) else resolve(store, model, kind="model")
    return [{"iri": r["project"], "id": r.get("project_id"), "device": r.get("device"),
             "device_id": r.get("device_id"), "family": r.get("family"), "arena_bytes": r.get("arena"),
             "generated": r.get("generated")}
            for r in store.select_values(load_query("firmware_projects"), {"model": m})]


def model_profile(store: RegistryStore, model: str | URIRef) -> dict[str, Any]:
    """One model version's name, task, sha256 and RAM/flash need."""
    m = model if isinstance(model, URIRef) else resolve(store, model, kind="model")
    rows = store.select_values(load_query("model_profile"), {"model": m})
    if not rows:
        raise UnknownEntityError(f"no model <{m}> in the registry")
    r = rows[0]
    return {"iri": str(m), "name": r.get("name"), "task": r.get("task"), "sha256": r.get("sha256"),
            "ram_needed_bytes": r.get("ram_need"), "flash_needed_bytes": r.get("flash_need")}


def device_profile(store: RegistryStore, device: str | URIRef) -> dict[str, Any]:
    """One device's ids, fleet, board title, MCU and memory (what a firmware project is generated for)."""
    d = device if isinstance(device, URIRef) else resolve(store, device, kind="device")
    rows = store.select_values(load_query("device_profile"), {"device": d})
    if not rows:
        raise UnknownEntityError(f"no device <{d}> in the registry")
    r = rows[0]
    return {"iri": str(d), "id": r.get("id"), "title": r.get("title"), "fleet": r.get("fleet"),
            "use_case": r.get("use_case"), "board": r.get("board"), "mcu": r.get("mcu"), "ram_bytes": r.get("ram"),
            "flash_bytes": r.get("flash")}


def search(store: RegistryStore, text: str) -> list[dict[str, Any]]:
    """Models and devices whose name, title, id, description or comment contains `text`."""
    if not text.strip():
        raise RegistryInputError("search text is empty")
    return [{"iri": r["entity"], "kind": r.get("kind"), "name": r.get("name"), "matched": r.get("matched")}
            for r in store.select_values(load_query("search"), {"q": Literal(text.strip().lower())})]


def read_only_form(text: str) -> str:
    """The form of a read-only SPARQL query (SelectQuery, AskQuery, ConstructQuery, DescribeQuery).

    Why parse first: the embedded store would execute an update sent as a query; parsing with
    rdflib's SPARQL grammar tells a query from an update before anything runs. Raises
    `ReadOnlyQueryError` for an update and `RegistryInputError` for a syntax error.
    """
    from pyparsing import ParseException
    from rdflib.plugins.sparql.parser import parseQuery, parseUpdate

    try:
        parsed = parseQuery(text)
    except ParseException as exc:
        try:
            parseUpdate(text)
        except ParseException:
            raise RegistryInputError(f"SPARQL syntax error at line {exc.lineno}, column {exc.col}: {exc.msg}") from None
        raise ReadOnlyQueryError("the registry accepts read-only SPARQL here (SELECT, ASK, CONSTRUCT, DESCRIBE); "
                                 "updates are refused") from None
    return str(parsed[1].name)


def raw_query(store: RegistryStore, text: str) -> dict[str, Any]:
    """Run a user's read-only SPARQL (SELECT/ASK/CONSTRUCT/DESCRIBE); reject any update."""
    form = read_only_form(text)
    result = store.raw(text)
    if form == "AskQuery":
        return {"type": "ask", "boolean": bool(result.askAnswer)}
    if form in ("ConstructQuery", "DescribeQuery"):
        return {"type": "graph", "turtle": result.graph.serialize(format="turtle")}
    names = [str(v) for v in (result.vars or [])]
    return {"type": "select", "vars": names,
            "rows": [{n: _py(row[n]) for n in names if row[n] is not None} for row in result]}


def model_summary(store: RegistryStore, model: URIRef) -> dict[str, Any]:
    """``{"name", "aliases", "ram", "flash", "method"}`` of a registered model (bytes).

    `method` says how the RAM figure was found ("measured" or "static-estimate"); raises
    `UnknownEntityError` if the model is absent.
    """
    rows = rows_py(store.select(load_query("model_summary"), {"m": model}))
    if not rows:
        raise UnknownEntityError(f"no model <{model}> with RAM and flash figures in the registry")
    row = rows[0]
    return {"name": row["name"], "aliases": sorted(str(row.get("aliases") or "").split("\n")) if row.get("aliases")
            else [], "ram": row["ram"], "flash": row["flash"], "method": row.get("method", "measured")}


def device_counts(store: RegistryStore) -> dict[str, int]:
    """``{"devices": n, "online": k}``: devices in the registry and how many are online."""
    row = rows_py(store.select(load_query("device_counts")))[0]
    return {"devices": int(row.get("devices", 0)), "online": int(row.get("online", 0))}
