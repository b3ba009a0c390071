"""The only place that talks to a triple store.

Three backends behind one small surface, so every query and import runs unchanged on each:

* `EmbeddedStore` - Oxigraph inside the process through oxrdflib (`Graph(store="Oxigraph")`), on
  disk (default: the user's data dir) or in memory for tests. Fast (SPARQL runs in Rust).
* `RemoteStore` - any SPARQL 1.1 query/update endpoint through rdflib's `SPARQLUpdateStore`
  (tested against `oxigraph serve`). JSON results (XML is flaky on some servers), no blank nodes.
* `MemoryStore` - rdflib's own in-memory store, kept only as the benchmark baseline.

Everything lives in one named graph (`REGISTRY_GRAPH`); queries see it as their default graph.

Atomicity: every write is ONE SPARQL update request (`DELETE ... ; INSERT DATA {...}`), which
Oxigraph (embedded and server) applies in one transaction: all or nothing. Callers validate the
whole description first, then call `write` once. The same request also changes the write stamp
in `META_GRAPH`, which is how the capability index (registry.capabilities) knows it is current.

Parameters are bound as RDF terms (`initBindings`), never pasted into query text as strings.
rdflib's own evaluator (MemoryStore) binds them natively. The other two transports both have a
catch: Oxigraph's substitutions only accept variables that are projected, and rdflib's
SPARQLStore appends `VALUES` after the whole query, so FILTERs inside the WHERE group run before
the parameters are bound and silently drop every row. Both Oxigraph stores therefore receive the
bindings as a `VALUES` block at the start of the WHERE group, each term serialized by rdflib's
`n3()` (the escaping rdflib uses for its own VALUES). Queries introduce parameters only in their
top-level group and not inside sub-selects (registry/queries/README.md), so the three transports
give identical rows - which the tests check.
"""

from __future__ import annotations

import contextlib
import urllib.error
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdflib import Dataset, Graph, URIRef
from rdflib.term import Identifier, Node, Variable

from registry.exceptions import StoreError
from registry.namespaces import META_GRAPH, PREFIXES, REGISTRY_GRAPH
from registry.queries import load_query
from registry.sparql_text import (
    Bindings,
    inline_bindings,
    inline_values,
    ntriples,
    prefix_header,
    stamp_request,
    write_request,
)
from registry.values import oxigraph_value, python_value

if TYPE_CHECKING:
    from registry.capabilities import CapabilityIndex

Row = dict[str, Node]


def _touched(graph: Graph, owners: Sequence[URIRef], values: Sequence[tuple[URIRef, URIRef]]) -> set[URIRef]:
    """IRIs whose capability rows a write may have changed (subjects written, owners replaced)."""
    return {s for s in graph.subjects() if isinstance(s, URIRef)} | set(owners) | {s for s, _ in values}


def _rows(result: Any) -> list[Row]:
    out: list[Row] = []
    names = [str(v) for v in (result.vars or [])]
    for r in result:
        out.append({n: r[n] for n in names if r[n] is not None})
    return out


