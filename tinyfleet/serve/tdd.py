"""HTTP routes of the Thing Description Directory (W3C WoT Discovery, Directory Service API).

Each handler reads and checks the request (size, media type, token, parameters), then runs one
`ThingDirectory` operation in the thread pool (the stores are synchronous) and maps its answer, or
its registry error, onto the status codes and headers the recommendation prescribes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from registry.directory import MAX_PAGE, MAX_SPARQL_CHARS, ThingDirectory
from registry.things import DISCOVERY_CONTEXT
from tinyfleet.serve.auth import TokenStore
from tinyfleet.serve.directory_td import directory_td
from tinyfleet.serve.events import EVENT_TYPES, EventHub, format_sse
from tinyfleet.serve.problems import HTTPProblem

TD_JSON = "application/td+json"
LD_JSON = "application/ld+json"
MERGE_PATCH = "application/merge-patch+json"
TD_MEDIA_TYPES = {TD_JSON, "application/json", LD_JSON}
DEFAULT_PAGE = 100
KEEPALIVE_S = 15.0


@dataclass
class ServeState:
    """What every request handler shares."""

    directory: ThingDirectory
    hub: EventHub
    tokens: TokenStore
    run_roots: list[Path] = field(default_factory=list)
    max_body: int = 1 << 20
    title: str = "tinyfleet"


class JSONLDResponse(JSONResponse):
    media_type = LD_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class TDResponse(JSONLDResponse):
    media_type = TD_JSON


def state_of(request: Request) -> ServeState:
    return request.app.state.serve


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_token(request: Request) -> None:
    """Writes need `Authorization: Bearer <token>` with a token made by `tinyfleet serve token`."""
    tokens = state_of(request).tokens
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="tinyfleet"'}
    if scheme.lower() != "bearer" or not token.strip():
        hint = "" if tokens.any() else " (this server has no token yet: create one with `tinyfleet serve token`)"
        raise HTTPProblem(401, "this directory is read-only without a bearer token" + hint, headers=challenge)
    if not tokens.verify(token.strip()):
        raise HTTPProblem(401, "the bearer token is not valid", headers={**challenge,
                          "WWW-Authenticate": 'Bearer realm="tinyfleet", error="invalid_token"'})


async def read_json(request: Request, *, allowed: set[str]) -> Any:
    """The request body as JSON: media type in `allowed`, at most `max_body` bytes, UTF-8, valid JSON."""
    media = _media_type(request)
    if media not in allowed:
        raise HTTPProblem(415, f"Content-Type must be one of {', '.join(sorted(allowed))}, got {media or 'none'!r}")
    limit = state_of(request).max_body
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPProblem(413, f"the body has {int(length)} bytes; this directory accepts at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPProblem(400, "the body is not UTF-8 text") from None

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise HTTPProblem(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                          validationErrors=[{"field": "(root)", "description": exc.msg}]) from None
    except (ValueError, RecursionError) as exc:
        raise HTTPProblem(400, f"the body is not valid JSON: {str(exc)[:200] or 'nested too deeply'}") from None


def query_int(request: Request, name: str, default: int | None, *, low: int, high: int) -> int | None:
    """An integer query parameter in `low..high` (a 400 problem that names it otherwise)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # isdigit() alone takes "²" and 5,000-digit numbers, which int() then refuses with a ValueError (a 500)
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(high))) or not low <= int(raw) <= high:
        raise HTTPProblem(400, f"query parameter {name} must be an integer in {low}..{high}, got {raw[:40]!r}")
    return int(raw)


def things_url(offset: int, limit: int, fmt: str) -> str:
    params: dict[str, int | str] = {"offset": offset, "limit": limit}
    if fmt != "array":
        params["format"] = fmt
    return "/things?" + urlencode(params)


async def list_things(request: Request) -> Response:
    """`GET /things{?offset,limit,format}`: one page in id order with `next` and `canonical` links."""
    if "sort_by" in request.query_params or "sort_order" in request.query_params:
        raise HTTPProblem(501, "sorting by other fields is not supported; TDs are ordered by id")
    fmt = request.query_params.get("format", "array")
    if fmt not in ("array", "collection"):
        raise HTTPProblem(400, f"format must be 'array' or 'collection', got {fmt[:40]!r}")
    offset = query_int(request, "offset", 0, low=0, high=10**9) or 0
    limit = query_int(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE) or DEFAULT_PAGE
    directory = state_of(request).directory
    page = await run_in_threadpool(directory.page, offset, limit)
    links = [f'</things>; rel="canonical"; etag="{page.etag}"']
    if page.more:
        links.insert(0, f'<{things_url(offset + limit, limit, fmt)}>; rel="next"')
    members = "[" + ",".join(page.documents) + "]"  # stored JSON texts, not re-serialized
    if fmt == "collection":
        total = await run_in_threadpool(directory.count)
        head: dict[str, Any] = {"@context": DISCOVERY_CONTEXT, "@type": "ThingCollection", "total": total,
                                "@id": things_url(offset, limit, fmt)}
        if page.more:
            head["next"] = things_url(offset + limit, limit, fmt)
        text = json.dumps(head, separators=(",", ":"))[:-1] + ',"members":' + members + "}"
    else:
        text = members
    response = Response(text.encode("utf-8"), media_type=LD_JSON)
    for link in links:
        response.headers.append("Link", link)
    return response


