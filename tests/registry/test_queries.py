"""Registry on both stores (embedded Oxigraph, `oxigraph serve` over SPARQL 1.1): ingestion,
TinyML-schema interoperability, matchmaking both ways, atomic imports, injection, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import (
    add_device,
    add_model_report,
    devices_for_model,
    explain_model,
    import_file,
    inventory,
    lineage,
    models_by_metric,
    models_for_device,
    raw_query,
    record_lineage,
    search,
    set_presence,
)
from registry.exceptions import ReadOnlyQueryError, RegistryInputError, UnknownEntityError, ValidationFailedError
from registry.store import MemoryStore, RegistryStore, open_store
from tests.support.registry import SHA_BIG, SHA_SMALL, TINYML_SCHEMA_KG, report, td


def _fleet(st: RegistryStore) -> None:
    """Two models, four devices with hand-picked figures so every exclusion reason occurs once."""
    add_model_report(st, report(SHA_SMALL, arena=2_000, flash=20_000),
                     {"name": "sine", "task": "sine", "sensors": ["scalar-signal"],
                      "metrics": {"float": {"mse": 0.010}, "int8": {"mse": 0.012}}})
    add_model_report(st, report(SHA_BIG, arena=100_000, flash=300_000),
                     {"name": "kws", "task": "keywords", "sensors": ["microphone"],
                      "metrics": {"int8": {"accuracy": 0.91}}})
    add_device(st, td("dev-ok", 262_144, 1_048_576, ["scalar-signal", "microphone"], sha=SHA_SMALL))
    add_device(st, td("dev-small-ram", 1_024, 1_048_576, ["scalar-signal"]))
    add_device(st, td("dev-small-flash", 262_144, 16_000, ["scalar-signal"]))
    add_device(st, td("dev-no-sensor", 262_144, 1_048_576, ["microphone"]))


def test_match_devices_for_model_exact_rows(store: RegistryStore) -> None:
    _fleet(store)
    rows = devices_for_model(store, "sine")
    assert rows == [{"iri": "https://w3id.org/tinyfleet/id/device/dev-ok", "name": "dev-ok", "ram_bytes": 262_144,
                     "ram_needed_bytes": 2_000, "flash_bytes": 1_048_576, "flash_needed_bytes": 20_000,
                     "sensors": ["microphone", "scalar-signal"], "online": None}]


def test_explain_lists_every_exclusion_reason(store: RegistryStore) -> None:
    _fleet(store)
    result = explain_model(store, SHA_SMALL)
    assert [d["name"] for d in result["eligible"]] == ["dev-ok"]
    assert {d["name"]: d["reasons"] for d in result["excluded"]} == {
        "dev-no-sensor": ["missing sensor: scalar-signal"],
        "dev-small-flash": ["too little flash: 16000 B < 20000 B needed"],
        "dev-small-ram": ["too little RAM: 1024 B < 2000 B needed"],
    }


def test_match_models_for_device_both_ways(store: RegistryStore) -> None:
    _fleet(store)
    assert [m["name"] for m in models_for_device(store, "dev-ok")] == ["kws", "sine"]
    assert [m["name"] for m in models_for_device(store, "dev-no-sensor")] == ["kws"]
    assert models_for_device(store, "dev-small-ram") == []
    row = models_for_device(store, "dev-small-flash")
    assert row == []


def test_models_by_metric_filters_and_orders(store: RegistryStore) -> None:
    _fleet(store)
    add_model_report(store, report("3" * 64, arena=1_000, flash=10_000),
                     {"name": "sine-v2", "task": "sine", "sensors": ["scalar-signal"],
                      "metrics": {"int8": {"mse": 0.5}}})
    rows = models_by_metric(store, "mse", maximum=0.1, task="sine", ascending=True)
    assert [(r["name"], r["value"], r["precision"]) for r in rows] == [("sine", 0.010, "float"),
                                                                      ("sine", 0.012, "int8")]
    rows = models_by_metric(store, "mse", task="sine", sensor="scalar-signal")
    assert [r["name"] for r in rows] == ["sine-v2", "sine", "sine"]  # highest first
    assert models_by_metric(store, "accuracy", minimum=0.95) == []
    assert [r["name"] for r in models_by_metric(store, "accuracy", minimum=0.9, sensor="microphone")] == ["kws"]


def test_inventory_and_presence(store: RegistryStore) -> None:
    _fleet(store)
    assert set_presence(store, "dev-ok", online=True)
    assert not set_presence(store, "unknown-device", online=True)
    inv = {r["name"]: r for r in inventory(store)}
    assert inv["dev-ok"]["online"] is True and inv["dev-ok"]["model_name"] == "sine"
    assert inv["dev-ok"]["sha256"] == SHA_SMALL and inv["dev-ok"]["last_seen"]
    assert inv["dev-small-ram"]["online"] is None and inv["dev-small-ram"]["model"] is None
    set_presence(store, "dev-ok", online=False)
    add_device(store, td("dev-ok", 262_144, 1_048_576, ["scalar-signal"], sha=SHA_SMALL))  # TD re-published
    assert {r["name"]: r["online"] for r in inventory(store)}["dev-ok"] is False  # presence kept


def test_lineage_prov(store: RegistryStore) -> None:
    _fleet(store)
    record_lineage(store, SHA_BIG, "run-7", 12, ["dev-ok", "dev-no-sensor"], "tinyreptile",
                   "2026-11-01T10:00:00+00:00", "2026-11-01T10:30:00+00:00", parent_model="sine")
    got = lineage(store, "kws")["runs"]
    assert got == [{"run": "https://w3id.org/tinyfleet/id/run/run-7", "run_id": "run-7", "strategy": "tinyreptile",
                    "rounds": 12, "started": "2026-11-01T10:00:00+00:00", "ended": "2026-11-01T10:30:00+00:00",
                    "devices": ["dev-no-sensor", "dev-ok"], "parent": f"https://w3id.org/tinyfleet/id/model/{SHA_SMALL}",
                    "parent_name": "sine"}]
    with pytest.raises(ValidationFailedError, match="tf:rounds"):
        record_lineage(store, SHA_BIG, "run-8", 0, ["dev-ok"], "fedavg", "2026-11-01T10:00:00", "2026-11-01T11:00:00")
    assert len(lineage(store, "kws")["runs"]) == 1


def test_tinyml_schema_style_kg_answers_same_questions(store: RegistryStore, tmp_path: Path) -> None:
    _fleet(store)
    kg = tmp_path / "published.ttl"
    kg.write_text(TINYML_SCHEMA_KG)
    n = import_file(store, kg)
    assert n > 0
    before = len(store)
    assert import_file(store, kg) == n
    assert len(store) == before  # deterministic skolem IRIs: a re-import adds nothing
    # 10 kB RAM -> 10,000 B; 18.712 kB flash -> 18,712 B; microphone from ssn_extend:provideInput.
    rows = devices_for_model(store, "Micro_Speech_Yes_No")
    assert [(r["name"], r["ram_needed_bytes"], r["flash_needed_bytes"]) for r in rows] == [
        ("Arduino-Nano-BLE-33-Tinyml-Kit_1", 10_000, 18_712), ("dev-no-sensor", 10_000, 18_712),
        ("dev-ok", 10_000, 18_712)]
    why = {d["name"]: d["reasons"] for d in explain_model(store, "Micro_Speech_Yes_No")["excluded"]}
    assert why["Tiny_Board_8kB"] == ["too little RAM: 8000 B < 10000 B needed"]
    nano = [m["name"] for m in models_for_device(store, "Arduino-Nano-BLE-33-Tinyml-Kit_1")]
    assert nano == ["Micro_Speech_Yes_No", "kws"]  # our kws (100 kB arena) fits its 256 kB; no scalar-signal
    assert [r["name"] for r in search(store, "yes/no")] == ["Micro_Speech_Yes_No"]


def test_failed_import_is_atomic(store: RegistryStore, tmp_path: Path) -> None:
    _fleet(store)
    before = len(store)
    bad = tmp_path / "bad.ttl"
    # Valid model first, then a board whose RAM has no unit: the whole file must be refused.
    bad.write_text(TINYML_SCHEMA_KG.replace("schema:unitCode om:kilobyte ; schema:value 8 ]", "schema:value 8 ]"))
    with pytest.raises(ValidationFailedError, match="has no schema:unitCode"):
        import_file(store, bad)
    assert len(store) == before
    broken = tmp_path / "broken.ttl"
    broken.write_text(TINYML_SCHEMA_KG[:-40])
    with pytest.raises(RegistryInputError, match="broken.ttl: invalid turtle"):
        import_file(store, broken)
    shacl = tmp_path / "shacl.ttl"
    shacl.write_text("@prefix s3n: <http://w3id.org/s3n/> . @prefix tf: <https://w3id.org/tinyfleet/ns#> .\n"
                     "<http://example.org/d> a s3n:SmartSensor ; tf:ramBytes -5 ; tf:online \"yes\" .")
    with pytest.raises(ValidationFailedError) as info:
        import_file(store, shacl)
    assert len(info.value.violations) == 2 and "tf:online is one boolean" in str(info.value)
    assert len(store) == before
    with pytest.raises(RegistryInputError, match="no RAM size"):
        add_device(store, {"id": "urn:tinyfleet:device:x", "title": "x"})
    assert len(store) == before


def test_injection_is_plain_data(store: RegistryStore) -> None:
    _fleet(store)
    before = len(store)
    evil = 'x" } ; DROP ALL ; #'
    with pytest.raises(UnknownEntityError, match="no model named"):
        devices_for_model(store, evil)
    assert search(store, evil) == []
    assert search(store, "') } DELETE WHERE { ?s ?p ?o } #") == []
    with pytest.raises(RegistryInputError):
        add_device(store, td(evil, 1000, 1000, []))  # not a valid device id
    with pytest.raises(ReadOnlyQueryError):
        raw_query(store, "DROP ALL")
    with pytest.raises(ReadOnlyQueryError):
        raw_query(store, "DELETE WHERE { ?s ?p ?o }")
    with pytest.raises(RegistryInputError, match="is not an absolute IRI"):
        devices_for_model(store, "http://exa mple.org/x>")
    assert len(store) == before
    assert raw_query(store, "SELECT (COUNT(*) AS ?n) WHERE { ?s ?p ?o }")["rows"] == [{"n": before}]


def test_memory_baseline_gives_identical_rows() -> None:
    """rdflib's own initBindings (MemoryStore) and our VALUES transport must agree."""
    a, b = open_store(memory=True), MemoryStore()
    for st in (a, b):
        _fleet(st)
    for fn, arg in ((devices_for_model, "sine"), (models_for_device, "dev-ok"), (explain_model, "kws")):
        assert fn(a, arg) == fn(b, arg)
    assert models_by_metric(a, "mse", task="sine") == models_by_metric(b, "mse", task="sine")
