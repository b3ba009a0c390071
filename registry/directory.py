"""A W3C WoT Thing Description Directory over the registry, without HTTP.

`ThingDirectory` implements the operations of the WoT Discovery Directory Service API (create with
id, create anonymous, retrieve, replace, merge-patch, delete, list in pages, expiry, SPARQL search,
lifecycle events) on any `RegistryStore`; `tinyfleet serve` maps them onto HTTP. Keeping them here
means every rule is tested without a server, and the CLI, MQTT ingestion and the HTTP API store a TD
the same way (`registry.things`):

* validation is on by default: TD 1.1 JSON Schema + Discovery extensions (`registry.td_schema`),
  then the registry's SHACL shapes on what would be written (`registry.validation`);
* a tinyfleet device's TD also (re)describes the device for matchmaking (`add_device`);
* writes are serialized by one lock, so "created or updated" and `created` times are exact;
* `ttl` gives `expires` = now + ttl; expired TDs are invisible at once and purged by `purge_expired`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rdflib import Graph, Literal, URIRef
from rdflib.namespace import XSD

from registry.exceptions import RegistryInputError, TDValidationError, ThingNotFoundError
from registry.ingest_device import add_device, device_graph, is_device_td, parse_td, td_id_of
from registry.namespaces import TF, mint_device, mint_thing_record
from registry.questions import load_query, read_only_form
from registry.store import RegistryStore
from registry.td_schema import check_td, validation_errors
from registry.things import (
    DIRECTORY,
    Registration,
    anonymous_id,
    check_not_foreign,
    check_td_id,
    delete_request,
    enriched,
    enriched_text,
    iso,
    new_registration,
    registration_from_row,
    revision,
    thing_graph,
    write_thing,
)
from registry.validation import validate

log = logging.getLogger(__name__)

DEFAULT_MAX_TTL = 10 * 365 * 24 * 3600.0
"""Longest accepted `ttl` (ten years): Discovery lets a directory bound expiry times."""
MAX_PAGE = 1000
MAX_SPARQL_CHARS = 20_000
_SERVICE = re.compile(r"\bSERVICE\b", re.IGNORECASE)
_STRINGS = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*')


@dataclass(frozen=True)
class DirectoryEvent:
    """A TD lifecycle event (`thing_created`, `thing_updated`, `thing_deleted`).

    `td` is the whole enriched TD (created/updated), `diff` the JSON Merge Patch from the previous
    version to this one with the `id` always included (updated only).
    """

    type: str
    id: str
    td: dict[str, Any] | None = None
    diff: dict[str, Any] | None = None


@dataclass(frozen=True)
class Page:
    """One page of the collection: the enriched TDs (as JSON texts), whether more follow, the revision."""

    documents: list[str]
    offset: int
    limit: int
    more: bool
    etag: str

    @property
    def items(self) -> list[dict[str, Any]]:
        """The enriched TDs as dicts."""
        return [json.loads(d) for d in self.documents]


@dataclass(frozen=True)
class SparqlAnswer:
    """A read-only SPARQL result: `form` is select, ask, construct or describe; `result` rdflib's Result."""

    form: str
    result: Any


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: `patch` applied to `target` (neither is modified)."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Merge Patch that turns `old` into `new` (what a `thing_updated` event with diff carries)."""
    out: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif old[key] != value:
            both = isinstance(old[key], Mapping) and isinstance(value, Mapping)
            out[key] = merge_diff(old[key], value) if both else value
    return out


Listener = Callable[[DirectoryEvent], None]
Clock = Callable[[], datetime]


