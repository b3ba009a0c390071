"""The capability index answers exactly as the SPARQL queries, stays current through every write, and
notices when it is not (another client wrote, a write bypassed it, a saved copy is old)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from rdflib import Graph, Literal

from registry import add_device, add_model_report, devices_for_model, models_for_device, set_presence
from registry.capabilities import CapabilityIndex
from registry.ingest_model import model_graph
from registry.namespaces import REGISTRY_GRAPH, TD, TF, mint_device
from registry.requirements import devices_for_requirements
from registry.store import RegistryStore, open_store
from tests.support.registry import OxigraphServer, report, td

KINDS = ["camera", "microphone", "imu", "temperature", "other"]


def _fleet(st: RegistryStore, seed: int, n_devices: int = 40, n_models: int = 12) -> tuple[list[str], list[str]]:
    """Random devices and models, with the awkward cases: no flash, no sensors, kinds nobody has."""
    rng = random.Random(seed)
    models = []
    for i in range(n_models):
        sha = f"{rng.getrandbits(256):064x}"
        rep = report(sha, arena=rng.choice([500, 2_000, 64_000, 300_000]), flash=rng.choice([1_000, 50_000, 900_000]))
        card = {"name": f"m{i:02d}", "task": rng.choice(["kws", "vision"]),
                "sensors": rng.sample(KINDS, rng.choice([0, 1, 1, 2]))}
        if i % 5 == 0:  # a model that states no flash need (e.g. imported from a graph without one)
            iri, g = model_graph(rep, card)
            g.remove((iri, TF.flashRequiredBytes, None))
            st.write(g, replace_owners=[iri])
        else:
            add_model_report(st, rep, card)
        models.append(sha)
    devices = []
    for i in range(n_devices):
        flash = None if i % 7 == 0 else rng.choice([16_000, 256_000, 1_048_576])
        name = f"d{i:03d}" if i % 9 else f"D{i:03d}"  # upper case sorts before lower case, as in SPARQL
        add_device(st, td(name, rng.choice([1_024, 8_192, 65_536, 262_144, 520_000]), flash,
                          rng.sample(KINDS[:4], rng.choice([0, 1, 2, 3]))))
        devices.append(name)
    return models, devices


def _same_answers(st: RegistryStore, models: list[str], devices: list[str]) -> int:
    rows = 0
    for m in models:
        fast, slow = devices_for_model(st, m), devices_for_model(st, m, use_index=False)
        assert fast == slow, m
        rows += len(fast)
    for d in devices:
        fast, slow = models_for_device(st, d), models_for_device(st, d, use_index=False)
        assert fast == slow, d
        rows += len(fast)
    for ram, flash, kinds in ((None, None, []), ("64KiB", None, ["camera"]), ("8kB", "200kB", ["imu", "camera"]),
                              (None, "1MB", ["lidar"]), ("1", None, ["other"])):
        assert devices_for_requirements(st, ram=ram, flash=flash, sensors=kinds) == \
            devices_for_requirements(st, ram=ram, flash=flash, sensors=kinds, use_index=False)
    return rows


def test_index_answers_equal_sparql_and_stay_equal_through_writes(store: RegistryStore) -> None:
    models, devices = _fleet(store, seed=3)
    assert store.capabilities() is not None
    assert _same_answers(store, models, devices) > 50
    # Writes of every kind, with the index loaded: replace, presence, new entities, a foreign triple.
    add_device(store, td(devices[1], 1_024, None, []))
    add_device(store, td("late", 262_144, 1_048_576, ["camera", "microphone"]))
    set_presence(store, devices[2], online=True)
    add_model_report(store, report("9" * 64, arena=100, flash=100), {"name": "tiny", "task": "kws",
                                                                    "sensors": ["other"]})
    extra = Graph()
    extra.add((mint_device(devices[3]), TF.sensorKind, Literal("other")))  # an import adding a kind
    extra.add((mint_device(devices[3]), TD.title, Literal("second title")))  # two titles: two rows, as SPARQL
    store.write(extra)
    assert _same_answers(store, models + ["9" * 64], devices + ["late"]) > 50
    rebuilt = CapabilityIndex.build(store)
    kept = store.capabilities()
    assert kept is not None
    for table in ("devices", "device_kinds", "needs", "model_kinds", "models"):
        assert {k: sorted(map(str, v)) for k, v in getattr(kept, table).items()} == \
            {k: sorted(map(str, v)) for k, v in getattr(rebuilt, table).items()}, table
    for side in ("devices", "models"):  # the arrays patched write by write equal freshly compiled ones
        a, b = kept._compile(side), rebuilt._compile(side)  # noqa: SLF001
        assert a.keys == b.keys and a.rows == b.rows and a.inexact == b.inexact
        assert np.array_equal(a.ram, b.ram, equal_nan=True) and np.array_equal(a.flash, b.flash, equal_nan=True)


def test_ambiguous_figures_fall_back_to_sparql(store: RegistryStore) -> None:
    models, devices = _fleet(store, seed=5, n_devices=10, n_models=4)
    g = Graph()
    g.add((mint_device(devices[0]), TF.ramBytes, Literal(9_999_999)))  # a second RAM figure
    store.write(g)
    index = store.capabilities()
    assert index is not None and index.models_for_device(str(mint_device(devices[0]))) is None  # SPARQL decides
    _same_answers(store, models, devices)


def test_another_client_writing_makes_the_index_rebuild(oxigraph_server: OxigraphServer) -> None:
    urls = {"endpoint": f"{oxigraph_server.url}/query", "update_endpoint": f"{oxigraph_server.url}/update"}
    a, b = open_store(**urls), open_store(**urls)
    a.update(f"DROP SILENT GRAPH <{REGISTRY_GRAPH}>")
    models, devices = _fleet(a, seed=11, n_devices=12, n_models=5)
    before = devices_for_model(a, models[0])
    add_device(b, td("from-b", 520_000, 1_048_576, KINDS[:4]))  # a's index does not know this write
    after = devices_for_model(a, models[0])
    assert "from-b" in [r["name"] for r in after] and "from-b" not in [r["name"] for r in before]
    assert after == devices_for_model(a, models[0], use_index=False)
    add_device(a, td("from-a", 520_000, 1_048_576, KINDS[:4]))  # a's own write after b's: index rebuilt, not patched
    assert devices_for_model(a, models[0]) == devices_for_model(a, models[0], use_index=False)
    a.update(f"DROP SILENT GRAPH <{REGISTRY_GRAPH}>")
    a.close()
    b.close()


def test_saved_index_is_used_only_while_it_matches_the_graph(tmp_path: Path) -> None:
    path = tmp_path / "reg"
    st = open_store(path)
    _fleet(st, seed=7, n_devices=15, n_models=5)
    add_model_report(st, report("a" * 64, arena=100, flash=100), {"name": "any-board", "task": "t", "sensors": []})
    models = ["a" * 64, "a" * 64]
    expected = devices_for_model(st, models[1])
    assert len(expected) == 12  # every board but the 3 that state no flash
    st.close()
    saved = Path(str(path.resolve()) + ".capabilities.json")
    assert saved.exists()
    st = open_store(path)
    assert devices_for_model(st, models[1]) == expected
    loaded_stamp = st.capabilities().stamp  # type: ignore[union-attr]
    assert loaded_stamp == CapabilityIndex.load(saved).stamp  # type: ignore[union-attr]  # loaded, not rebuilt
    add_device(st, td("new-one", 520_000, 1_048_576, KINDS[:4]))  # kept current by the write, saved on close
    st.close()
    st = open_store(path)
    assert "new-one" in [r["name"] for r in devices_for_model(st, models[1])]
    st._index = None  # noqa: SLF001 - a write that bypasses the index (like an old tinyfleet would)
    st.use_index = False
    add_device(st, td("unseen", 520_000, 1_048_576, KINDS[:4]))
    st.close()
    st = open_store(path)  # the saved index is now older than the graph: rebuilt, not trusted
    assert "unseen" in [r["name"] for r in devices_for_model(st, models[1])]
    assert devices_for_model(st, models[1]) == devices_for_model(st, models[1], use_index=False)
    st.close()
