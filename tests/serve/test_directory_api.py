"""The Thing Description Directory over real HTTP (uvicorn on a free loopback port, httpx as client).

Each test names the W3C WoT Discovery assertions it checks (docs/directory.md lists them all); TDs
are the recommendation's own examples and real tinyfleet device TDs.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from devices.boards import BOARDS
from devices.wire.protocol import SCHEMA_DIR
from devices.wire.thing_description import thing_description
from registry.store import open_store
from tests.support.waiting import wait_until
from tinyfleet.serve.auth import TokenStore
from tinyfleet.serve.server import DirectoryServer, ServeOptions

DISCOVERY = "https://www.w3.org/2022/wot/discovery"


def spec_td(td_id: str | None = "urn:example:simple-td", title: str = "Simple TD", **extra: Any) -> dict[str, Any]:
    """Example "Enriched TD" of WoT Discovery (section Registration Information), registration left out."""
    td: dict[str, Any] = {"@context": ["https://www.w3.org/2022/wot/td/v1.1", DISCOVERY], "security": "basic_sc",
                          "securityDefinitions": {"basic_sc": {"scheme": "basic"}}, "title": title, **extra}
    if td_id is not None:
        td["id"] = td_id
    return td


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DirectoryServer, str, Clock]]:
    tmp = tmp_path_factory.mktemp("tdd")
    token = TokenStore(tmp / "tokens.json").create("tests")
    store = open_store(memory=True)
    srv = DirectoryServer(store, ServeOptions(port=0, tokens=tmp / "tokens.json", max_body=64 * 1024,
                                              purge_interval=3600))
    clock = Clock()
    srv.directory.clock = clock
    with srv:
        yield srv, token, clock
    store.close()


@pytest.fixture()
def http(server: tuple[DirectoryServer, str, Clock]) -> Iterator[httpx.Client]:
    srv, token, _ = server
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        yield c


def put(http: httpx.Client, td: dict[str, Any], td_id: str | None = None) -> httpx.Response:
    return http.put(f"/things/{td_id or td['id']}", content=json.dumps(td),
                    headers={"Content-Type": "application/td+json"})


def test_create_retrieve_update_patch_delete_with_spec_examples(http: httpx.Client) -> None:
    # tdd-things-create-known-td(-resp), -retrieve(-resp, -content-type), -update(-resp), -update-partial*,
    # -delete(-resp), tdd-context-injection, tdd-absolute-time, registration created/modified/retrieved
    td = spec_td()
    r = put(http, td)
    assert r.status_code == 201, r.text
    r = http.get("/things/urn:example:simple-td")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/td+json")
    got = r.json()
    assert got["title"] == "Simple TD" and got["id"] == "urn:example:simple-td" and DISCOVERY in got["@context"]
    reg = got["registration"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", reg["created"])
    assert reg["created"] == reg["modified"] and "retrieved" in reg
    assert put(http, {**td, "description": "This is a new TD"}).status_code == 204
    r = http.patch("/things/urn:example:simple-td", content=json.dumps(
        {"base": "http://192.168.0.2/", "registration": {"expires": "2099-01-20T17:02:00Z"}, "description": None}),
        headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 204, r.text
    got = http.get("/things/urn:example:simple-td").json()
    assert got["base"] == "http://192.168.0.2/" and "description" not in got
    assert got["registration"]["expires"] == "2099-01-20T17:02:00.000Z"
    assert got["registration"]["created"] == reg["created"] and got["registration"]["modified"] > reg["modified"]
    assert http.delete("/things/urn:example:simple-td").status_code == 204
    r = http.get("/things/urn:example:simple-td")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 404 and "urn:example:simple-td" in r.json()["detail"]
    assert http.delete("/things/urn:example:simple-td").status_code == 404


def test_anonymous_td_gets_a_uuid_urn_and_a_location(http: httpx.Client) -> None:
    # tdd-things-create-anonymous-td, -anonymous-id, -anonymous-td-resp, tdd-anonymous-td-identifier/-local-uuid
    r = http.post("/things", content=json.dumps(spec_td(None, "Anonymous TD")),
                  headers={"Content-Type": "application/td+json"})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    local = location.removeprefix("/things/")
    assert uuid.UUID(local.removeprefix("urn:uuid:")).version == 4
    got = http.get(location).json()
    assert got["id"] == local and got["title"] == "Anonymous TD"
    r = http.post("/things", content=json.dumps(spec_td("urn:x:has-id")),
                  headers={"Content-Type": "application/td+json"})
    assert r.status_code == 400 and r.json()["validationErrors"][0]["field"] == "id"
    http.delete(location)


def test_listing_pages_in_id_order_with_next_and_canonical_links(http: httpx.Client) -> None:
    # tdd-things-list-method/-resp/-resp-content-type, -pagination(-limit, -header-nextlink(-attr, -base),
    # -header-canonicallink, -order-default, -order-unsupported), -collection
    ids = [f"urn:example:page:{c}" for c in "LkAbZ0aé9_-Ma"[:12]]
    for i in ids:
        assert put(http, spec_td(i, f"T {i}")).status_code == 201
    r = http.get("/things", params={"limit": 10})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
    links = r.headers.get_list("link")
    nxt = next(x for x in links if 'rel="next"' in x)
    canonical = next(x for x in links if 'rel="canonical"' in x)
    assert nxt.startswith("</things?offset=10&limit=10>")
    etag = re.search(r'etag="([^"]+)"', canonical).group(1)  # type: ignore[union-attr]
    first = [t["id"] for t in r.json()]
    r2 = http.get(nxt[1:nxt.index(">")])
    second = [t["id"] for t in r2.json()]
    assert not any('rel="next"' in x for x in r2.headers.get_list("link"))
    assert re.search(r'etag="([^"]+)"', r2.headers["link"]).group(1) == etag  # type: ignore[union-attr]
    assert first + second == sorted(ids)  # Unicode code point order of ids
    col = http.get("/things", params={"limit": 5, "format": "collection"}).json()
    assert col["@type"] == "ThingCollection" and col["total"] == 12 and len(col["members"]) == 5
    assert col["next"] == "/things?offset=5&limit=5&format=collection"
    assert http.get("/things", params={"sort_by": "/title"}).status_code == 501
    assert http.get("/things", params={"limit": 0}).status_code == 400
    head = http.head("/things", params={"limit": 10})
    assert head.status_code == 200 and head.content == b"" and head.headers.get_list("link")  # tdd-http-head
    put(http, spec_td("urn:example:page:zz"))
    after = http.get("/things", params={"limit": 10}).headers.get_list("link")
    assert not any(etag in x for x in after)  # the collection changed: a new etag
    for i in [*ids, "urn:example:page:zz"]:
        http.delete(f"/things/{i}")


def test_validation_errors_are_problem_details_and_device_tds_with_op_pass(http: httpx.Client) -> None:
    # tdd-validation-syntactic/-jsonschema/-result/-response/-response-utf-8, tdd-http-error-response(-utf-8)
    bad = spec_td("urn:example:broken", properties={"status": {"forms": [{"href": 5}]}})
    del bad["security"]
    r = put(http, bad)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json; charset=utf-8"
    body = json.loads(r.content.decode("utf-8"))
    fields = {e["field"] for e in body["validationErrors"]}
    assert "(root)" in fields and "properties.status.forms.0.href" in fields
    assert all(set(e) == {"field", "description"} for e in body["validationErrors"])
    td = thing_description(device_id="api-dev-1", fleet="lab", board=BOARDS["esp32"], use_case="sine",
                           host="127.0.0.1", port=1883, sensors=("scalar-signal",))
    assert any("op" in f for aff in td["properties"].values() for f in aff["forms"])
    assert put(http, td).status_code == 201  # SHACL + JSON Schema pass on a valid TD with op in forms
    sparql = http.get("/search/sparql", params={"query": "SELECT ?ram WHERE { ?d tf:ramBytes ?ram ; "
                                                          "schema:identifier 'api-dev-1' }"}).json()
    assert int(sparql["results"]["bindings"][0]["ram"]["value"]) == BOARDS["esp32"].ram_bytes  # it is a device now
    assert http.delete(f"/things/{td['id']}").status_code == 204


def test_writes_need_a_valid_token_and_limits_hold(server: tuple[DirectoryServer, str, Clock],
                                                   http: httpx.Client, tmp_path: Path) -> None:
    # tdd-things-read-only-auth; request size and media type limits
    srv, token, _ = server
    anon = httpx.Client(base_url=srv.url, timeout=30)
    r = anon.put("/things/urn:x:1", content=json.dumps(spec_td("urn:x:1")),
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = anon.delete("/things/urn:x:1", headers={"Authorization": "Bearer tft_wrong"})
    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
    assert anon.get("/things").status_code == 200  # reads stay open
    assert token not in srv.options.tokens.read_text()  # stored hashed only
    r = http.put("/things/urn:x:1", content="{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = http.patch("/things/urn:x:1", content="{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    huge = spec_td("urn:x:1", description="x" * 70_000)
    assert put(http, huge).status_code == 413
    r = http.put("/things/urn:x:1", content=b"{\"title\": NaN}", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = http.put("/things/https://w3id.org/tinyfleet/id/model/x", content=json.dumps(spec_td(None)),
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 409  # ids inside the registry's own namespace are refused
    assert "access-control-allow-origin" not in anon.get("/things", headers={"Origin": "http://evil"}).headers
    anon.close()


def test_sparql_search_is_read_only(http: httpx.Client) -> None:
    # tdd-search-sparql(-version, -method-get, -method-post, -resp-select-ask, -resp-describe-construct, -error)
    put(http, spec_td("urn:example:sparql", "Lamp", properties={
        "on": {"type": "boolean", "forms": [{"href": "http://lamp/on", "op": ["readproperty", "writeproperty"]}]}}))
    q = ("SELECT ?t ?op WHERE { ?t td:title 'Lamp' ; td:hasPropertyAffordance/td:hasForm/hctl:hasOperationType ?op }"
         " ORDER BY ?op")
    r = http.get("/search/sparql", params={"query": q})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    ops = [b["op"]["value"].rsplit("#", 1)[1] for b in r.json()["results"]["bindings"]]
    assert ops == ["readProperty", "writeProperty"]
    r = http.post("/search/sparql", content="ASK WHERE { <urn:example:sparql> a td:Thing }",
                  headers={"Content-Type": "application/sparql-query"})
    assert r.json()["boolean"] is True
    r = http.get("/search/sparql", params={"query": "CONSTRUCT { ?t td:title ?x } WHERE { ?t td:title ?x }"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/ld+json")
    assert any("urn:example:sparql" in json.dumps(n) for n in r.json())
    for bad in ("INSERT DATA { <urn:a> <urn:b> <urn:c> }", "DROP ALL",
                "SELECT * WHERE { SERVICE <http://example.org/sparql> { ?s ?p ?o } }", "SELECT WHERE {"):
        r = http.get("/search/sparql", params={"query": bad})
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), bad
    assert http.get("/search/sparql", params={"query": "ASK { <urn:a> <urn:b> <urn:c> }"}).json()["boolean"] is False
    http.delete("/things/urn:example:sparql")


def test_directory_td_is_a_valid_td_1_1(http: httpx.Client) -> None:
    r = http.get("/.well-known/wot")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/td+json")
    td = r.json()
    schema = json.loads((SCHEMA_DIR / "td-json-schema-validation.json").read_text())
    assert [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(td)] == []
    assert td["@type"] == "ThingDirectory" and set(td["events"]) == {"thingCreated", "thingUpdated", "thingDeleted"}
    assert td["actions"]["createThing"]["forms"][0]["security"] == ["bearer_sc"]


def _listen(url: str, out: queue.Queue[tuple[str, dict[str, Any], str]], stop: threading.Event,
            headers: dict[str, str] | None = None) -> None:
    try:
        _read_stream(url, out, stop, headers)
    except httpx.HTTPError:  # the server closes open streams when it stops
        return


def _read_stream(url: str, out: queue.Queue[tuple[str, dict[str, Any], str]], stop: threading.Event,
                 headers: dict[str, str] | None) -> None:
    with httpx.Client(timeout=httpx.Timeout(30, read=None)) as c, c.stream("GET", url, headers=headers) as r:
        out.put(("open", {"status": r.status_code, "type": r.headers["content-type"]}, ""))
        event, data, eid = "", [], ""
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("id: "):
                eid = line[4:]
            elif line == "" and event:
                out.put((event, json.loads("\n".join(data)), eid))
                event, data = "", []


def _events(q: queue.Queue[tuple[str, dict[str, Any], str]], n: int) -> list[tuple[str, dict[str, Any], str]]:
    got: list[tuple[str, dict[str, Any], str]] = []
    assert wait_until(lambda: (got.extend(_drain(q)) or len(got) >= n), timeout=20), got
    return got


def _drain(q: queue.Queue[Any]) -> list[Any]:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def test_server_sent_events_with_diff_filter_and_replay(server: tuple[DirectoryServer, str, Clock],
                                                        http: httpx.Client) -> None:
    # tdd-notification(-sse, -event-id, -event-types, -filter-type, -data, -data-td-id, -data-create-full,
    # -data-update-diff, -data-update-id, -data-delete-diff)
    srv, _, _ = server
    stop = threading.Event()
    full: queue.Queue[tuple[str, dict[str, Any], str]] = queue.Queue()
    deleted: queue.Queue[tuple[str, dict[str, Any], str]] = queue.Queue()
    for url, q in ((f"{srv.url}/events?diff=true", full), (f"{srv.url}/events/thing_deleted?diff=true", deleted)):
        threading.Thread(target=_listen, args=(url, q, stop), daemon=True).start()
        opened = _events(q, 1)[0]
        assert opened[1] == {"status": 200, "type": "text/event-stream; charset=utf-8"}
    assert wait_until(lambda: srv.hub.clients >= 2, timeout=10)
    td = spec_td("urn:example:events", description="This is a new TD")
    put(http, td)
    put(http, {**{k: v for k, v in td.items() if k != "description"}, "title": "Updated TD"})
    http.delete("/things/urn:example:events")
    got = _events(full, 3)
    assert [e[0] for e in got] == ["thing_created", "thing_updated", "thing_deleted"]
    assert got[0][1]["title"] == "Simple TD" and got[0][1]["registration"]["created"]
    assert got[1][1]["id"] == "urn:example:events" and got[1][1]["title"] == "Updated TD"
    assert got[1][1]["description"] is None
    assert got[2][1] == {"id": "urn:example:events"}  # diff ignored for deletions
    assert [e[0] for e in _events(deleted, 1)] == ["thing_deleted"]  # type filter
    ids = [int(e[2]) for e in got]
    assert ids == sorted(ids) and len(set(ids)) == 3
    replay: queue.Queue[tuple[str, dict[str, Any], str]] = queue.Queue()
    threading.Thread(target=_listen, args=(f"{srv.url}/events", replay, stop, {"Last-Event-ID": str(ids[0])}),
                     daemon=True).start()
    again = _events(replay, 3)[1:]
    assert [(e[0], e[1], int(e[2])) for e in again] == [("thing_updated", {"id": "urn:example:events"}, ids[1]),
                                                        ("thing_deleted", {"id": "urn:example:events"}, ids[2])]
    stop.set()
    assert http.get("/events/thing_exploded").status_code == 404


def test_ttl_sets_expires_and_expired_tds_disappear(server: tuple[DirectoryServer, str, Clock],
                                                    http: httpx.Client) -> None:
    # registration ttl -> expires (MUST), tdd-registrationinfo-expiry-purge
    srv, _, clock = server
    td = spec_td("urn:example:expirable-td", "Expirable TD",
                 registration={"ttl": 3600, "expires": "2000-01-01T00:00:00Z"})
    assert put(http, td).status_code == 201
    reg = http.get("/things/urn:example:expirable-td").json()["registration"]
    modified = datetime.fromisoformat(reg["modified"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(reg["expires"].replace("Z", "+00:00")) - modified == timedelta(hours=1)
    assert reg["ttl"] == 3600
    clock.offset = timedelta(minutes=59)
    assert http.patch("/things/urn:example:expirable-td", content="{}",
                      headers={"Content-Type": "application/merge-patch+json"}).status_code == 204  # renews
    clock.offset = timedelta(minutes=100)
    assert http.get("/things/urn:example:expirable-td").status_code == 200
    clock.offset = timedelta(hours=3)
    try:
        assert http.get("/things/urn:example:expirable-td").status_code == 404
        assert "urn:example:expirable-td" not in json.dumps(http.get("/things").json())
        assert srv.directory.purge_expired() == ["urn:example:expirable-td"]
    finally:
        clock.offset = timedelta(0)
    bad = spec_td("urn:example:bad-ttl", registration={"ttl": -5})
    r = put(http, bad)
    assert r.status_code == 400 and r.json()["validationErrors"][0]["field"] == "registration.ttl"
