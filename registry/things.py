"""The registry's record of a W3C WoT Thing Description: the document itself and its RDF.

Every TD the registry holds (from `registry add-device`, from MQTT, from the directory API) is kept
twice in the registry graph, in one transaction:

* as RDF about the Thing (subject = the TD's `id`): `td:Thing`, `td:title`, `td:description`, its
  affordances (`td:hasPropertyAffordance` ... with `td:name`) and their forms (`hctl:hasTarget`,
  `hctl:hasOperationType` — so `op` in forms is data, not a validation error), so SPARQL search
  answers over TDs with the W3C TD vocabulary;
* as a record (`disco:RegistrationInformation`, IRI minted by `mint_thing_record`) holding the JSON
  document exactly as submitted (`tf:tdDocument`) and the WoT Discovery registration information
  (`disco:dateCreated`, `disco:dateModified`, `disco:expires`, `disco:ttl`).

Why a stored document and not JSON-LD framing from the RDF: a directory must return the TD it was
given (unknown extension terms, ordering, language maps), and the TD 1.1 context is remote (the
registry works offline). The RDF is a searchable projection, the document is the truth.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rdflib import Graph, Literal, URIRef
from rdflib.namespace import RDF, XSD

from registry.exceptions import RegistryInputError, ThingConflictError
from registry.namespaces import DISCO, HCTL, ID, REGISTRY_GRAPH, TD, TF, check_iri, mint_thing_record, part
from registry.store import RegistryStore

DISCOVERY_CONTEXT = "https://www.w3.org/2022/wot/discovery"
DIRECTORY = ID["directory"]
"""The node that holds the collection's revision (the `etag` of `GET /things`)."""
MAX_TD_ID_CHARS = 2048
_OWN_NAMESPACE = "https://w3id.org/tinyfleet/"
_AFFORDANCES = (("properties", TD.hasPropertyAffordance, TD.PropertyAffordance),
                ("actions", TD.hasActionAffordance, TD.ActionAffordance),
                ("events", TD.hasEventAffordance, TD.EventAffordance))
_OPS = ("readProperty", "writeProperty", "observeProperty", "unobserveProperty", "invokeAction", "queryAction",
        "cancelAction", "subscribeEvent", "unsubscribeEvent", "readAllProperties", "writeAllProperties",
        "readMultipleProperties", "writeMultipleProperties", "observeAllProperties", "unobserveAllProperties",
        "queryAllActions", "subscribeAllEvents", "unsubscribeAllEvents")
OPERATION_TYPES = {op.lower(): TD[op] for op in _OPS}
"""TD 1.1 `op` values (lower case in JSON) and their TD ontology individuals."""


@dataclass(frozen=True)
class Registration:
    """WoT Discovery registration information of one stored TD (all times UTC)."""

    created: datetime
    modified: datetime
    expires: datetime | None = None
    ttl: float | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now

    def to_json(self, retrieved: datetime | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"created": iso(self.created), "modified": iso(self.modified)}
        if self.expires is not None:
            out["expires"] = iso(self.expires)
        if self.ttl is not None:
            out["ttl"] = int(self.ttl) if float(self.ttl).is_integer() else self.ttl
        if retrieved is not None:
            out["retrieved"] = iso(retrieved)
        return out


def iso(t: datetime) -> str:
    """RFC 3339 with a `Z` offset, millisecond precision (what the Discovery examples show)."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: Any, what: str) -> datetime:
    """An RFC 3339 date-time with its offset (Discovery: the offset is not optional)."""
    if not isinstance(text, str):
        raise RegistryInputError(f"{what} must be an RFC 3339 date-time string, got {text!r:.60}")
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RegistryInputError(f"{what} {text!r:.60} is not an RFC 3339 date-time") from None
    if t.tzinfo is None:
        raise RegistryInputError(f"{what} {text!r:.60} has no time zone offset (RFC 3339 requires one)")
    return t.astimezone(UTC)


def new_registration(previous: Registration | None, client: Mapping[str, Any] | None, now: datetime, *,
                     max_ttl: float) -> Registration:
    """Registration info after a create or update at `now`.

    `created`/`modified` are the server's; the client may give `ttl` (then `expires` = now + ttl,
    any client `expires` ignored, as Discovery requires) or an absolute `expires`.
    """
    client = client or {}
    ttl = client.get("ttl")
    expires = None
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (0 < ttl <= max_ttl):
            raise RegistryInputError(f"registration.ttl must be a number of seconds in (0, {max_ttl:g}], got {ttl!r}")
        expires = now + timedelta(seconds=float(ttl))
    elif client.get("expires") is not None:
        expires = parse_time(client["expires"], "registration.expires")
    return Registration(created=previous.created if previous else now, modified=now, expires=expires,
                        ttl=float(ttl) if ttl is not None else None)


def check_td_id(td_id: Any) -> URIRef:
    """The TD `id` as an IRI, refusing ids inside tinyfleet's own namespace (they name registry entities)."""
    if not isinstance(td_id, str) or not td_id or len(td_id) > MAX_TD_ID_CHARS:
        raise RegistryInputError(f"a Thing Description id must be an IRI of 1-{MAX_TD_ID_CHARS} characters")
    iri = check_iri(td_id, what="Thing Description id")
    if td_id.startswith(_OWN_NAMESPACE):
        raise ThingConflictError(f"Thing Description id {td_id!r} is inside tinyfleet's own namespace "
                                 f"{_OWN_NAMESPACE}; use another IRI (e.g. urn:uuid:...)")
    return iri