async def create_anonymous(request: Request) -> Response:
    """`POST /things`: store an anonymous TD; 201 with `Location: /things/<urn:uuid:...>`."""
    require_token(request)
    td = await read_json(request, allowed=TD_MEDIA_TYPES)
    td_id = await run_in_threadpool(state_of(request).directory.create_anonymous, td)
    return Response(status_code=201, headers={"Location": "/things/" + quote(td_id, safe=":")})


async def thing(request: Request) -> Response:
    """`GET|HEAD|PUT|PATCH|DELETE /things/{id}`."""
    td_id = request.path_params["id"]
    directory = state_of(request).directory
    if request.method in ("GET", "HEAD"):
        return TDResponse(await run_in_threadpool(directory.get, td_id))
    require_token(request)
    if request.method == "PUT":
        td = await read_json(request, allowed=TD_MEDIA_TYPES)
        created = await run_in_threadpool(directory.put, td_id, td)
        return Response(status_code=201 if created else 204)
    if request.method == "PATCH":
        patch = await read_json(request, allowed={MERGE_PATCH})
        await run_in_threadpool(directory.patch, td_id, patch)
        return Response(status_code=204)
    await run_in_threadpool(directory.delete, td_id)
    return Response(status_code=204)


async def sparql(request: Request) -> Response:
    """`GET /search/sparql?query=` (and POST): SPARQL 1.1 protocol, read-only."""
    if request.method == "POST":
        media = _media_type(request)
        body = await request.body() if int(request.headers.get("content-length") or 0) <= MAX_SPARQL_CHARS * 4 \
            else b""
        if media == "application/sparql-query":
            text = body.decode("utf-8", errors="replace")
        elif media == "application/x-www-form-urlencoded":
            query = (await request.form()).get("query")
            text = query if isinstance(query, str) else ""  # an uploaded file is no query text
        else:
            raise HTTPProblem(415, "POST a query as application/sparql-query or application/x-www-form-urlencoded")
    else:
        text = request.query_params.get("query", "")
    if not text:
        raise HTTPProblem(400, "give the SPARQL query as ?query=")
    answer = await run_in_threadpool(state_of(request).directory.sparql, str(text))
    accept = request.headers.get("accept", "")
    if answer.form in ("select", "ask"):
        body_bytes = await run_in_threadpool(answer.result.serialize, format="json")
        media = "application/sparql-results+json" if "sparql-results+json" in accept else "application/json"
        return Response(body_bytes, media_type=media)
    if "text/turtle" in accept:
        text_out = await run_in_threadpool(answer.result.graph.serialize, format="turtle")
        return Response(text_out, media_type="text/turtle")
    text_out = await run_in_threadpool(answer.result.graph.serialize, format="json-ld")
    return Response(text_out, media_type=LD_JSON)


async def events(request: Request) -> Response:
    """`GET /events{/type}{?diff}`: Server-Sent Events of TD lifecycle changes."""
    kind = request.path_params.get("type")
    if kind is not None and kind not in EVENT_TYPES:
        raise HTTPProblem(404, f"no event type {kind[:40]!r}; use one of {', '.join(EVENT_TYPES)}")
    diff_raw = request.query_params.get("diff", "false").lower()
    if diff_raw not in ("true", "false"):
        raise HTTPProblem(400, "diff must be true or false")
    diff = diff_raw == "true"
    last = request.headers.get("last-event-id")
    last_id = int(last) if last and last.isdigit() else None
    hub = state_of(request).hub
    sub, backlog = hub.subscribe(last_id)

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": tinyfleet directory events\n\n"
            for eid, ev in backlog:
                if kind is None or ev.type == kind:
                    yield format_sse(eid, ev, diff=diff)
            while True:
                try:
                    eid, ev = await asyncio.wait_for(sub.queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if kind is None or ev.type == kind:
                    yield format_sse(eid, ev, diff=diff)
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def well_known(request: Request) -> Response:
    """`GET /.well-known/wot`: the directory's own TD."""
    base = str(request.base_url).rstrip("/")
    return TDResponse(directory_td(base, title=f"{state_of(request).title} Thing Description Directory"))


async def things_collection(request: Request) -> Response:
    """`/things`: GET lists, POST creates an anonymous TD (one route, so 405 names both methods)."""
    return await (create_anonymous(request) if request.method == "POST" else list_things(request))


ROUTES = [
    Route("/things", things_collection, methods=["GET", "POST"]),
    Route("/things/{id:path}", thing, methods=["GET", "PUT", "PATCH", "DELETE"]),
    Route("/search/sparql", sparql, methods=["GET", "POST"]),
    Route("/events", events, methods=["GET"]),
    Route("/events/{type}", events, methods=["GET"]),
    Route("/.well-known/wot", well_known, methods=["GET"]),
]
