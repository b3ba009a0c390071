"""RDF terms to JSON-ready Python values: the one encoder every store and every `--json` uses.

Why a module of its own: the query API (`registry.questions`) and `registry query --json` turn
rdflib terms into Python values, and the embedded store turns pyoxigraph terms into the SAME values
without building rdflib terms first (building ~40,000 rdflib Literals per large match cost more
than the query). Both go through `literal_value`, so they cannot differ.

The result is always None, str, int, float (finite) or bool, whatever the literal:

- integers (xsd:integer and its derived types) -> int; xsd:decimal, xsd:double, xsd:float -> float
  (JSON has one number type); a non-finite double -> "NaN", "INF" or "-INF" (its canonical lexical
  form: JSON cannot hold it, and stores spell it differently);
- xsd:boolean -> bool; xsd:dateTime / date / time -> ISO 8601 text;
- strings and language strings -> the text (the language tag is dropped);
- every other datatype (durations, binary, anyURI, unknown IRIs) and every ill-typed lexical form
  -> the lexical form, unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any

from rdflib import Literal
from rdflib.term import Node

JsonScalar = None | str | int | float | bool

_XSD = "http://www.w3.org/2001/XMLSchema#"
_STRINGS = {_XSD + "string", "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString"}
_INTEGERS = {_XSD + t for t in ("integer", "int", "long", "short", "byte", "nonNegativeInteger", "positiveInteger",
                                "nonPositiveInteger", "negativeInteger", "unsignedLong", "unsignedInt",
                                "unsignedShort", "unsignedByte")}
_FLOATS = {_XSD + "double", _XSD + "float"}
_DECIMAL = _XSD + "decimal"
_BOOLEAN = _XSD + "boolean"
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_TEMPORAL: dict[str, Callable[[str], Any]] = {
    _XSD + "dateTime": datetime.fromisoformat, _XSD + "dateTimeStamp": datetime.fromisoformat,
    _XSD + "date": date.fromisoformat, _XSD + "time": time.fromisoformat}
# Lexical spaces of XML Schema 1.1 (leading/trailing whitespace is collapsed by the datatype).
_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_DECIMAL_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
_NON_FINITE = {"nan": "NaN", "+nan": "NaN", "-nan": "NaN", "snan": "NaN", "inf": "INF", "+inf": "INF",
               "infinity": "INF", "+infinity": "INF", "-inf": "-INF", "-infinity": "-INF"}
_DOUBLE_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def literal_value(lexical: str, datatype: str | None, language: str | None = None) -> JsonScalar:
    """The JSON-ready value of a literal given by its lexical form, datatype IRI and language tag."""
    if language or datatype is None or datatype in _STRINGS:
        return lexical
    text = lexical.strip(" \t\n\r")
    if datatype in _INTEGERS:
        return int(text) if _INTEGER_RE.fullmatch(text) else lexical
    if datatype == _BOOLEAN:
        return _BOOLEANS.get(text, lexical)
    if datatype == _DECIMAL or datatype in _FLOATS:
        pattern = _DECIMAL_RE if datatype == _DECIMAL else _DOUBLE_RE
        if not pattern.fullmatch(text):
            return _NON_FINITE.get(text.lower(), lexical)  # NaN / INF in canonical form, or ill-typed
        number = float(text)
        return number if math.isfinite(number) else ("INF" if number > 0 else "-INF")
    parse = _TEMPORAL.get(datatype)
    if parse is not None:
        try:
            return parse(text).isoformat()
        except ValueError:
            return lexical
    return lexical


def python_value(node: Node | None) -> JsonScalar:
    """The JSON-ready value of an rdflib term (IRIs and blank nodes as their text)."""
    if node is None:
        return None
    if isinstance(node, Literal):
        return literal_value(str(node), str(node.datatype) if node.datatype is not None else None, node.language)
    return str(node)


def oxigraph_value(term: Any) -> JsonScalar:
    """`python_value` of a pyoxigraph term, computed from its parts without building an rdflib term."""
    datatype = getattr(term, "datatype", None)
    if datatype is None:  # NamedNode / BlankNode
        return str(term.value)
    return literal_value(term.value, datatype.value, getattr(term, "language", None))


__all__ = ["JsonScalar", "literal_value", "oxigraph_value", "python_value"]