def _instant(text: str) -> datetime:
    """An xsd:dateTime's lexical form as an aware datetime (no zone = UTC, as the directory writes them)."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class ThingDirectory:
    """The Directory Service operations on `store`.

    Parameters
    ----------
    store : RegistryStore
    validate : bool, default=True
        JSON Schema + SHACL validation before anything is written (switch off only to load
        documents known to be valid faster).
    max_ttl : float
        Longest `registration.ttl` accepted, in seconds.
    clock : callable, default=now in UTC
        The time source (tests move it forward to expire registrations without sleeping).
    """

    def __init__(self, store: RegistryStore, *, validate: bool = True, max_ttl: float = DEFAULT_MAX_TTL,
                 clock: Clock | None = None) -> None:
        self.store = store
        self.validate = validate
        self.max_ttl = max_ttl
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._order_cache: tuple[str, list[tuple[str, datetime | None]]] | None = None

    # -- events ------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Call `listener` after every committed create, update and delete (from any thread)."""
        self._listeners.append(listener)

    def _emit(self, event: DirectoryEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken subscriber must not undo a committed write
                log.exception("directory event listener failed on %s %s", event.type, event.id)

    # -- reads -------------------------------------------------------------------------------
    def _row(self, td_id: str) -> dict[str, Any] | None:
        rows = self.store.select_values(load_query("thing_get"), {"r": mint_thing_record(td_id)})
        return rows[0] if rows else None

    def _current(self, td_id: str, now: datetime) -> tuple[dict[str, Any], Registration, str | None] | None:
        row = self._row(td_id)
        if row is None:
            return None
        reg = registration_from_row(row)
        if reg.expired(now):
            return None
        return json.loads(row["doc"]), reg, row.get("device")

    def get(self, td_id: str) -> dict[str, Any]:
        """The enriched TD (`registration.retrieved` = now); `ThingNotFoundError` if absent or expired."""
        now = self.clock()
        current = self._current(td_id, now)
        if current is None:
            raise ThingNotFoundError(f"no Thing Description with id {td_id!r} in the directory")
        doc, reg, _ = current
        return enriched(doc, td_id, reg, retrieved=now)

    def page(self, offset: int = 0, limit: int = 100) -> Page:
        """TDs `offset` .. `offset + limit - 1` in id order; `more` says whether a next page exists."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RegistryInputError(f"offset must be an integer >= 0, got {offset!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise RegistryInputError(f"limit must be an integer in 1..{MAX_PAGE}, got {limit!r}")
        now = self.clock()
        etag = revision(self.store)
        live = [r for r, expires in self._order(etag) if expires is None or expires > now]
        wanted = live[offset:offset + limit + 1]
        rows = {str(r["r"]): r for r in self.store.select_values_in(load_query("things_docs"), "r",
                                                                    [URIRef(r) for r in wanted[:limit]])}
        retrieved = iso(now)
        docs = []
        for record in wanted[:limit]:
            r = rows.get(record)
            if r is None:  # deleted between reading the order and the documents: the page is one shorter
                continue
            reg = {"created": r["created"], "modified": r["modified"]}
            if r.get("expires"):
                reg["expires"] = r["expires"]
            if r.get("ttl") is not None:
                reg["ttl"] = int(r["ttl"]) if float(r["ttl"]).is_integer() else r["ttl"]
            reg["retrieved"] = retrieved
            docs.append(enriched_text(str(r["doc"]), reg))
        return Page(documents=docs, offset=offset, limit=limit, more=len(wanted) > limit, etag=etag)

    def _order(self, etag: str) -> list[tuple[str, datetime | None]]:
        """(record IRI, expiry) of every TD in id order, recomputed only when the revision `etag` changed.

        Why: Oxigraph's ORDER BY over thousands of string ids costs seconds, and every page needs the
        order. The revision is read before the order, so a write racing this read leaves a list at
        least as new as its key, and the next page (seeing the new revision) recomputes it.
        """
        with self._lock:
            if self._order_cache is not None and self._order_cache[0] == etag:
                return self._order_cache[1]
        rows = self.store.select_values(load_query("things_order"))
        rows.sort(key=lambda r: str(r["id"]))
        order = [(str(r["r"]), _instant(str(r["expires"])) if r.get("expires") else None) for r in rows]
        with self._lock:
            self._order_cache = (etag, order)
        return order

    def count(self) -> int:
        """TDs served now (expired ones left out)."""
        rows = self.store.select_values(load_query("things_count"),
                                        {"now": Literal(self.clock(), datatype=XSD.dateTime)})
        return int(rows[0]["n"]) if rows else 0

    def revision(self) -> str:
        """The collection's revision: changes with every create, update, delete and purge."""
        return revision(self.store)

    # -- writes ------------------------------------------------------------------------------
    def put(self, td_id: str, td: Any) -> bool:
        """Create or replace the TD `td_id` (`PUT /things/{id}`); True when it was created."""
        check_td_id(td_id)
        if not isinstance(td, Mapping):
            raise TDValidationError(f"TD {td_id}", validation_errors(td))
        body_id = td.get("id")
        if body_id is not None and body_id != td_id:
            raise TDValidationError(f"TD {td_id}", [{"field": "id", "description": f"the TD's id {body_id!r:.200} "
                                                     f"differs from the id in the request ({td_id!r:.200})"}])
        return self._store(td_id, {**td, "id": td_id}, source=f"TD {td_id}")

    def create_anonymous(self, td: Any) -> str:
        """Store a TD without `id` (`POST /things`); returns the local id it was given (urn:uuid:...)."""
        if isinstance(td, Mapping) and td.get("id") is not None:
            raise TDValidationError("anonymous TD", [{"field": "id", "description": "a TD with an id is created "
                                                      "with PUT /things/{id}; POST /things takes TDs without id"}])
        if not isinstance(td, Mapping):
            raise TDValidationError("anonymous TD", validation_errors(td))
        td_id = anonymous_id()
        self._store(td_id, {**td, "id": td_id}, source="anonymous TD")
        return td_id

    def patch(self, td_id: str, patch: Any) -> None:
        """Apply a JSON Merge Patch to the stored TD (`PATCH /things/{id}`); an empty patch renews `ttl`."""
        if not isinstance(patch, Mapping):
            raise TDValidationError(f"patch of {td_id}", [{"field": "(root)",
                                                           "description": "a merge patch must be a JSON object"}])
        with self._lock:
            current = self._current(td_id, self.clock())
            if current is None:
                raise ThingNotFoundError(f"no Thing Description with id {td_id!r} in the directory")
            doc, reg, _ = current
            base = dict(doc)
            client_reg = {"ttl": reg.ttl} if reg.ttl is not None else (
                {"expires": enriched(doc, td_id, reg)["registration"]["expires"]} if reg.expires else {})
            if client_reg:
                base["registration"] = client_reg
            merged = merge_patch(base, patch)
            if merged.get("id", td_id) != td_id:
                raise TDValidationError(f"patch of {td_id}", [{"field": "id", "description": "a patch cannot "
                                                               "change a TD's id"}])
            self._store(td_id, {**merged, "id": td_id}, source=f"patch of {td_id}")

    def ingest(self, td: Any, *, source: str) -> str:
        """Store a device's own TD (from MQTT): same rules as `put`, id from the TD or its device URN."""
        if not isinstance(td, Mapping) or not is_device_td(td):
            raise RegistryInputError(f"{source}: not a tinyfleet device's Thing Description")
        info = parse_td(td, source=source)
        td_id = td_id_of(td, str(info["device_id"]))
        self._store(td_id, {**td, "id": td_id}, source=source)
        return td_id

    def _store(self, td_id: str, td: dict[str, Any], *, source: str) -> bool:
        """Validate, write and announce one TD; True when it was created."""
        with self._lock:
            if self.validate:
                check_td(td, source=source)
            now = self.clock()
            current = self._current(td_id, now)
            previous_reg = current[1] if current else None
            reg = new_registration(previous_reg, td.get("registration") if isinstance(td.get("registration"),
                                                                                      Mapping) else None,
                                   now, max_ttl=self.max_ttl)
            doc = {k: v for k, v in td.items() if k != "registration"}
            if is_device_td(doc):
                add_device(self.store, doc, source=source, registration=reg)
            else:
                thing, record, g = thing_graph(doc, td_id, reg)
                if self.validate:
                    validate(g, source=source)
                old_device = current[2] if current else None
                write_thing(self.store, g, thing, record, owners=[URIRef(old_device)] if old_device else [])
            full = enriched(doc, td_id, reg)
            if current is None:
                self._emit(DirectoryEvent("thing_created", td_id, td=full))
            else:
                old = enriched(current[0], td_id, current[1])
                self._emit(DirectoryEvent("thing_updated", td_id, td=full, diff={**merge_diff(old, full), "id": td_id}))
            return current is None

    def delete(self, td_id: str) -> None:
        """Remove the TD (and the registry device it describes); `ThingNotFoundError` if absent."""
        with self._lock:
            row = self._row(td_id)
            if row is None or registration_from_row(row).expired(self.clock()):
                raise ThingNotFoundError(f"no Thing Description with id {td_id!r} in the directory")
            self._delete([td_id], [row["device"]] if row.get("device") else [])
        self._emit(DirectoryEvent("thing_deleted", td_id))

    def _delete(self, td_ids: Sequence[str], devices: Sequence[str]) -> None:
        self.store.update(delete_request(td_ids, owners=[URIRef(d) for d in devices], graph_iri=self.store.graph_iri))

    def purge_expired(self) -> list[str]:
        """Delete every TD whose registration has expired; returns their ids (each announced as deleted)."""
        with self._lock:
            rows = self.store.select_values(load_query("things_expired"),
                                            {"now": Literal(self.clock(), datatype=XSD.dateTime)})
            if not rows:
                return []
            ids = [str(r["id"]) for r in rows]
            self._delete(ids, [str(r["device"]) for r in rows if r.get("device")])
        for td_id in ids:
            self._emit(DirectoryEvent("thing_deleted", td_id))
        return ids

    def load_many(self, tds: Sequence[Mapping[str, Any]], *, batch: int = 250) -> int:
        """Bulk-create TDs with ids (new ones, no events): one SHACL run and one transaction per batch.

        For initial loads (benchmarks, migrations): the same validation as `put`, but a device's
        presence is not carried over and no events are sent. Returns the number stored.
        """
        done = 0
        for start in range(0, len(tds), batch):
            chunk = tds[start:start + batch]
            now = self.clock()
            g = Graph()
            owners: list[URIRef] = []
            subjects: list[URIRef] = []
            for td in chunk:
                td_id = str(td.get("id"))
                source = f"TD {td_id}"
                if self.validate:
                    check_td(td, source=source)
                reg = new_registration(None, td.get("registration") if isinstance(td.get("registration"),
                                                                                  Mapping) else None,
                                       now, max_ttl=self.max_ttl)
                doc = {k: v for k, v in td.items() if k != "registration"}
                thing, record, tg = thing_graph(doc, td_id, reg)
                check_not_foreign(self.store, thing)
                g += tg
                owners.append(record)
                subjects.append(thing)
                if is_device_td(doc):
                    info = parse_td(doc, source=source)
                    _, dg = device_graph(info)
                    g += dg
                    device = mint_device(str(info["device_id"]))
                    g.add((thing, TF.describesDevice, device))
                    owners.append(device)
            if self.validate:
                validate(g, source=f"TDs {start}..{start + len(chunk) - 1}")
            g.add((DIRECTORY, TF.revision, Literal(f"bulk-{now.timestamp()}-{start}")))
            self.store.write(g, replace_owners=owners, replace_subjects=subjects,
                             replace_values=[(DIRECTORY, TF.revision)])
            done += len(chunk)
        return done

    # -- search ------------------------------------------------------------------------------
    def sparql(self, text: str) -> SparqlAnswer:
        """Run a read-only SPARQL 1.1 query over the registry graph (TDs, devices, models, runs).

        Updates are refused (`ReadOnlyQueryError`), and so is `SERVICE`: a public read-only endpoint
        must not make this machine send requests elsewhere (federation is optional in Discovery).
        """
        if not isinstance(text, str) or not text.strip():
            raise RegistryInputError("the SPARQL query is empty")
        if len(text) > MAX_SPARQL_CHARS:
            raise RegistryInputError(f"the SPARQL query is longer than {MAX_SPARQL_CHARS} characters")
        form = read_only_form(text)
        if _SERVICE.search(_STRINGS.sub(" ", text)):
            raise RegistryInputError("federated SPARQL (SERVICE) is not supported by this directory")
        kind = {"SelectQuery": "select", "AskQuery": "ask", "ConstructQuery": "construct",
                "DescribeQuery": "describe"}[form]
        return SparqlAnswer(kind, self.store.raw(text))
