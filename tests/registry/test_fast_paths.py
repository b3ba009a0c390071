"""The registry's fast paths give the same answers as the plain ones: targeted replace-deletes,
the embedded store's direct pyoxigraph rows, and the `tf:sensorKinds` summary literal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rdflib import Graph, Literal, URIRef

from registry import add_device, add_model_report, devices_for_model
from registry.ingest_device import device_graph, parse_td
from registry.namespaces import TF, mint_device
from registry.store import MemoryStore, RegistryStore, open_store
from registry.values import python_value
from tests.support.registry import SHA_BIG, SHA_SMALL, report, td


@pytest.fixture(params=["embedded", "rdflib-memory"])
def store(request: pytest.FixtureRequest) -> Iterator[RegistryStore]:
    st = open_store(memory=True) if request.param == "embedded" else MemoryStore()
    yield st
    st.close()


# Values that differ between two stores by design: when each TD record was written, and the
# directory's revision (a fresh UUID per write).
_CLOCK = {"https://www.w3.org/2021/wot/discovery#dateCreated", "https://www.w3.org/2021/wot/discovery#dateModified",
          "https://w3id.org/tinyfleet/ns#revision"}


def _triples(st: RegistryStore) -> set[tuple[str, str, str]]:
    return {(str(r["s"]), str(r["p"]), str(r["o"])) for r in st.select("SELECT ?s ?p ?o WHERE { ?s ?p ?o }")
            if str(r["p"]) not in _CLOCK}


def test_replacing_a_device_leaves_exactly_its_new_description(store: RegistryStore) -> None:
    add_device(store, td("dev-a", 262_144, 1_048_576, ["microphone", "camera", "imu"], sha=SHA_SMALL))
    add_device(store, td("dev-b", 65_536, 1_048_576, ["camera"]))
    before_b = {t for t in _triples(store) if "/device/dev-b" in t[0]}
    add_device(store, td("dev-a", 131_072, None, ["temperature"]))  # new figures, sensors, no flash, no model

    fresh = open_store(memory=True)
    add_device(fresh, td("dev-b", 65_536, 1_048_576, ["camera"]))
    add_device(fresh, td("dev-a", 131_072, None, ["temperature"]))
    assert _triples(store) == _triples(fresh)  # no orphaned sub-resource (old sensors, flash node) left
    assert {t for t in _triples(store) if "/device/dev-b" in t[0]} == before_b
    fresh.close()


def test_sensor_kinds_summary_is_sorted_unique_and_replaced() -> None:
    iri, g = device_graph(parse_td(td("d", 1_000, None, ["microphone", "camera", "microphone"]), source="t"))
    assert list(g.objects(iri, TF.sensorKinds)) == [Literal("camera microphone")]
    _, g2 = device_graph(parse_td(td("d", 1_000, None, []), source="t"))
    assert list(g2.objects(iri, TF.sensorKinds)) == []


def test_match_reports_sensors_after_a_replacement(store: RegistryStore) -> None:
    add_model_report(store, report(SHA_BIG, arena=1_000, flash=1_000),
                     {"name": "m", "task": "t", "sensors": ["camera"]})
    add_device(store, td("dev-a", 262_144, 1_048_576, ["camera", "imu"]))
    assert [r["sensors"] for r in devices_for_model(store, "m")] == [["camera", "imu"]]
    add_device(store, td("dev-a", 262_144, 1_048_576, ["microphone", "camera"]))
    assert [r["sensors"] for r in devices_for_model(store, "m")] == [["camera", "microphone"]]
    add_device(store, td("dev-a", 262_144, 1_048_576, ["microphone"]))
    assert devices_for_model(store, "m") == []


def test_embedded_select_values_equal_the_generic_conversion() -> None:
    st = open_store(memory=True)
    s = URIRef("https://example.org/s")
    values = [Literal(7), Literal(-3), Literal(True), Literal(False), Literal(2.5), Literal(1e300), Literal("text"),
              Literal("Wort", lang="de"), Literal("2025-01-02T03:04:05Z", datatype=URIRef(
                  "http://www.w3.org/2001/XMLSchema#dateTime")), Literal("1.50", datatype=URIRef(
                      "http://www.w3.org/2001/XMLSchema#decimal")), Literal("x", datatype=URIRef("https://ex.org/dt")),
              mint_device("d")]
    g = Graph()
    for k, v in enumerate(values):
        g.add((s, URIRef(f"https://example.org/p{k:02d}"), v))
    st.write(g)
    q = "SELECT ?p ?o WHERE { ?s ?p ?o } ORDER BY ?p"
    fast = st.select_values(q, {"s": s})
    generic = RegistryStore.select_values(st, q, {"s": s})
    assert fast == generic
    assert [r["o"] for r in fast][:7] == [7, -3, True, False, 2.5, 1e300, "text"]
    assert [r["o"] for r in fast] == [python_value(v) for v in values]
    st.close()
