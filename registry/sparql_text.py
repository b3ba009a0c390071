"""The text of SPARQL requests: N-Triples payloads, replace-writes, bound parameters, the write stamp.

Split from registry/store.py (which runs requests) so each stays small; store re-exports the names
it always had (`ntriples`, `write_request`, `inline_bindings`). Bound values are serialized by
rdflib's `n3()`, the escaping rdflib uses for its own VALUES; no user text is pasted in any other way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from rdflib import BNode, Graph, Literal, URIRef
from rdflib.term import Node

from registry.exceptions import StoreError
from registry.namespaces import META_GRAPH, PREFIXES, REGISTRY_GRAPH, REGISTRY_NODE, TF

Bindings = Mapping[str, Node]

_WHERE = re.compile(r"\bWHERE\s*\{", re.IGNORECASE)


def prefix_header() -> str:
    """PREFIX lines of the standard prefixes (for endpoints, which have no default prefixes)."""
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
    for subject in replace_subjects:
        ops.append(f"DELETE WHERE {{ GRAPH {g} {{ {subject.n3()} ?p ?o }} }}")
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


def inline_values(query: str, var: str, terms: Sequence[Node]) -> str:
    """Put `VALUES ?var { t1 t2 ... }` at the start of the query's first WHERE group (one column, many rows)."""
    m = _WHERE.search(query)
    if m is None:
        raise StoreError("internal: a parametrized query needs an explicit 'WHERE {'")
    block = f" VALUES ?{var} {{ {' '.join(_node_to_sparql(t) for t in terms)} }} "
    return query[: m.end()] + block + query[m.end():]


def stamp_request(stamp: str) -> str:
    """The update that replaces the registry's write stamp, keeping the one it replaces as the previous.

    Appended to every update request, so the stamp changes in the same transaction as the data.
    """
    s, p, q, g = REGISTRY_NODE.n3(), TF.stamp.n3(), TF.previousStamp.n3(), META_GRAPH.n3()
    return (f"DELETE {{ GRAPH {g} {{ {s} {p} ?old . {s} {q} ?older }} }} "
            f"INSERT {{ GRAPH {g} {{ {s} {p} {Literal(stamp).n3()} . {s} {q} ?old }} }} "
            f"WHERE {{ OPTIONAL {{ GRAPH {g} {{ {s} {p} ?old }} }} OPTIONAL {{ GRAPH {g} {{ {s} {q} ?older }} }} }}")


def _node_to_sparql(node: Node) -> str:
    if isinstance(node, BNode):
        raise StoreError("internal: blank nodes cannot be bound")
    return node.n3()



__all__ = ["Bindings", "OWNED_DEPTH", "inline_bindings", "inline_values", "ntriples", "prefix_header",
           "stamp_request", "write_request"]