class RegistryStore:
    """What the registry needs from a store: select, ask, one atomic write, export, size."""

    kind = "abstract"
    graph_iri: URIRef = REGISTRY_GRAPH
    shared = False
    """True when other processes may write the store too (a remote endpoint)."""
    use_index = True
    """Answer matches from the capability index (False: always SPARQL, e.g. to cross-check)."""
    index_path: Path | None = None
    _index: CapabilityIndex | None = None
    _index_verified = False

    def select(self, query: str, bindings: Bindings | None = None) -> list[Row]:
        """Run a SELECT with the standard prefixes; rows map variable names to RDF terms."""
        raise NotImplementedError

    def select_values(self, query: str, bindings: Bindings | None = None) -> list[dict[str, Any]]:
        """Like `select`, but each value already JSON-ready (`registry.values.python_value`).

        Why a second entry point: the query API only needs Python values, and a store that can
        produce them without building rdflib terms (the embedded one) answers large matches
        several times faster. Unbound variables are absent from a row, as in `select`.
        """
        return [{k: python_value(v) for k, v in r.items()} for r in self.select(query, bindings)]

    def ask(self, query: str, bindings: Bindings | None = None) -> bool:
        """Run an ASK with the standard prefixes."""
        raise NotImplementedError

    def raw(self, query: str) -> Any:
        """rdflib Result of an arbitrary read query (for power users)."""
        raise NotImplementedError

    def _apply(self, request: str) -> None:
        """Run one SPARQL update request atomically on the backend."""
        raise NotImplementedError

    def _meta_rows(self, query: str) -> list[dict[str, Any]]:
        """Rows of a query over `META_GRAPH` as its default graph."""
        raise NotImplementedError

    def read_stamps(self) -> tuple[str | None, str | None]:
        """(write stamp, the stamp it replaced), None before the first write."""
        rows = self._meta_rows(load_query("registry_stamp"))
        row = rows[0] if rows else {}
        return (str(row["stamp"]) if "stamp" in row else None, str(row["previous"]) if "previous" in row else None)

    def read_stamp(self) -> str | None:
        """The write stamp in `META_GRAPH` (None before the first write)."""
        return self.read_stamps()[0]

    def update(self, request: str) -> str:
        """Apply one SPARQL update request atomically, with a new write stamp; return the stamp.

        A capability index held here no longer matches and is rebuilt on next use (`write` keeps
        it current instead, knowing what it changed).
        """
        stamp = uuid.uuid4().hex
        self._apply(f"{request} ;\n{stamp_request(stamp)}" if request.strip() else stamp_request(stamp))
        self._index = None
        return stamp

    def write(self, graph: Graph, *, replace_owners: Sequence[URIRef] = (),
              replace_values: Sequence[tuple[URIRef, URIRef]] = (), replace_subjects: Sequence[URIRef] = ()) -> int:
        """Insert `graph` (replacing what is named) in one transaction; return the triples written.

        The capability index, when loaded and current, is refreshed for the entities touched.
        """
        request = write_request(graph, replace_owners=replace_owners, replace_values=replace_values,
                                replace_subjects=replace_subjects, graph_iri=self.graph_iri)
        if not request:
            return 0
        index = self._index if self._index is not None else self._saved_current_index()
        stamp = self.update(request)
        if index is None:
            return len(graph)
        if self.shared and self.read_stamps() != (stamp, index.stamp):
            return len(graph)  # another client wrote before or after us: rebuilt on next use
        index.refresh(self, _touched(graph, [*replace_owners, *replace_subjects], replace_values), stamp=stamp)
        if not self.shared or self.read_stamp() == stamp:  # and nobody wrote during the refresh
            self._index = index
        return len(graph)

    def _saved_current_index(self) -> CapabilityIndex | None:
        """The index saved next to the store if it matches the graph (so a write keeps it current)."""
        if not self.use_index or self.index_path is None or not self.index_path.exists():
            return None
        from registry.capabilities import CapabilityIndex

        index = CapabilityIndex.load(self.index_path)
        return index if index is not None and index.stamp == self.read_stamp() else None

    def select_values_in(self, query: str, var: str, terms: Sequence[Node]) -> list[dict[str, Any]]:
        """`select_values` with `VALUES ?var { terms }` (many rows of one parameter)."""
        return self.select_values(inline_values(query, var, terms))

    def capabilities(self) -> CapabilityIndex | None:
        """The capability index, current with the graph (loaded, checked or rebuilt); None if disabled."""
        if not self.use_index:
            return None
        from registry.capabilities import CapabilityIndex

        index = self._index
        if index is None and self.index_path is not None:
            index = CapabilityIndex.load(self.index_path)
            self._index_verified = False
        if index is not None and (self.shared or not self._index_verified) and index.stamp != self.read_stamp():
            index = None
        if index is None:
            index = CapabilityIndex.build(self)
        self._index, self._index_verified = index, True
        return index

    def save_index(self) -> None:
        """Write a changed capability index next to an embedded store (also done by `close`)."""
        if self._index is not None and self._index.dirty and self.index_path is not None:
            with contextlib.suppress(OSError):  # a cache: rebuilt from the graph next time
                self._index.save(self.index_path)

    def triples_graph(self) -> Graph:
        """Every triple of the registry graph as an in-memory rdflib Graph (for export)."""
        g = Graph()
        for p, ns in PREFIXES.items():
            g.bind(p, ns)
        for r in self.select(load_query("all_triples")):
            g.add((r["s"], r["p"], r["o"]))
        return g

    def __len__(self) -> int:
        rows = self.select_values(load_query("count_triples"))
        return int(rows[0]["n"]) if rows else 0

    def close(self) -> None:
        """Release files or connections."""

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedStore(RegistryStore):
    """Oxigraph in this process via oxrdflib; `path=None` keeps everything in memory.

    Why pyoxigraph is opened here and handed to oxrdflib: writes then go to Oxigraph's own
    transactional `update`, while reads still use rdflib's `Graph.query` with `initBindings`.
    """

    kind = "embedded"

    def __init__(self, path: Path | None = None) -> None:
        import pyoxigraph as ox
        from oxrdflib import OxigraphStore

        self.path = path
        try:
            if path is None:
                self._ox = ox.Store()
            else:
                Path(path).mkdir(parents=True, exist_ok=True)
                self._ox = ox.Store(str(path))
        except OSError as exc:
            raise StoreError(f"registry store {path}: cannot open ({_first_line(exc)}); "
                             "is another tinyfleet or oxigraph process using it?") from None
        if path is not None:
            self.index_path = Path(str(Path(path).resolve()) + ".capabilities.json")
        self._graph = Graph(store=OxigraphStore(store=self._ox), identifier=self.graph_iri)
        self._ns = {p: URIRef(str(ns)) for p, ns in PREFIXES.items()}
        self._prefixes = {p: str(ns) for p, ns in PREFIXES.items()}
        self._ox_graph = ox.NamedNode(str(self.graph_iri))

    def select(self, query: str, bindings: Bindings | None = None) -> list[Row]:
        return _rows(self._graph.query(inline_bindings(query, bindings or {}), initNs=self._ns))

    def select_values(self, query: str, bindings: Bindings | None = None) -> list[dict[str, Any]]:
        """Run the SELECT on pyoxigraph itself and convert each value once, straight to Python.

        Same query text (VALUES-bound parameters, standard prefixes, registry graph as default
        graph) as `select`; the rows equal `RegistryStore.select_values` on the other stores.
        """
        return self._ox_rows(inline_bindings(query, bindings or {}), self._ox_graph)

    def _ox_rows(self, text: str, default_graph: Any) -> list[dict[str, Any]]:
        import pyoxigraph as ox

        try:
            result = self._ox.query(text, prefixes=self._prefixes, default_graph=default_graph)
        except (SyntaxError, OSError, ValueError) as exc:
            raise StoreError(f"registry store {self.path or 'memory'}: query failed: {_first_line(exc)}") from None
        if not isinstance(result, ox.QuerySolutions):
            raise StoreError("internal: select_values needs a SELECT query")
        names = [v.value for v in result.variables]
        out: list[dict[str, Any]] = []
        for solution in result:
            row = {}
            for i, n in enumerate(names):
                term = solution[i]
                if term is not None:
                    row[n] = oxigraph_value(term)
            out.append(row)
        return out

    def ask(self, query: str, bindings: Bindings | None = None) -> bool:
        return bool(self._graph.query(inline_bindings(query, bindings or {}), initNs=self._ns).askAnswer)

    def raw(self, query: str) -> Any:
        """rdflib Result of an arbitrary read query (for power users)."""
        return self._graph.query(query, initNs=self._ns)

    def _apply(self, request: str) -> None:
        try:
            self._ox.update(request, prefixes=self._prefixes)
        except (SyntaxError, OSError, ValueError) as exc:
            raise StoreError(f"registry store {self.path or 'memory'}: update failed: {_first_line(exc)}") from None

    def _meta_rows(self, query: str) -> list[dict[str, Any]]:
        import pyoxigraph as ox

        return self._ox_rows(query, ox.NamedNode(str(META_GRAPH)))

    def close(self) -> None:
        if getattr(self, "_ox", None) is None:
            return
        self.save_index()
        if self.path is not None:
            self._ox.flush()
        # Oxigraph releases its directory lock when the last reference to the store goes away.
        self._graph = None  # type: ignore[assignment]
        self._ox = None  # type: ignore[assignment]