def anonymous_id() -> str:
    """A local id for an anonymous TD: a UUID version 4 as URN (Discovery's recommendation)."""
    return f"urn:uuid:{uuid.uuid4()}"


def with_context(td: Mapping[str, Any]) -> dict[str, Any]:
    """`td` with the Discovery context added to `@context` (an Enriched TD must carry it)."""
    out = dict(td)
    ctx = out.get("@context")
    items = list(ctx) if isinstance(ctx, list) else ([ctx] if ctx is not None else [])
    if DISCOVERY_CONTEXT not in items:
        items.append(DISCOVERY_CONTEXT)
    out["@context"] = items
    return out


def enriched_text(document: str, registration: Mapping[str, Any]) -> str:
    """A stored document (JSON text, context and id already in) with `registration` spliced in.

    Why text: a page of 100 TDs is ~600 KB of JSON; parsing and re-serializing it per request cost
    more than the query. The stored text is a JSON object written by `thing_graph`, so inserting one
    member before its closing brace keeps it valid JSON.
    """
    body = document.rstrip()
    sep = "," if body[:-1].strip() != "{" else ""
    return body[:-1] + sep + '"registration":' + json.dumps(registration, separators=(",", ":")) + "}"


def enriched(document: Mapping[str, Any], td_id: str, reg: Registration, *,
             retrieved: datetime | None = None) -> dict[str, Any]:
    """The TD as the directory serves it: local `id` set, Discovery context and `registration` added."""
    out = with_context(document)
    out["id"] = td_id
    out["registration"] = reg.to_json(retrieved)
    return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def thing_graph(td: Mapping[str, Any], td_id: str, reg: Registration) -> tuple[URIRef, URIRef, Graph]:
    """The RDF of one stored TD: (thing IRI, record IRI, graph). `td` is stored without `registration`."""
    thing = check_td_id(td_id)
    record = mint_thing_record(td_id)
    document = with_context({k: v for k, v in td.items() if k != "registration"})
    document["id"] = td_id
    g = Graph()
    g.add((thing, RDF.type, TD.Thing))
    for key, prop in (("title", TD.title), ("description", TD.description)):
        if _text(td.get(key)):
            g.add((thing, prop, Literal(td[key])))
    g.add((thing, DISCO.hasRegistrationInformation, record))
    g.add((record, RDF.type, DISCO.RegistrationInformation))
    g.add((record, TF.thingId, Literal(td_id)))
    g.add((record, TF.tdDocument, Literal(json.dumps(document, ensure_ascii=False, separators=(",", ":")))))
    # Lexical forms exactly as served (`iso`), so a listing reads them back as strings, no parsing.
    g.add((record, DISCO.dateCreated, Literal(iso(reg.created), datatype=XSD.dateTime)))
    g.add((record, DISCO.dateModified, Literal(iso(reg.modified), datatype=XSD.dateTime)))
    if reg.expires is not None:
        g.add((record, DISCO.expires, Literal(iso(reg.expires), datatype=XSD.dateTime)))
    if reg.ttl is not None:
        g.add((record, DISCO.ttl, Literal(float(reg.ttl))))
    for section, link, cls in _AFFORDANCES:
        affordances = td.get(section)
        if not isinstance(affordances, Mapping):
            continue
        for name, aff in affordances.items():
            node = part(record, section, name)
            g.add((thing, link, node))
            g.add((record, TF.recordPart, node))
            g.add((node, RDF.type, cls))
            g.add((node, TD.name, Literal(str(name))))
            if isinstance(aff, Mapping):
                if _text(aff.get("title")):
                    g.add((node, TD.title, Literal(aff["title"])))
                _forms(g, node, aff.get("forms"), default_op=None)
    if isinstance(td.get("forms"), list):
        holder = part(record, "forms")
        g.add((record, TF.recordPart, holder))
        _forms(g, thing, td["forms"], default_op=None, under=holder)
    return thing, record, g


