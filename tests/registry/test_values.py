"""One JSON encoder for every RDF literal (issue #18 item 5): `registry query --json` never crashes.

Fuzzed: any lexical form with any XSD datatype (or an unknown one, or a language tag) becomes a JSON
value (None, str, int, finite float, bool); the embedded store's fast path gives the same value as
the rdflib path for the same stored term.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdflib import Graph, Literal, URIRef
from typer.testing import CliRunner

from registry.store import RegistryStore, open_store
from registry.values import literal_value, python_value
from tests.support.fuzzing import examples
from tinyfleet.cli.main import app

XSD = "http://www.w3.org/2001/XMLSchema#"
DATATYPES = [XSD + t for t in ("string", "integer", "int", "long", "unsignedByte", "nonNegativeInteger", "decimal",
                               "double", "float", "boolean", "dateTime", "date", "time", "duration", "gYear",
                               "hexBinary", "base64Binary", "anyURI")] + ["https://example.org/custom-type"]
NUMBERISH = st.sampled_from(["0", "-0", "+7", "1.50", ".5", "1e3", "-1E-3", "NaN", "INF", "-INF", "1_000", " 12 ",
                             "0x1F", "true", "false", "1", "2025-01-02T03:04:05Z", "2025-13-40", "24:00:00", ""])
# the suite's profile decides derandomization, database and deadline, the same on every machine (tests/conftest.py);
# `make fuzz` scales the examples up
SETTINGS = settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
JSON_TYPES = (type(None), str, int, float, bool)


def _json_ok(value: object) -> None:
    assert isinstance(value, JSON_TYPES), type(value)
    assert not (isinstance(value, float) and not math.isfinite(value))
    json.dumps(value, allow_nan=False)


@SETTINGS
@given(lexical=st.one_of(NUMBERISH, st.text(max_size=30)), datatype=st.sampled_from(DATATYPES),
       language=st.sampled_from([None, "en", "de-CH"]))
def test_every_literal_becomes_a_json_value(lexical: str, datatype: str, language: str | None) -> None:
    _json_ok(literal_value(lexical, None if language else datatype, language))
    _json_ok(python_value(Literal(lexical, lang=language) if language else Literal(lexical, datatype=URIRef(datatype))))


_STORE: RegistryStore | None = None


@SETTINGS
@given(lexical=st.one_of(NUMBERISH, st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                                max_size=20)),
       datatype=st.sampled_from(DATATYPES))
def test_stored_literals_read_the_same_on_both_paths(lexical: str, datatype: str) -> None:
    """pyoxigraph terms (fast path) and rdflib terms (generic path) of a stored literal agree."""
    global _STORE
    if _STORE is None:
        _STORE = open_store(memory=True)
    g = Graph()
    s, p = URIRef("https://example.org/s"), URIRef("https://example.org/p")
    g.add((s, p, Literal(lexical, datatype=URIRef(datatype))))
    _STORE.write(g, replace_values=[(s, p)])
    q = "SELECT ?o WHERE { ?s ?p ?o }"
    b = {"s": s, "p": p}
    fast = _STORE.select_values(q, b)
    assert fast == RegistryStore.select_values(_STORE, q, b)
    for row in fast:
        _json_ok(row["o"])


def test_registry_query_json_prints_decimals_dates_and_language_strings(tmp_path: Path) -> None:
    ttl = tmp_path / "typed.ttl"
    ttl.write_text('@prefix s: <https://schema.org/> . @prefix xsd: <http://www.w3.org/2001/XMLSchema#> .\n'
                   '<http://ex.org/m> s:a 18.712 ; s:b "2021-12-12"^^xsd:date ; s:c "Wort"@de ; s:d "NaN"^^xsd:double ;'
                   ' s:e "P1D"^^xsd:duration ; s:f "2025-01-02T03:04:05Z"^^xsd:dateTime .')
    q = tmp_path / "q.rq"
    q.write_text("SELECT ?p ?o WHERE { <http://ex.org/m> ?p ?o } ORDER BY ?p")
    store = ["--store", str(tmp_path / "reg")]
    assert CliRunner().invoke(app, ["registry", "import", str(ttl), *store]).exit_code == 0
    r = CliRunner().invoke(app, ["registry", "query", str(q), *store, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [row["o"] for row in rows] == [18.712, "2021-12-12", "Wort", "NaN", "P1D", "2025-01-02T03:04:05+00:00"]