class RemoteStore(RegistryStore):
    """A SPARQL 1.1 endpoint pair (query + update URLs) through rdflib's SPARQLUpdateStore."""

    kind = "remote"
    shared = True

    def __init__(self, query_endpoint: str, update_endpoint: str | None = None, *,
                 auth: tuple[str, str] | None = None) -> None:
        from rdflib.plugins.stores.sparqlstore import SPARQLUpdateStore

        self.query_endpoint = query_endpoint
        self.update_endpoint = update_endpoint or query_endpoint
        self._store = SPARQLUpdateStore(query_endpoint=query_endpoint, update_endpoint=self.update_endpoint,
                                        returnFormat="json", auth=auth, context_aware=True, autocommit=True)
        self._graph = Graph(store=self._store, identifier=self.graph_iri)
        self._meta = Graph(store=self._store, identifier=META_GRAPH)
        self._header = prefix_header()

    def _run(self, query: str, bindings: Bindings | None, graph: Graph | None = None) -> Any:
        text = self._header + inline_bindings(query, bindings or {})
        try:
            return (graph or self._graph).query(text)
        except (ValueError, OSError) as exc:
            # rdflib's GET path turns every urllib error into a bare ValueError; the cause is its context.
            cause = exc if isinstance(exc, OSError) else (exc.__context__ or exc)
            if isinstance(cause, urllib.error.HTTPError):
                raise StoreError(f"SPARQL endpoint {self.query_endpoint}: HTTP {cause.code} {cause.reason}") from None
            if isinstance(cause, (urllib.error.URLError, ConnectionError, TimeoutError)):
                raise StoreError(f"SPARQL endpoint {self.query_endpoint} unreachable: {_first_line(cause)}") from None
            raise StoreError(f"SPARQL endpoint {self.query_endpoint}: query failed: {_first_line(exc)}") from None

    def select(self, query: str, bindings: Bindings | None = None) -> list[Row]:
        return _rows(self._run(query, bindings))

    def ask(self, query: str, bindings: Bindings | None = None) -> bool:
        return bool(self._run(query, bindings).askAnswer)

    def raw(self, query: str) -> Any:
        """rdflib Result of an arbitrary read query (for power users)."""
        return self._run(query, None)

    def _meta_rows(self, query: str) -> list[dict[str, Any]]:
        return [{k: python_value(v) for k, v in r.items()} for r in _rows(self._run(query, None, self._meta))]

    def _apply(self, request: str) -> None:
        try:
            self._store.update(self._header + request)
        except urllib.error.HTTPError as exc:
            raise StoreError(f"SPARQL update endpoint {self.update_endpoint}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise StoreError(f"SPARQL update endpoint {self.update_endpoint} unreachable: {_first_line(exc)}") from None

    def close(self) -> None:
        self._store.close()


class MemoryStore(RegistryStore):
    """rdflib's default in-memory store: the pure-Python baseline for benchmarks."""

    kind = "rdflib-memory"

    def __init__(self) -> None:
        self._ds = Dataset()
        self._graph = self._ds.graph(self.graph_iri)
        self._ns = {p: URIRef(str(ns)) for p, ns in PREFIXES.items()}

    def select(self, query: str, bindings: Bindings | None = None) -> list[Row]:
        return _rows(self._graph.query(query, initNs=self._ns, initBindings=_init(bindings)))

    def ask(self, query: str, bindings: Bindings | None = None) -> bool:
        return bool(self._graph.query(query, initNs=self._ns, initBindings=_init(bindings)).askAnswer)

    def raw(self, query: str) -> Any:
        """rdflib Result of an arbitrary read query."""
        return self._graph.query(query, initNs=self._ns)

    def _apply(self, request: str) -> None:
        self._ds.update(request, initNs=self._ns)

    def _meta_rows(self, query: str) -> list[dict[str, Any]]:
        meta = self._ds.graph(META_GRAPH)
        return [{k: python_value(v) for k, v in r.items()} for r in _rows(meta.query(query, initNs=self._ns))]


def _init(bindings: Bindings | None) -> dict[str, Identifier]:
    """Bindings as rdflib's initBindings wants them: RDF terms (URIRef, Literal, BNode), never bare Nodes."""
    out: dict[str, Identifier] = {}
    for name, value in (bindings or {}).items():
        if not isinstance(value, Identifier):
            raise TypeError(f"binding {name!r}: {value!r} is not an RDF term")
        out[name] = value
    return out


def default_store_path() -> Path:
    """Where the embedded registry lives unless `--store` says otherwise."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("tinyfleet")) / "registry"


def open_store(path: Path | str | None = None, *, endpoint: str | None = None, update_endpoint: str | None = None,
               auth: tuple[str, str] | None = None, memory: bool = False) -> RegistryStore:
    """Open the registry: a remote endpoint if given, else the embedded store at `path`.

    Parameters
    ----------
    path : path, default=None
        Directory of the embedded store; None means `default_store_path()`.
    endpoint, update_endpoint : str, default=None
        SPARQL 1.1 query and update URLs; the update URL defaults to the query URL.
    auth : (user, password), default=None
        HTTP Basic credentials for the endpoint.
    memory : bool, default=False
        An in-memory embedded store (tests).
    """
    if endpoint:
        from registry.namespaces import check_iri

        check_iri(endpoint, what="SPARQL endpoint")
        if update_endpoint:
            check_iri(update_endpoint, what="SPARQL update endpoint")
        return RemoteStore(endpoint, update_endpoint, auth=auth)
    if memory:
        return EmbeddedStore(None)
    return EmbeddedStore(Path(path) if path is not None else default_store_path())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = ["EmbeddedStore", "MemoryStore", "RegistryStore", "RemoteStore", "Row", "Variable", "default_store_path",
           "inline_bindings", "ntriples", "open_store", "write_request"]
