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
whole description first, then call `write` once.

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

import re
import urllib.error
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rdflib import BNode, Dataset, Graph, Literal, URIRef
from rdflib.term import Identifier, Node, Variable

from registry.exceptions import StoreError
from registry.namespaces import PREFIXES, REGISTRY_GRAPH
from registry.queries import load_query
from registry.values import oxigraph_value, python_value

Row = dict[str, Node]
Bindings = Mapping[str, Node]

_WHERE = re.compile(r"\bWHERE\s*\{", re.IGNORECASE)


def _prefix_header() -> str:
    return "".join(f"PREFIX {p}: <{ns}>\n" for p, ns in PREFIXES.items())


def ntriples(triples: Iterable[tuple[Node, Node, Node]]) -> str:
    """N-Triples text of `triples`; refuses blank nodes (remote SPARQL stores cannot address them)."""
    lines = []
    for s, p, o in triples:
        if isinstance(s, BNode) or isinstance(o, BNode):
            raise StoreError("internal: blank node reached the store; skolemize first")
        lines.append(f"{s.n3()} {p.n3()} {o.n3()} .")
    return "\n".join(lines)


def write_request(graph: Graph, *, replace_owners: Sequence[URIRef] = (),
                  replace_values: Sequence[tuple[URIRef, URIRef]] = (), replace_subjects: Sequence[URIRef] = (),
                  graph_iri: URIRef = REGISTRY_GRAPH) -> str:
    """One SPARQL update that deletes what is replaced and inserts `graph`, in one transaction.

    Parameters
    ----------
    graph : Graph
        The new, already validated triples (IRIs only).
    replace_owners : sequence of URIRef
        Descriptions to replace: the owner and its sub-resources (IRIs under `<owner>/` reached from the
        owner through at most `OWNED_DEPTH` links between such IRIs) lose all their triples.
    replace_values : sequence of (subject, predicate)
        Single values to replace (e.g. a device's `tf:online`), without touching the rest.
    replace_subjects : sequence of URIRef
        Subjects that lose their own triples only, with no walk into sub-resources (a Thing
        Description's `id` is a foreign IRI: other IRIs under its prefix are not its own).
    """
    g = graph_iri.n3()
    ops: list[str] = []
    for owner in replace_owners:
        ops.append(_delete_owned(owner, g))
    for s in replace_subjects:
        ops.append(f"DELETE WHERE {{ GRAPH {g} {{ {s.n3()} ?p ?o }} }}")
    for s, p in replace_values:
        ops.append(f"DELETE WHERE {{ GRAPH {g} {{ {s.n3()} {p.n3()} ?o }} }}")
    body = ntriples(graph)
    if body:
        ops.append(f"INSERT DATA {{ GRAPH {g} {{\n{body}\n}} }}")
    return " ;\n".join(ops)


OWNED_DEPTH = 4
"""How deep a description's sub-resources may nest (device -> mcu -> capability -> memory is 3)."""


def _delete_owned(owner: URIRef, g: str) -> str:
    """A DELETE of `owner`'s triples and of its sub-resources', found by index lookups from the owner.

    Why not `FILTER(STRSTARTS(STR(?s), "<owner>/"))` over `?s ?p ?o`: that visits every triple of
    the registry (2 s at 680,000 triples). Here each hop is an index lookup on a bound subject and
    only objects under `<owner>/` are followed, so replacing one description costs milliseconds
    whatever the store's size. Sub-resources are minted by `namespaces.part(owner, ...)` and always
    linked from the owner (docs/registry.md), which is what makes the walk complete.
    """
    o = owner.n3()
    prefix = Literal(str(owner) + "/").n3()
    hops = [f"{{ BIND({o} AS ?s) }}"]
    for depth in range(1, OWNED_DEPTH + 1):
        chain, prev = [], o
        for k in range(1, depth + 1):
            node = "?s" if k == depth else f"?x{k}"
            chain.append(f"{prev} ?l{k} {node} . FILTER(isIRI({node}) && STRSTARTS(STR({node}), {prefix}))")
            prev = node
        hops.append("{ " + " ".join(chain) + " }")
    union = " UNION ".join(hops)
    return (f"DELETE {{ GRAPH {g} {{ ?s ?p ?o }} }} WHERE {{ GRAPH {g} {{ "
            f"{{ SELECT DISTINCT ?s WHERE {{ {union} }} }} ?s ?p ?o }} }}")


