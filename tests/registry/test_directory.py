"""The Thing Description Directory without HTTP: merge patch, ownership of ids, devices, remote store."""

from __future__ import annotations

from typing import Any

import pytest

from registry.directory import ThingDirectory, merge_diff, merge_patch
from registry.exceptions import TDValidationError, ThingConflictError, ThingNotFoundError
from registry.ingest_model import add_model_report
from registry.questions import inventory
from registry.store import open_store
from tests.support.registry import OxigraphServer, report, td

# RFC 7396, Appendix A: (target, patch, result).
RFC7396 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}), ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}), ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}), ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}), (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]), ({"a": "foo"}, None, None), ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}), ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7396)
def test_merge_patch_follows_rfc7396_appendix_a(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_merge_diff_round_trips() -> None:
    old = {"id": "x", "title": "a", "description": "d", "properties": {"p": {"type": "string", "readOnly": True}}}
    new = {"id": "x", "title": "b", "properties": {"p": {"type": "number", "readOnly": True}, "q": {}}}
    assert merge_patch(old, merge_diff(old, new)) == new


def _plain(td_id: str, title: str = "T") -> dict[str, Any]:
    return {"@context": "https://www.w3.org/2022/wot/td/v1.1", "id": td_id, "title": title,
            "security": ["nosec_sc"], "securityDefinitions": {"nosec_sc": {"scheme": "nosec"}}}


def test_ids_of_registry_entities_are_refused_and_nothing_is_written() -> None:
    st = open_store(memory=True)
    d = ThingDirectory(st)
    add_model_report(st, report("1" * 64, arena=100, flash=100), {"name": "m"})
    before = len(st)
    foreign = "http://tinyml-schema.org/kg/some-node"
    st.update(f"INSERT DATA {{ GRAPH <{st.graph_iri}> {{ <{foreign}> <urn:p> 'x' }} }}")
    with pytest.raises(ThingConflictError):
        d.put(foreign, _plain(foreign))
    with pytest.raises(ThingConflictError):
        d.put("https://w3id.org/tinyfleet/id/model/" + "1" * 64, _plain("https://w3id.org/tinyfleet/id/model/x"))
    with pytest.raises(TDValidationError):
        d.put("urn:a", _plain("urn:b"))  # body id differs from the path id
    assert len(st) == before + 1
    st.close()


def test_a_device_td_replaced_by_a_plain_td_leaves_no_device_behind() -> None:
    st = open_store(memory=True)
    d = ThingDirectory(st)
    dev = td("dev-x", 262_144, 1_048_576, ["microphone"])
    dev.update({"@context": "https://www.w3.org/2022/wot/td/v1.1", "tinyfleet:modelSha256": "1" * 64})
    assert d.put(dev["id"], dev) is True
    assert [r["id"] for r in inventory(st)] == ["dev-x"]
    assert d.put(dev["id"], _plain(dev["id"], "now a lamp")) is False
    assert inventory(st) == []
    d.delete(dev["id"])
    assert len(st) == 1  # only the collection's revision remains
    with pytest.raises(ThingNotFoundError):
        d.get(dev["id"])
    st.close()


def test_directory_on_a_remote_sparql_endpoint(oxigraph_server: OxigraphServer) -> None:
    st = open_store(endpoint=f"{oxigraph_server.url}/query", update_endpoint=f"{oxigraph_server.url}/update")
    d = ThingDirectory(st)
    already = d.count()  # the server is shared by the session: other tests' TDs may be there
    ids = [f"urn:example:remote:{i}" for i in (3, 1, 2)]
    for i in ids:
        d.put(i, _plain(i, f"T{i}"))
    first = d.page(0, 2)  # pages in id order, and says there is more
    first_ids = [t["id"] for t in first.items]
    assert len(first_ids) == 2 and first.more and first_ids == sorted(first_ids)
    page = d.page(0, len(ids) + already)
    assert [t["id"] for t in page.items if t["id"] in ids] == sorted(ids)
    assert d.get(ids[0])["registration"]["created"].endswith("Z")
    answer = d.sparql("SELECT ?t WHERE { ?t a td:Thing } ORDER BY ?t")
    assert answer.form == "select" and len(list(answer.result)) >= 3
    for i in ids:
        d.delete(i)
    assert d.count() == already
    st.close()


def test_run_file_names_match_the_coordinator() -> None:
    from federation import coordinator
    from tinyfleet.serve import runs

    assert (runs.RUN_FILE, runs.METRICS_FILE, runs.FINAL_FILE) == (coordinator.RUN_FILE, coordinator.METRICS_FILE,
                                                                   coordinator.FINAL_FILE)
