"""Read graphs written for the published TinyML-schema generations as the registry's own data.

The published knowledge graphs (github.com/Haoyu-R/How-to-Manage-TinyML-at-Scale in the legacy
`http://tinyml-schema.org/networkschema#` namespace, github.com/Haoyu-R/SeLoC-ML and
tinyml-schema-collab in `https://w3id.org/tinyml-schema/neural-network-schema#`) state memory in
kilobytes through nested nodes: a model's `s3n:hasProcedureFeature [ ssn-system:inCondition [ a
s3n:Memory (or s3n_extend:RAM, s3n_extend:Flash) ; schema:minValue 80 ; schema:unitCode om:kilobyte ] ]`,
a board's `ssn:hasSubSystem [ a s3n:MicroController ; s3n:hasSystemCapability [
ssn-system:hasSystemProperty [ a s3n_extend:RAM ; schema:value 256 ; schema:unitCode om:kilobyte ] ] ]`,
sensors as typed subsystems, a model's sensors as `sensor ssn_extend:provideInput input`, and
metrics as `m a nnet:Top_1_accuracy ; nnet:hasMetricValue 92.1` (percent).

`apply_mappings` adds the w3id twin of every legacy triple, as declared in vocab/tinyfleet.ttl
(`tf:NamespaceMapping`); `normalize` then derives the registry's byte-exact `tf:` figures, sensor kinds
(as published, unknown kinds included), tasks, names and metrics (`tf:metricName`/`tf:metricScale`,
also declared there), so the same queries answer on published and on tinyfleet's own data.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import cache
from importlib import resources

from rdflib import Graph, Literal, URIRef
from rdflib.namespace import RDF, RDFS
from rdflib.term import Node

from registry.ingest_device import set_sensor_kinds_summary
from registry.namespaces import NNET, S3N, SCHEMA, SSN, SSNS, TD, TF

# Unit IRIs of OM 2 (as IRIs, or as the "om:kilobyte" strings some published TDs carry).
# Memory figures are stored as xsd:integer and compared with device budgets: anything at or above 2**63
# bytes (8 EiB) is a typo or an attack, not a board.
_MAX_BYTES = 1 << 63
_UNIT_BYTES = {"byte": 1, "kilobyte": 1000, "kibibyte": 1024, "megabyte": 1_000_000, "mebibyte": 1 << 20}
# Sensor class local names (lower-case, "sensor" suffix dropped) -> the sensor kind keys devices' TDs use.
_SENSOR_SYNONYMS = {"thermometer": "temperature", "imager": "camera", "image": "camera", "mic": "microphone",
                    "hygrometer": "humidity", "carbondioxide": "co2", "barometer": "pressure", "pir": "motion",
                    "illuminance": "light", "photodiode": "light"}
# Generic classes a sensor or subsystem also carries (schema:Sensor, sosa:Sensor, s3n:SmartSensor, ...):
# they say "this is a sensor", not which kind. Every other class is a kind, "OtherSensor" included.
_GENERIC_CLASSES = {"", "sensor", "system", "thing", "microcontroller", "platform", "smart", "device"}


def local_name(iri: object) -> str:
    """Lower-case local name of an IRI (after the last '#', '/' or ':')."""
    text = str(iri)
    for sep in ("#", "/", ":"):
        if sep in text:
            text = text.rsplit(sep, 1)[-1]
    return text.lower()


def sensor_kind(cls: Node) -> str | None:
    """Sensor kind key of a sensor class IRI (sosa_extend:Thermometer -> "temperature").

    Published kinds are kept, including ones no board offers (`OtherSensor` -> "other"): a model
    that needs such a kind must not match a board that lacks it. Only generic classes give None.
    """
    name = local_name(cls)
    if name.endswith("sensor") and name != "sensor":
        name = name[: -len("sensor")]
    name = _SENSOR_SYNONYMS.get(name, name)
    return None if name in _GENERIC_CLASSES else name


@cache
def _vocab() -> Graph:
    g = Graph()
    g.parse(data=resources.files("registry").joinpath("vocab/tinyfleet.ttl").read_text(encoding="utf-8"),
            format="turtle")
    return g


@cache
def namespace_mappings() -> tuple[tuple[str, str], ...]:
    """(legacy namespace, current namespace) pairs declared in vocab/tinyfleet.ttl, longest first."""
    g = _vocab()
    pairs = []
    for m in g.subjects(RDF.type, TF.NamespaceMapping):
        old, new = g.value(m, TF.fromNamespace), g.value(m, TF.toNamespace)
        if old is not None and new is not None:
            pairs.append((str(old), str(new)))
    return tuple(sorted(pairs, key=lambda p: -len(p[0])))


@cache
def metric_mappings() -> dict[str, tuple[str, float]]:
    """Published metric class IRI -> (registry metric name, scale), as declared in vocab/tinyfleet.ttl."""
    g = _vocab()
    out = {}
    for cls, name in g.subject_objects(TF.metricName):
        scale = g.value(cls, TF.metricScale)
        out[str(cls)] = (str(name), float(scale.toPython()) if isinstance(scale, Literal) else 1.0)
    return out


def _mapped(node: Node, pairs: tuple[tuple[str, str], ...]) -> Node:
    if isinstance(node, URIRef):
        text = str(node)
        for old, new in pairs:
            if text.startswith(old):
                return URIRef(new + text[len(old):])
    return node


def apply_mappings(g: Graph) -> int:
    """Add, for every triple mentioning a legacy term, its twin in the current namespace (in place).

    Returns the number of twins added. The published triples stay, so a query written for either
    generation of TinyML-schema answers on the imported graph.
    """
    pairs = namespace_mappings()
    twins = []
    for s, p, o in g:
        t = (_mapped(s, pairs), _mapped(p, pairs), _mapped(o, pairs))
        if t != (s, p, o):
            twins.append(t)
    for t in twins:
        g.add(t)
    return len(twins)


def _memory_kind(g: Graph, node: Node) -> str | None:
    types = {local_name(t) for t in g.objects(node, RDF.type)}
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
        # Decimal, not float: exact for any published figure, and "NaN"/"INF"/1e400 are caught below
        # instead of overflowing int() (a float would also round 10**29 kB to the nearest double).
        number = Decimal(str(raw).strip())
    except InvalidOperation:
        problems.append(f"<{node}>: memory figure {str(raw)!r} is not a number")
        return None
    if not number.is_finite():
        problems.append(f"<{node}>: memory figure {str(raw)!r} is not a finite number")
        return None
    if unit is None:
        problems.append(f"<{node}>: memory figure {raw} has no schema:unitCode")
        return None
    factor = _UNIT_BYTES.get(local_name(unit))
    if factor is None:
        problems.append(f"<{node}>: unknown memory unit {unit} (use om:byte, om:kilobyte, om:kibibyte, ...)")
        return None
    if number < 0 or number.adjusted() > 30 or number * factor >= _MAX_BYTES:  # adjusted(): no Overflow trap
        problems.append(f"<{node}>: memory figure {str(raw)!r} {local_name(unit)} is outside 0 .. 2**63 bytes")
        return None
    return int((number * factor).to_integral_value(rounding=ROUND_HALF_EVEN))


def _add_memory_figure(g: Graph, subject: Node, node: Node, props: dict[str, URIRef], problems: list[str]) -> None:
    """Copy a published RAM/flash figure of `node` onto `subject` as bytes, unless it already states one."""
    prop = props.get(_memory_kind(g, node) or "")
    value = _bytes(g, node, problems)
    if prop is not None and value is not None and g.value(subject, prop) is None:
        g.add((subject, prop, Literal(value)))


def _normalize_model(g: Graph, m: Node, problems: list[str]) -> None:
    for feature in g.objects(m, S3N.hasProcedureFeature):
        for cond in g.objects(feature, SSNS.inCondition):
            _add_memory_figure(g, m, cond, {"ram": TF.ramRequiredBytes, "flash": TF.flashRequiredBytes}, problems)
    for inp in g.objects(m, SSN.hasInput):
        for sensor, p in g.subject_predicates(inp):
            if local_name(p) == "provideinput":
                for cls in g.objects(sensor, RDF.type):
                    k = sensor_kind(cls)
                    if k:
                        g.add((m, TF.requiresSensorKind, Literal(k)))
        for declared in g.objects(inp, TF.sensorKind):
            g.add((m, TF.requiresSensorKind, Literal(str(declared))))
    if g.value(m, SCHEMA.name) is None:
        for alt in (RDFS.label, NNET.hasID, SCHEMA.identifier, TD.title, RDFS.comment):
            v = g.value(m, alt)
            if v is not None:
                g.add((m, SCHEMA.name, Literal(str(v)[:120])))
                break
    cat = g.value(m, NNET.hasCategory)
    if cat is not None and g.value(m, TF.task) is None:
        g.add((m, TF.task, Literal(local_name(cat))))
    metrics = metric_mappings()
    for metric in list(g.objects(m, NNET.hasMetric)):
        value: Node | None = g.value(metric, NNET.hasMetricValue)
        mapped = next((metrics[str(c)] for c in g.objects(metric, RDF.type) if str(c) in metrics), None)
        if mapped is None or value is None or g.value(metric, SCHEMA.name) is not None:
            continue
        try:
            number = float(str(value)) * mapped[1]
        except ValueError:
            problems.append(f"<{metric}>: metric value {str(value)!r} is not a number")
            continue
        if not math.isfinite(number):  # NaN would order at random and is not JSON; 1e400 is inf
            problems.append(f"<{metric}>: metric value {str(value)!r} is not a finite number")
            continue
        g.add((m, TF.hasMetric, metric))
        g.add((metric, RDF.type, TF.Metric))
        g.add((metric, SCHEMA.name, Literal(mapped[0])))
        g.add((metric, SCHEMA.value, Literal(round(number, 12))))


def _normalize_device(g: Graph, d: Node, problems: list[str]) -> None:
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
        for declared in list(g.objects(sub, TF.sensorKind)):
            g.add((d, TF.sensorKind, Literal(str(declared))))
    set_sensor_kinds_summary(g, d)


def normalize(g: Graph) -> list[str]:
    """Map legacy terms, then add the `tf:` figures, sensor kinds, tasks and metrics (in place).

    Returns the problems found (unreadable numbers, unknown units), as plain sentences.
    """
    apply_mappings(g)
    problems: list[str] = []
    for m in set(g.subjects(RDF.type, NNET.NeuralNetwork)):
        _normalize_model(g, m, problems)
    for d in set(g.subjects(RDF.type, S3N.SmartSensor)):
        _normalize_device(g, d, problems)
    return problems


__all__ = ["apply_mappings", "local_name", "metric_mappings", "namespace_mappings", "normalize", "sensor_kind"]