def _forms(g: Graph, owner: URIRef, forms: Any, *, default_op: str | None, under: URIRef | None = None) -> None:
    if not isinstance(forms, list):
        return
    for i, form in enumerate(forms):
        if not isinstance(form, Mapping):
            continue
        node = part(under, i) if under is not None else part(owner, "forms", i)
        g.add((owner, TD.hasForm, node))
        if under is not None:
            g.add((under, TF.recordPart, node))
        if _text(form.get("href")):
            g.add((node, HCTL.hasTarget, Literal(form["href"], datatype=XSD.anyURI)))
        if _text(form.get("contentType")):
            g.add((node, HCTL.forContentType, Literal(form["contentType"])))
        ops = form.get("op", default_op)
        for op in ([ops] if isinstance(ops, str) else ops if isinstance(ops, list) else []):
            if isinstance(op, str) and op.lower() in OPERATION_TYPES:
                g.add((node, HCTL.hasOperationType, OPERATION_TYPES[op.lower()]))


def registration_of(store: RegistryStore, td_id: str) -> Registration | None:
    """The stored registration info of `td_id` (expired or not), None when it is not stored."""
    rows = store.select_values("SELECT ?created ?modified ?expires ?ttl WHERE { ?r disco:dateCreated ?created ; "
                               "disco:dateModified ?modified . OPTIONAL { ?r disco:expires ?expires } "
                               "OPTIONAL { ?r disco:ttl ?ttl } }", {"r": mint_thing_record(td_id)})
    return registration_from_row(rows[0]) if rows else None


def registration_from_row(row: Mapping[str, Any]) -> Registration:
    """A `Registration` from query values (ISO strings, floats)."""
    return Registration(created=_utc(row["created"]), modified=_utc(row["modified"]),
                        expires=_utc(row["expires"]) if row.get("expires") else None,
                        ttl=float(row["ttl"]) if row.get("ttl") is not None else None)


def _utc(value: Any) -> datetime:
    t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def check_not_foreign(store: RegistryStore, thing: URIRef) -> None:
    """Refuse an id that is the subject of registry data other than a stored TD (a model, a KG node)."""
    if store.ask("ASK WHERE { ?t ?p ?o FILTER NOT EXISTS { ?t disco:hasRegistrationInformation ?r } }",
                 {"t": thing}):
        raise ThingConflictError(f"{thing} already names something in the registry that is not a Thing "
                                 "Description; give the TD another id")


def write_thing(store: RegistryStore, graph: Graph, thing: URIRef, record: URIRef, *,
                owners: Sequence[URIRef] = ()) -> None:
    """Write one TD's graph in one transaction, replacing its previous record, and bump the revision."""
    check_not_foreign(store, thing)
    g = Graph()
    g += graph
    g.add((DIRECTORY, TF.revision, Literal(uuid.uuid4().hex)))
    store.write(g, replace_owners=[record, *owners], replace_subjects=[thing],
                replace_values=[(DIRECTORY, TF.revision)])


def delete_request(td_ids: Sequence[str], *, owners: Sequence[URIRef] = (), graph_iri: URIRef = REGISTRY_GRAPH) -> str:
    """One SPARQL update that removes the TDs (thing, record, `owners`) and bumps the revision."""
    from registry.store import write_request

    g = Graph()
    g.add((DIRECTORY, TF.revision, Literal(uuid.uuid4().hex)))
    return write_request(g, replace_owners=[*(mint_thing_record(t) for t in td_ids), *owners],
                         replace_subjects=[URIRef(t) for t in td_ids], replace_values=[(DIRECTORY, TF.revision)],
                         graph_iri=graph_iri)


def revision(store: RegistryStore) -> str:
    """The collection's current revision (changes with every write to the directory)."""
    rows = store.select_values("SELECT ?rev WHERE { ?d tf:revision ?rev }", {"d": DIRECTORY})
    return str(rows[0]["rev"]) if rows else "0"
