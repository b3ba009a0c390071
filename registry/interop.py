"""Import Turtle / JSON-LD, including graphs written in the published TinyML-schema style.

The published knowledge graphs (github.com/Haoyu-R/How-to-Manage-TinyML-at-Scale,
github.com/tinyml-schema-collab/tinyml-schema) state memory in kilobytes through nested nodes:
a model's `s3n:hasProcedureFeature [ ssn-system:inCondition [ a s3n:Memory (or demo:RAM,
s3n_extend:Flash, ...) ; schema:minValue 80 ; schema:unitCode om:kilobyte ] ]`, a board's
`ssn:hasSubSystem [ a s3n:MicroController ; s3n:hasSystemCapability [ ssn-system:hasSystemProperty
[ a demo:RAM ; schema:value 256 ; schema:unitCode om:kilobyte ] ] ]`, sensors as typed subsystems,
and a model's sensors as `sensor ssn_extend:provideInput input`. `normalize` derives the registry's
byte-exact `tf:` figures from those nodes, so the same queries answer on both kinds of data.

Every import is atomic: parse, skolemize (deterministically, so importing a file twice adds
nothing), normalize, SHACL-validate, then ONE write - or nothing at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from rdflib import BNode, Graph, Literal, URIRef
from rdflib.compare import to_canonical_graph
from rdflib.namespace import RDF, RDFS
from rdflib.term import Node

from registry.exceptions import RegistryInputError, StoreError, ValidationFailedError
from registry.ingest_device import set_sensor_kinds_summary
from registry.namespaces import ID, NNET, S3N, SCHEMA, SSN, SSNS, TD, TF, check_iri
from registry.store import RegistryStore
from registry.validation import validate

# Unit IRIs of OM 2 (as IRIs, or as the "om:kilobyte" strings some published TDs carry).
_UNIT_BYTES = {"byte": 1, "kilobyte": 1000, "kibibyte": 1024, "megabyte": 1_000_000, "mebibyte": 1 << 20}
# Sensor class local names (lower-case, "sensor" suffix dropped) -> sensor kind keys.
_SENSOR_SYNONYMS = {"thermometer": "temperature", "imager": "camera", "image": "camera", "mic": "microphone",
                    "hygrometer": "humidity", "carbondioxide": "co2", "barometer": "pressure", "pir": "motion",
                    "illuminance": "light", "photodiode": "light"}
_NOT_SENSOR_KINDS = {"", "other", "sensor", "system", "thing", "microcontroller", "platform", "smart"}
_REMOTE_TD_CONTEXTS = {"https://www.w3.org/2019/wot/td/v1", "https://www.w3.org/2022/wot/td/v1.1"}
_SKOLEM = str(ID) + "genid/"


def _local(iri: object) -> str:
    text = str(iri)
    for sep in ("#", "/", ":"):
        if sep in text:
            text = text.rsplit(sep, 1)[-1]
    return text.lower()


def sensor_kind(cls: Node) -> str | None:
    """Sensor kind key of a sensor class IRI (demo:TemperatureSensor -> "temperature")."""
    name = _local(cls)
    if name.endswith("sensor") and name != "sensor":
        name = name[: -len("sensor")]
    name = _SENSOR_SYNONYMS.get(name, name)
    return None if name in _NOT_SENSOR_KINDS else name


def _add_memory_figure(g: Graph, subject: Node, node: Node, props: dict[str, URIRef], problems: list[str]) -> None:
    """Copy a published RAM/flash figure of `node` onto `subject` as bytes, unless it already states one."""
    prop = props.get(_memory_kind(g, node) or "")
    value = _bytes(g, node, problems)
    if prop is not None and value is not None and g.value(subject, prop) is None:
        g.add((subject, prop, Literal(value)))


def _memory_kind(g: Graph, node: Node) -> str | None:
    types = {_local(t) for t in g.objects(node, RDF.type)}
    if "ram" in types or "sram" in types:
        return "ram"
    if "flash" in types:
        return "flash"
    comments = " ".join(str(c).lower() for c in g.objects(node, RDFS.comment))
    if "flash" in comments:
        return "flash"
    if "ram" in comments or "memory" in types:
        return "ram"  # S3N's s3n:Memory is working memory unless the node says flash
    return None


def _bytes(g: Graph, node: Node, problems: list[str]) -> int | None:
    raw = g.value(node, SCHEMA.value) or g.value(node, SCHEMA.minValue)
    unit = g.value(node, SCHEMA.unitCode)
    if raw is None:
        return None
    try:
        number = float(str(raw))
    except ValueError:
        problems.append(f"<{node}>: memory figure {str(raw)!r} is not a number")
        return None
    if unit is None:
        problems.append(f"<{node}>: memory figure {raw} has no schema:unitCode")
        return None
    factor = _UNIT_BYTES.get(_local(unit))
    if factor is None:
        problems.append(f"<{node}>: unknown memory unit {unit} (use om:byte, om:kilobyte, om:kibibyte, ...)")
        return None
    return int(round(number * factor))


def normalize(g: Graph) -> list[str]:
    """Add the `tf:` byte figures and sensor kinds implied by published-style nodes (in place).

    Returns the problems found (unreadable numbers, unknown units), as plain sentences.
    """
    problems: list[str] = []
    models = set(g.subjects(RDF.type, NNET.NeuralNetwork))
    for m in models:
        for feature in g.objects(m, S3N.hasProcedureFeature):
            for cond in g.objects(feature, SSNS.inCondition):
                _add_memory_figure(g, m, cond, {"ram": TF.ramRequiredBytes, "flash": TF.flashRequiredBytes},
                                   problems)
        for inp in g.objects(m, SSN.hasInput):
            for sensor, p in g.subject_predicates(inp):
                if _local(p) == "provideinput":
                    for cls in g.objects(sensor, RDF.type):
                        k = sensor_kind(cls)
                        if k:
                            g.add((m, TF.requiresSensorKind, Literal(k)))
            for stated in g.objects(inp, TF.sensorKind):
                g.add((m, TF.requiresSensorKind, Literal(str(stated))))
        if g.value(m, SCHEMA.name) is None:
            for alt in (RDFS.label, NNET.hasID, SCHEMA.identifier, TD.title, RDFS.comment):
                v = g.value(m, alt)
                if v is not None:
                    g.add((m, SCHEMA.name, Literal(str(v)[:120])))
                    break
        cat = g.value(m, NNET.hasCategory)
        if cat is not None and g.value(m, TF.task) is None:
            g.add((m, TF.task, Literal(_local(cat))))
    for d in set(g.subjects(RDF.type, S3N.SmartSensor)):
        if g.value(d, SCHEMA.identifier) is None and g.value(d, TD.title) is not None:
            g.add((d, SCHEMA.identifier, Literal(str(g.value(d, TD.title)))))
        for sub in g.objects(d, SSN.hasSubSystem):
            types = set(g.objects(sub, RDF.type))
            if S3N.MicroController in types:
                for cap in g.objects(sub, S3N.hasSystemCapability):
                    for prop in g.objects(cap, SSNS.hasSystemProperty):
                        _add_memory_figure(g, d, prop, {"ram": TF.ramBytes, "flash": TF.flashBytes}, problems)
                for model in g.objects(sub, SSN.implements):
                    if (model, RDF.type, NNET.NeuralNetwork) in g and g.value(d, TF.runsModel) is None:
                        g.add((d, TF.runsModel, model))
                continue
            for cls in types:
                k = sensor_kind(cls)
                if k:
                    g.add((d, TF.sensorKind, Literal(k)))
                    g.add((sub, TF.sensorKind, Literal(k)))
            for stated in list(g.objects(sub, TF.sensorKind)):
                g.add((d, TF.sensorKind, Literal(str(stated))))
    for d in set(g.subjects(RDF.type, S3N.SmartSensor)):
        set_sensor_kinds_summary(g, d)
    return problems


def _jsonld_offline(text: str, source: str) -> str:
    """Replace the W3C TD remote @context (unreachable offline) by the shipped local copy."""
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


def parse_file(path: Path) -> Graph:
    """Parse a .ttl/.nt/.jsonld/.json file into a fresh graph; one-line error naming the file."""
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
    g = Graph()
    try:
        g.parse(data=text, format=fmt, publicID=path.resolve().as_uri())
    except RegistryInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; all mean "bad file"
        detail = str(exc).strip().splitlines()
        reason = detail[0][:200] if detail else type(exc).__name__
        raise RegistryInputError(f"{path}: invalid {fmt} ({reason})") from None
    return g


def skolemize(g: Graph) -> Graph:
    """Blank nodes -> stable IRIs (remote stores cannot address blank nodes).

    Canonical labelling first, so the same file always yields the same IRIs and a re-import is a
    no-op rather than a duplicate.
    """
    if not any(isinstance(t, BNode) for triple in g for t in triple):
        return g
    canon = to_canonical_graph(g)
    out = Graph()
    for prefix, ns in g.namespaces():
        out.bind(prefix, ns)
    for s, p, o in canon:
        out.add((_sk(s), p, _sk(o)))
    return out


def _sk(node: Node) -> Node:
    return URIRef(_SKOLEM + str(node)) if isinstance(node, BNode) else node


def check_iris(g: Graph, source: str) -> None:
    """Reject a graph holding a malformed IRI before it reaches a strict endpoint."""
    for triple in g:
        for t in triple:
            if isinstance(t, URIRef):
                check_iri(str(t), what=f"{source}: IRI")
            elif isinstance(t, Literal) and t.datatype is not None:  # a datatype IRI reaches the store too
                check_iri(str(t.datatype), what=f"{source}: datatype IRI")


def prepare(path: Path) -> Graph:
    """Parse, skolemize, normalize and validate a file; the graph that `import_file` would write."""
    g = skolemize(parse_file(path))
    if len(g) == 0:
        raise RegistryInputError(f"{path}: no triples")
    check_iris(g, str(path))
    problems = normalize(g)
    if problems:
        raise ValidationFailedError(str(path), sorted(set(problems)))
    validate(g, source=str(path))
    return g


def import_file(store: RegistryStore, path: Path | str) -> int:
    """Import one file atomically; returns the number of triples written."""
    g = prepare(Path(path))
    try:
        return store.write(g)
    except StoreError as exc:  # whatever the checks above missed: still name the file (the store is unchanged)
        raise StoreError(f"{path}: {exc}") from None
