"""The fleet dashboard: server-rendered pages (Jinja2) plus two small JSON endpoints for live parts.

Pages: `/` (fleets and devices, model versions with the boards that can run them, federated runs),
`/runs/{run_id}` (learning curve and bytes per round, live while the run goes on; the model
versions it produced), `/models/{ref}` (a model version's lineage: run -> rounds -> devices, and
which devices can run it). Everything is read-only and served by the package: the only script is
static/dashboard.js, which draws the SVG charts and refreshes them from `/api/...`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from registry.overview import fleet_devices, models_overview, run_models
from registry.questions import devices_for_model, lineage, resolve
from tinyfleet.serve.problems import HTTPProblem
from tinyfleet.serve.runs import RunDir, curve_points, find_runs, read_rounds, run_summary
from tinyfleet.serve.tdd import query_int, state_of

DEVICES_PER_PAGE = 100
"""Rows of the fleet page's device table: a 1,000-device table took the first paint past 1 s in Chromium on a busy
2-core machine (355 KiB of HTML to parse and lay out); the cards above it still count the whole fleet."""
MAX_DEVICES_PER_PAGE = 1000

_env = Environment(loader=PackageLoader("tinyfleet.serve", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)


def _bytes(n: Any) -> str:
    """1536 -> '1.5 KiB' (binary units, as the boards' datasheets count memory)."""
    if not isinstance(n, (int, float)):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _num(x: Any, digits: int = 4) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:.{digits}g}"


_env.filters["bytes"] = _bytes
_env.filters["num"] = _num


def render(template: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(template).render(**context))


def _runs(request: Request) -> dict[str, RunDir]:
    return find_runs(state_of(request).run_roots)


def _fleets(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    total: Counter[str] = Counter()
    online: Counter[str] = Counter()
    boards: dict[str, Counter[str]] = {}
    for d in devices:
        f = d.get("fleet") or "(no fleet)"
        total[f] += 1
        online[f] += 1 if d.get("online") else 0
        boards.setdefault(f, Counter())[d.get("board") or "unknown"] += 1
    return [{"name": f, "devices": total[f], "online": online[f],
             "boards": ", ".join(f"{b} x{n}" for b, n in sorted(boards[f].items()))} for f in sorted(total)]


def _overview(request: Request) -> dict[str, Any]:
    store = state_of(request).directory.store
    devices = fleet_devices(store)
    runs = sorted((run_summary(r) for r in _runs(request).values()), key=lambda r: r["run_id"])
    return {"devices": devices, "fleets": _fleets(devices), "models": models_overview(store), "runs": runs,
            "online": sum(1 for d in devices if d.get("online")), "things": state_of(request).directory.count()}


def _device_page(devices: list[dict[str, Any]], offset: int, limit: int) -> dict[str, Any]:
    """One page of the device table and the links around it (`/?offset=&limit=`, like `GET /things`)."""
    def url(o: int) -> str:
        return f"/?offset={o}" + ("" if limit == DEVICES_PER_PAGE else f"&limit={limit}") + "#devices"

    shown = devices[offset:offset + limit]
    if not shown:  # past the end: no range, and "previous" is the last page that has devices
        last_page = max(0, (len(devices) - 1) // limit * limit)
        return {"rows": [], "first": 0, "last": 0, "total": len(devices), "next": None,
                "prev": url(last_page) if devices and offset > 0 else None}
    return {"rows": shown, "first": offset + 1, "last": offset + len(shown), "total": len(devices),
            "prev": url(max(0, offset - limit)) if offset > 0 else None,
            "next": url(offset + limit) if offset + limit < len(devices) else None}


async def index(request: Request) -> Response:
    offset = query_int(request, "offset", 0, low=0, high=10**9) or 0
    limit = query_int(request, "limit", DEVICES_PER_PAGE, low=1, high=MAX_DEVICES_PER_PAGE) or DEVICES_PER_PAGE
    data = await run_in_threadpool(_overview, request)
    return render("index.html", title=state_of(request).title, run_roots=state_of(request).run_roots,
                  page=_device_page(data["devices"], offset, limit), **data)


def _run(request: Request) -> tuple[RunDir, dict[str, Any]]:
    run_id = request.path_params["run_id"]
    run = _runs(request).get(run_id)
    if run is None:
        raise HTTPProblem(404, f"no federated run {run_id[:128]!r} in the run directories this server reads")
    rounds = read_rounds(run.path)
    return run, {"summary": run_summary(run), "points": curve_points(rounds), "rounds": rounds}


async def run_page(request: Request) -> Response:
    def load() -> dict[str, Any]:
        run, data = _run(request)
        data["models"] = run_models(state_of(request).directory.store, run.run_id)
        return data

    data = await run_in_threadpool(load)
    return render("run.html", title=state_of(request).title, run=data["summary"], rounds=data["rounds"],
                  models=data["models"], chart={"summary": data["summary"], "points": data["points"]})


async def run_api(request: Request) -> Response:
    _, data = await run_in_threadpool(_run, request)
    return JSONResponse({"summary": data["summary"], "points": data["points"]})


async def model_page(request: Request) -> Response:
    ref = request.path_params["ref"]

    def load() -> dict[str, Any]:
        store = state_of(request).directory.store
        iri = resolve(store, ref, kind="model")
        info = next((m for m in models_overview(store) if m["iri"] == str(iri)), {"iri": str(iri)})
        known_runs = set(_runs(request))
        lin = lineage(store, iri)
        for run in lin["runs"]:
            run["has_curve"] = run.get("run_id") in known_runs
        eligible = devices_for_model(store, iri)
        return {"model": info, "lineage": lin["runs"], "eligible": eligible}

    data = await run_in_threadpool(load)
    return render("model.html", title=state_of(request).title, **data)


async def devices_api(request: Request) -> Response:
    devices = await run_in_threadpool(fleet_devices, state_of(request).directory.store)
    return JSONResponse([{"id": d["id"], "online": d["online"], "last_seen": d["last_seen"],
                          "model_version": d["model_version"]} for d in devices])


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/runs/{run_id}", run_page, methods=["GET"]),
    Route("/models/{ref:path}", model_page, methods=["GET"]),
    Route("/api/runs/{run_id}", run_api, methods=["GET"]),
    Route("/api/devices", devices_api, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=str(Path(__file__).with_name("static"))), name="static"),
]
