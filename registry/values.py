"""RDF terms to JSON-ready Python values, one rule for every store.

Why a module of its own: the query API (`registry.questions`) turns rdflib terms into Python values,
and the embedded store turns pyoxigraph terms into the SAME values without building rdflib terms
first (building ~40,000 rdflib Literals per large match cost more than the query). Both paths share
`python_value`, and `oxigraph_value` falls back to it for every datatype it does not handle itself,
so the two can only differ where this module says so (nowhere, which the tests check).
"""

from __future__ import annotations

from typing import Any

from rdflib import Literal, URIRef
from rdflib.term import Node

_XSD = "http://www.w3.org/2001/XMLSchema#"
_STRING = _XSD + "string"
_INTEGER = _XSD + "integer"
_BOOLEAN = _XSD + "boolean"
_DOUBLES = {_XSD + "double", _XSD + "float"}
_LANG_STRING = "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString"
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def python_value(node: Node | None) -> Any:
    """The JSON-ready value of an rdflib term: int, float, bool, ISO date string or plain string."""
    if node is None:
        return None
    if isinstance(node, Literal):
        value = node.toPython()
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if isinstance(value, Literal):  # unknown datatype or ill-typed: keep the lexical form
            return str(value)
        if isinstance(value, float) and value.is_integer() and node.datatype and "integer" in str(node.datatype):
            return int(value)
        return value
    return str(node)


def oxigraph_value(term: Any) -> Any:
    """`python_value` of a pyoxigraph term, computed directly for the common datatypes.

    IRIs, strings, integers, booleans and doubles are converted here; anything else (dates,
    decimals, ill-typed lexical forms) goes through an rdflib Literal, so the result is the one
    `python_value` gives for the same term.
    """
    datatype = getattr(term, "datatype", None)
    if datatype is None:  # NamedNode / BlankNode
        return term.value
    lexical = term.value
    dt = datatype.value
    if dt in (_STRING, _LANG_STRING):
        return lexical
    try:
        if dt == _INTEGER:
            return int(lexical)
        if dt == _BOOLEAN and lexical in _BOOLEANS:
            return _BOOLEANS[lexical]
        if dt in _DOUBLES:
            return float(lexical)
    except ValueError:
        pass
    return python_value(Literal(lexical, datatype=URIRef(dt)))


__all__ = ["oxigraph_value", "python_value"]