def inline_bindings(query: str, bindings: Bindings) -> str:
    """Put `bindings` as a VALUES block at the start of the query's first WHERE group.

    Why not rdflib's own initBindings for endpoints: it appends VALUES after the whole query, so
    FILTERs inside the WHERE group run before the parameters are bound and silently drop rows.
    """
    if not bindings:
        return query
    m = _WHERE.search(query)
    if m is None:
        raise StoreError("internal: a parametrized query needs an explicit 'WHERE {'")
    names = list(bindings)
    values = " ".join(_node_to_sparql(bindings[n]) for n in names)
    block = f" VALUES ({' '.join('?' + n for n in names)}) {{ ({values}) }} "
    return query[: m.end()] + block + query[m.end():]


def _node_to_sparql(node: Node) -> str:
    if isinstance(node, BNode):
        raise StoreError("internal: blank nodes cannot be bound")
    return node.n3()


def _terms(bindings: Bindings | None) -> dict[str, Identifier]:
    """Bindings as rdflib's initBindings wants them: RDF terms (URIRef, Literal, BNode), never bare Nodes."""
    out: dict[str, Identifier] = {}
    for name, value in (bindings or {}).items():
        if not isinstance(value, Identifier):
            raise TypeError(f"binding {name!r}: {value!r} is not an RDF term")
        out[name] = value
    return out


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

    def update(self, request: str) -> None:
        """Apply one SPARQL update request atomically (internal: built by `write_request`)."""
        raise NotImplementedError

    def write(self, graph: Graph, *, replace_owners: Sequence[URIRef] = (),
              replace_values: Sequence[tuple[URIRef, URIRef]] = (), replace_subjects: Sequence[URIRef] = ()) -> int:
        """Insert `graph` (replacing what is named) in one transaction; return the triples written."""
        request = write_request(graph, replace_owners=replace_owners, replace_values=replace_values,
                                replace_subjects=replace_subjects, graph_iri=self.graph_iri)
        if request:
            self.update(request)
        return len(graph)

    def triples_graph(self) -> Graph:
        """Every triple of the registry graph as an in-memory rdflib Graph (for export)."""
        g = Graph()
        for p, ns in PREFIXES.items():
            g.bind(p, ns)
        for r in self.select(load_query("all_triples")):
            g.add((r["s"], r["p"], r["o"]))
        return g

    def __len__(self) -> int:
        rows = self.select(load_query("count_triples"))
        return int(str(rows[0]["n"])) if rows else 0

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
        from pyoxigraph import QuerySolutions

        text = inline_bindings(query, bindings or {})
        try:
            result = self._ox.query(text, prefixes=self._prefixes, default_graph=self._ox_graph)
        except (SyntaxError, OSError, ValueError) as exc:
            raise StoreError(f"registry store {self.path or 'memory'}: query failed: {_first_line(exc)}") from None
        if not isinstance(result, QuerySolutions):
            raise StoreError(f"registry store {self.path or 'memory'}: select_values needs a SELECT query")
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

    def update(self, request: str) -> None:
        try:
            self._ox.update(request)
        except (SyntaxError, OSError, ValueError) as exc:
            raise StoreError(f"registry store {self.path or 'memory'}: update failed: {_first_line(exc)}") from None

    def close(self) -> None:
        if getattr(self, "_ox", None) is None:
            return
        if self.path is not None:
            self._ox.flush()
        # Oxigraph releases its directory lock when the last reference to the store goes away.
        del self._graph, self._ox


class RemoteStore(RegistryStore):
    """A SPARQL 1.1 endpoint pair (query + update URLs) through rdflib's SPARQLUpdateStore."""

    kind = "remote"

    def __init__(self, query_endpoint: str, update_endpoint: str | None = None, *,
                 auth: tuple[str, str] | None = None) -> None:
        from rdflib.plugins.stores.sparqlstore import SPARQLUpdateStore

        self.query_endpoint = query_endpoint
        self.update_endpoint = update_endpoint or query_endpoint
        self._store = SPARQLUpdateStore(query_endpoint=query_endpoint, update_endpoint=self.update_endpoint,
                                        returnFormat="json", auth=auth, context_aware=True, autocommit=True)
        self._graph = Graph(store=self._store, identifier=self.graph_iri)
        self._header = _prefix_header()

    def _run(self, query: str, bindings: Bindings | None) -> Any:
        text = self._header + inline_bindings(query, bindings or {})
        try:
            return self._graph.query(text)
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

    def update(self, request: str) -> None:
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
        return _rows(self._graph.query(query, initNs=self._ns, initBindings=_terms(bindings)))

    def ask(self, query: str, bindings: Bindings | None = None) -> bool:
        return bool(self._graph.query(query, initNs=self._ns, initBindings=_terms(bindings)).askAnswer)

    def raw(self, query: str) -> Any:
        """rdflib Result of an arbitrary read query."""
        return self._graph.query(query, initNs=self._ns)

    def update(self, request: str) -> None:
        self._ds.update(request, initNs=self._ns)


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
