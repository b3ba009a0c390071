"""SHACL validation of a description before it is written.

Why validate the new triples only (not the whole store): an import must be judged on its own,
fast, and before the store is touched, so a failed import leaves the store exactly as it was.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from rdflib import Graph, URIRef
from rdflib.namespace import RDF, SH

from registry.exceptions import ValidationFailedError
from registry.namespaces import SCHEMA, TD


@lru_cache(maxsize=1)
def shapes_graph() -> Graph:
    """The shipped SHACL shapes (registry/vocab/shapes.ttl)."""
    g = Graph()
    g.parse(data=resources.files("registry").joinpath("vocab/shapes.ttl").read_text(encoding="utf-8"), format="turtle")
    return g


def violations(data: Graph) -> list[str]:
    """Plain-English SHACL violations of `data`, sorted; empty when it conforms."""
    import pyshacl

    conforms, report, _ = pyshacl.validate(data, shacl_graph=shapes_graph(), inference="none",
                                           abort_on_first=False, allow_warnings=True)
    if conforms:
        return []
    out = set()
    for result in report.subjects(RDF.type, SH.ValidationResult):
        focus = report.value(result, SH.focusNode)
        message = report.value(result, SH.resultMessage)
        path = report.value(result, SH.resultPath)
        value = report.value(result, SH.value)
        text = f"{_label(data, focus)}: {message or 'violates ' + str(report.value(result, SH.sourceShape))}"
        if value is not None:
            text += f" (found {value!s:.60})"
        elif path is not None and not message:
            text += f" [{path}]"
        out.add(text)
    return sorted(out)


def validate(data: Graph, *, source: str) -> None:
    """Raise `ValidationFailedError` naming `source` when `data` breaks the shapes."""
    found = violations(data)
    if found:
        raise ValidationFailedError(source, found)


def _label(data: Graph, node: object) -> str:
    if isinstance(node, URIRef):
        name = data.value(node, SCHEMA.name) or data.value(node, TD.title)
        return f"<{node}>" + (f" ({name})" if name else "")
    return str(node)
