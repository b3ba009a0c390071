"""Import Turtle / JSON-LD, including graphs written in the published TinyML-schema styles.

Every import is atomic: parse (relative IRIs refused, Python's None left out), skolemize into the
source's own namespace, map and normalize (registry.published), SHACL-validate, then ONE write - or
nothing at all.

Blank-node identity: remote SPARQL stores cannot address blank nodes, so they become IRIs. rdflib's
canonical labels (cb0, cb1, ...) are the same in every file, so they are put under a namespace of
the source graph's own: `https://w3id.org/tinyfleet/id/genid/<sha256>/`, the sha256 of the graph's
canonical N-Triples. Two different graphs therefore never share a node, and the same graph imported
again (from any file, in any syntax) writes exactly the triples it wrote before.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import quote, urljoin

from rdflib import BNode, Graph, Literal, URIRef
from rdflib.compare import to_canonical_graph
from rdflib.term import Node

from registry.exceptions import RegistryInputError, StoreError, ValidationFailedError
from registry.namespaces import ID, check_iri
from registry.published import normalize, sensor_kind
from registry.store import RegistryStore
from registry.validation import validate

_REMOTE_TD_CONTEXTS = {"https://www.w3.org/2019/wot/td/v1", "https://www.w3.org/2022/wot/td/v1.1"}
_SKOLEM = str(ID) + "genid/"
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
# Parsing resolves relative IRIs against this base, so that afterwards they can be told apart from
# absolute ones (the reserved .invalid domain never names a real resource). A file's own @base wins.
_NO_BASE = "http://tinyfleet.invalid/relative/"
# Relative references that are a missing value printed by a script (Python's None, an empty string,
# "not available"): `nnet:trainingDataset <None>`, `schema:citation <N.A.>` in the published graphs.
_MISSING = {"", "None", "none", "null", "nan", "NaN", "N.A.", "n.a.", "N/A", "n/a", "NA"}


def _jsonld_offline(text: str, source: str) -> str:
    """Replace the W3C TD remote @context (unreachable offline) by the shipped local copy.

    Every other context that rdflib would fetch (a remote or file: IRI, a JSON-LD 1.1 `@import`, at
    any depth: scoped contexts in term definitions included) is refused, so importing a file never
    makes a network request or reads another local file.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryInputError(f"{source}: not valid JSON-LD ({exc})") from None
    from importlib import resources

    local = json.loads(resources.files("registry").joinpath("vocab/td-context.jsonld").read_text(encoding="utf-8"))

    def fix(ctx: object) -> object:
        if isinstance(ctx, str):
            if ctx in _REMOTE_TD_CONTEXTS:
                return local["@context"]
            raise RegistryInputError(f"{source}: remote @context {ctx!r} cannot be fetched offline; inline it")
        if isinstance(ctx, list):
            return [fix(c) for c in ctx]
        if isinstance(ctx, dict) and "@import" in ctx:  # JSON-LD 1.1: rdflib would fetch it (http:, file:, ...)
            raise RegistryInputError(f"{source}: @context @import {str(ctx['@import'])[:200]!r} would be fetched; "
                                     f"inline it")
        if ctx is not None and not isinstance(ctx, dict):
            raise RegistryInputError(f"{source}: @context must be an object, a list or a W3C TD context IRI, "
                                     f"not {type(ctx).__name__}")
        return ctx

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "@context" in node:
                node["@context"] = fix(node["@context"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return json.dumps(doc)


def _td_base(text: str) -> str | None:
    """The base a Thing Description declares by its own absolute `id`, for its relative references.

    Why: TD 1.1 names security schemes by key (`"security": ["nosec_sc"]`), which JSON-LD turns into
    relative IRIs. They belong to the TD, so they resolve under a namespace of its id
    (`https://w3id.org/tinyfleet/id/td/<id>/`), a base the document itself declares.
    """
    doc = json.loads(text)
    tid = doc.get("id", doc.get("@id")) if isinstance(doc, dict) else None
    if not isinstance(tid, str) or not _ABSOLUTE.match(tid):
        return None
    return f"{ID}td/{quote(tid, safe='')}/"


def parse_file(path: Path, *, base: str | None = None, drop_relative: bool = False) -> Graph:
    """Parse a .ttl/.nt/.jsonld/.json file into a fresh graph; one-line error naming the file.

    Relative IRIs are resolved against the file's own @base or against `base` (a Thing Description's
    own absolute `id` declares one, see `_td_base`); with neither, a relative IRI is refused (never
    resolved against the working directory) unless `drop_relative` says to leave its triples out. A
    missing value printed as a relative IRI (`<None>`, `<>`, `<N.A.>`) is always left out.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryInputError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise RegistryInputError(f"{path}: not UTF-8 text") from None
    suffix = path.suffix.lower()
    fmt = {".ttl": "turtle", ".turtle": "turtle", ".nt": "nt", ".jsonld": "json-ld", ".json": "json-ld",
           ".rdf": "xml", ".owl": "xml", ".n3": "n3"}.get(suffix)
    if fmt is None:
        raise RegistryInputError(f"{path}: unknown RDF format {suffix!r} (use .ttl, .nt or .jsonld)")
    if fmt == "json-ld":
        text = _jsonld_offline(text, str(path))
        base = base or _td_base(text)
    g = Graph()
    try:
        g.parse(data=text, format=fmt, publicID=_NO_BASE)
    except RegistryInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; all mean "bad file"
        lines = str(exc).strip().splitlines()
        detail = lines[0][:200] if lines else type(exc).__name__
        raise RegistryInputError(f"{path}: invalid {fmt} ({detail})") from None
    return _resolve_relative(g, str(path), base, drop_relative)


def _resolve_relative(g: Graph, source: str, base: str | None, drop: bool) -> Graph:
    """Drop triples whose IRI is a printed missing value; rebase, drop or refuse other relative IRIs."""
    relative = {t for triple in g for t in triple if isinstance(t, URIRef) and str(t).startswith(_NO_BASE)}
    if not relative:
        return g
    missing = {t for t in relative if str(t)[len(_NO_BASE):] in _MISSING}
    others = sorted(relative - missing)
    if others and base is None and not drop:
        ref = str(others[0])[len(_NO_BASE):]
        raise RegistryInputError(f"{source}: relative IRI <{ref}> and no base to resolve it against "
                                 f"({len(others)} in all); add '@base <...>' to the file, pass --base IRI, "
                                 "or --drop-relative to leave those triples out")
    if base is None:
        missing |= set(others)
        others = []
    rebased: dict[Node, Node] = {t: URIRef(urljoin(base or "", str(t)[len(_NO_BASE):])) for t in others}
    out = _empty_like(g)
    for s, p, o in g:
        if s in missing or p in missing or o in missing:
            continue
        out.add((rebased.get(s, s), rebased.get(p, p), rebased.get(o, o)))
    return out


def _empty_like(g: Graph) -> Graph:
    """A new graph with `g`'s prefix bindings (so exports keep the source's prefixes)."""
    out = Graph()
    for prefix, ns in g.namespaces():
        out.bind(prefix, ns)
    return out


def _digest(canon: Graph) -> str:
    """sha256 of a canonically labelled graph's sorted N-Triples (the same graph in any syntax)."""
    lines = sorted(f"{s.n3()} {p.n3()} {o.n3()} ." for s, p, o in canon)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def skolemize(g: Graph) -> Graph:
    """Blank nodes -> IRIs under the graph's own namespace (remote stores cannot address blank nodes).

    Canonical labelling gives labels that depend only on the graph; the namespace
    `<https://w3id.org/tinyfleet/id/genid/<graph sha256>/>` keeps one source's `cb0` apart from every
    other source's `cb0` (rdflib labels the first blank node of every file `cb0`).
    """
    if not any(isinstance(t, BNode) for triple in g for t in triple):
        return g
    canon = to_canonical_graph(g)
    prefix = f"{_SKOLEM}{_digest(canon)}/"
    out = _empty_like(g)
    for s, p, o in canon:
        out.add((_sk(s, prefix), p, _sk(o, prefix)))
    return out


def _sk(node: Node, prefix: str) -> Node:
    return URIRef(prefix + str(node)) if isinstance(node, BNode) else node


def check_iris(g: Graph, source: str) -> None:
    """Reject a graph holding a malformed IRI before it reaches a strict endpoint."""
    for triple in g:
        for t in triple:
            if isinstance(t, URIRef):
                check_iri(str(t), what=f"{source}: IRI")
            elif isinstance(t, Literal) and t.datatype is not None:  # a datatype IRI reaches the store too
                check_iri(str(t.datatype), what=f"{source}: datatype IRI")


def prepare(path: Path, *, base: str | None = None, drop_relative: bool = False) -> Graph:
    """Parse, skolemize, normalize and validate a file; the graph that `import_file` would write."""
    if base is not None:
        check_iri(base, what="--base")
    g = skolemize(parse_file(path, base=base, drop_relative=drop_relative))
    if len(g) == 0:
        raise RegistryInputError(f"{path}: no triples")
    check_iris(g, str(path))
    problems = normalize(g)
    if problems:
        raise ValidationFailedError(str(path), sorted(set(problems)))
    validate(g, source=str(path))
    return g


def import_file(store: RegistryStore, path: Path | str, *, base: str | None = None,
                drop_relative: bool = False) -> int:
    """Import one file atomically; returns the number of triples written.

    Parameters
    ----------
    base : str, optional
        IRI that relative IRIs are resolved against when the file declares no @base.
    drop_relative : bool, default=False
        Leave out triples with a relative IRI that has no base (instead of refusing the file).
    """
    g = prepare(Path(path), base=base, drop_relative=drop_relative)
    try:
        return store.write(g)
    except StoreError as exc:  # whatever the checks above missed: still name the file (the store is unchanged)
        raise StoreError(f"{path}: {exc}") from None


__all__ = ["check_iris", "import_file", "parse_file", "prepare", "sensor_kind", "skolemize"]
