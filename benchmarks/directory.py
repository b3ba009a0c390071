"""`tinyfleet serve` at fleet scale: `python -m benchmarks.directory [--tds 10000] [--dashboard-devices 1000]`.

Issue #19's goals, measured in one run on this machine:

1. `GET /things` paging over 10,000 TDs on the embedded store: p95 <= 50 ms. The TDs are real
   tinyfleet device TDs (`devices.wire.thing_description` for real board profiles), loaded through
   `ThingDirectory.load_many` with validation on (TD 1.1 JSON Schema + SHACL), i.e. each is also a
   registry device. A real uvicorn server on 127.0.0.1 answers; the client (httpx, one keep-alive
   connection) requests pages of `limit` TDs at random offsets and follows `next` links; wall time
   per request includes JSON parsing on the client. Same pages in-process (`ThingDirectory.page`, no
   HTTP) separate the server's cost from the store's.
2. In the same run and on the same store, the CLI's query baseline: `registry.questions.inventory`
   (what `tinyfleet registry inventory` runs: every device with its model and presence) and
   `devices_for_model` for a model, and the real `tinyfleet registry inventory --json` process.
3. Dashboard first paint of a 1,000-device fleet in headless Chromium: Navigation Timing
   (`responseEnd`, `domContentLoaded`, `loadEventEnd`) and Paint Timing (`first-contentful-paint`)
   of `/` (the page as served: whole-fleet cards, first page of the device table) and of the same
   page with every device in one table, fresh browser profile per repetition.

Writes docs/results/directory.json and docs/results/directory.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GOAL_PAGE_P95_MS = 50.0
GOAL_FIRST_PAINT_S = 1.0
MIX = ("nano33ble", "esp32", "stm32f429", "rpi4", "uno", "esp32cam")


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _stats(ms: list[float]) -> dict[str, Any]:
    a = np.asarray(ms)
    return {"n": len(ms), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def device_tds(n: int, seed: int) -> list[dict[str, Any]]:
    from devices.boards import BOARDS
    from devices.wire.thing_description import thing_description

    rng = random.Random(seed)
    return [thing_description(device_id=f"dev-{i:05d}", fleet=f"fleet-{i % 10}", board=BOARDS[rng.choice(MIX)],
                              use_case="sine", host="127.0.0.1", port=1883, sensors=("scalar-signal",),
                              model_sha256="a" * 64) for i in range(n)]


def bench_paging(n_tds: int, *, limit: int, requests: int, seed: int, validated: int) -> dict[str, Any]:
    import httpx

    from registry.directory import ThingDirectory
    from registry.ingest_model import add_model_report
    from registry.questions import devices_for_model, inventory
    from registry.store import open_store
    from tests.support.registry import report
    from tinyfleet.serve.server import DirectoryServer, ServeOptions

    tmp = Path(tempfile.mkdtemp(prefix="tf-dir-bench-"))
    store = open_store(tmp / "registry")
    t0 = time.perf_counter()
    tds = device_tds(n_tds, seed)
    make_s = time.perf_counter() - t0
    # The first `validated` TDs go through full validation (JSON Schema + SHACL) to measure that
    # rate; the rest (same generator, already shown valid) without, to keep the set-up short.
    t0 = time.perf_counter()
    ThingDirectory(store).load_many(tds[:validated], batch=250)
    validated_s = time.perf_counter() - t0
    ThingDirectory(store, validate=False).load_many(tds[validated:], batch=250)
    load_s = time.perf_counter() - t0
    add_model_report(store, report("a" * 64, arena=4_000, flash=20_000), {"name": "sine", "task": "sine"})
    _log(f"loaded {n_tds} TDs in {load_s:.1f} s ({len(store)} triples)")
    rng = random.Random(seed + 1)
    offsets = [rng.randrange(0, max(1, n_tds - limit)) for _ in range(requests)]
    out: dict[str, Any] = {"tds": n_tds, "limit": limit, "triples": len(store), "describe_s": make_s,
                           "load_s": load_s, "validated": validated, "validated_load_s": validated_s,
                           "load_via": "ThingDirectory.load_many, first `validated` TDs with JSON Schema + SHACL"}
    directory = ThingDirectory(store)
    for o in offsets[:5]:
        directory.page(o, limit)  # warm caches like a running server
    ms = []
    for o in offsets:
        t = time.perf_counter()
        page = directory.page(o, limit)
        ms.append((time.perf_counter() - t) * 1000)
        assert len(page.items) == limit
    out["in_process_page"] = _stats(ms)
    with DirectoryServer(store, ServeOptions(port=0, tokens=tmp / "tokens.json")) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        for o in offsets[:5]:
            http.get("/things", params={"offset": o, "limit": limit})
        ms = []
        for o in offsets:
            t = time.perf_counter()
            r = http.get("/things", params={"offset": o, "limit": limit})
            body = r.json()
            ms.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and len(body) == limit
        out["http_page_random_offset"] = _stats(ms)
        walk, url, seen = [], f"/things?limit={limit}", 0
        t_walk = time.perf_counter()
        while url:
            t = time.perf_counter()
            r = http.get(url)
            seen += len(r.json())
            walk.append((time.perf_counter() - t) * 1000)
            nxt = [x for x in r.headers.get_list("link") if 'rel="next"' in x]
            url = nxt[0][1:nxt[0].index(">")] if nxt else ""
        out["http_walk_all_pages"] = {**_stats(walk), "tds_seen": seen, "seconds": time.perf_counter() - t_walk}
        assert seen == n_tds, seen
        t = time.perf_counter()
        head = http.get("/things", params={"limit": 1})
        out["http_first_page_limit1_ms"] = (time.perf_counter() - t) * 1000
        assert head.status_code == 200
    # The CLI's query baseline on the same store, in the same run.
    inv_ms = []
    for _ in range(5):
        t = time.perf_counter()
        rows = inventory(store)
        inv_ms.append((time.perf_counter() - t) * 1000)
    out["cli_baseline_inventory"] = {**_stats(inv_ms), "rows": len(rows)}
    dfm_ms = []
    for _ in range(5):
        t = time.perf_counter()
        rows = devices_for_model(store, "a" * 64)
        dfm_ms.append((time.perf_counter() - t) * 1000)
    out["cli_baseline_devices_for_model"] = {**_stats(dfm_ms), "rows": len(rows)}
    store.close()
    t = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("tinyfleet")), "registry", "inventory", "--store",
                           str(tmp / "registry"), "--json"], capture_output=True, text=True, check=False)
    out["cli_process_inventory_s"] = time.perf_counter() - t
    shutil.rmtree(tmp, ignore_errors=True)  # ~1.4 M triples on disk
    assert proc.returncode == 0, proc.stderr[-500:]
    return out


def _paint(srv_url: str, path: str, repeats: int, rows_expected: int, n_devices: int) -> dict[str, Any]:
    """Navigation and paint timings of one dashboard URL, a fresh headless Chromium per repetition."""
    from tests.support.browser import headless_chromium

    timings = []
    for _ in range(repeats):
        with headless_chromium() as drv:
            drv.get(srv_url + path)
            rows = len(drv.find_elements("css selector", "#devices tbody tr[data-device]"))
            counted = drv.find_element("id", "count-devices").text
            t = drv.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                "return {response_end: n.responseEnd, dom_content_loaded: n.domContentLoadedEventEnd,"
                " load: n.loadEventEnd, fcp: p ? p.startTime : null, bytes: n.transferSize};")
            assert rows == rows_expected and counted == str(n_devices), (path, rows, counted)
            timings.append(t)
    fcp = [t["fcp"] for t in timings if t["fcp"] is not None]
    return {"path": path, "rows": rows_expected, "repeats": repeats, "runs": timings,
            "first_contentful_paint_ms": _stats(fcp) if fcp else None,
            "server_response_end_ms": _stats([t["response_end"] for t in timings]),
            "load_event_end_ms": _stats([t["load"] for t in timings]),
            "html_bytes": timings[0]["bytes"]}


def bench_dashboard(n_devices: int, *, repeats: int) -> dict[str, Any]:
    """The fleet page as served (`/`: cards over the whole fleet, the first page of the device table) and,
    for comparison, the same page with every device in one table (`/?limit=N`)."""
    from registry.store import open_store
    from tests.support.serve import build_demo_fleet
    from tinyfleet.serve.dashboard import DEVICES_PER_PAGE
    from tinyfleet.serve.server import DirectoryServer, ServeOptions

    tmp = Path(tempfile.mkdtemp(prefix="tf-dash-bench-"))
    store = open_store(memory=True)
    t0 = time.perf_counter()
    build_demo_fleet(store, tmp / "runs", n_devices=n_devices, rounds=100)
    _log(f"registered {n_devices} devices in {time.perf_counter() - t0:.1f} s")
    try:
        with DirectoryServer(store, ServeOptions(port=0, tokens=tmp / "tokens.json", runs=[tmp / "runs"])) as srv:
            paged = _paint(srv.url, "/", repeats, min(n_devices, DEVICES_PER_PAGE), n_devices)
            full = _paint(srv.url, f"/?limit={n_devices}", repeats, n_devices, n_devices)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"devices": n_devices, "repeats": repeats, **paged, "full_table": full}


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    p, d = payload["paging"], payload["dashboard"]
    http = p["http_page_random_offset"]
    fcp = d["first_contentful_paint_ms"]
    f = d["full_table"]
    ffcp = f["first_contentful_paint_ms"]
    lines = [
        "# Directory and dashboard benchmark (issue #19)", "",
        f"`python -m benchmarks.directory --tds {p['tds']} --dashboard-devices {d['devices']}`", "",
        f"Store: embedded Oxigraph on disk holding {p['tds']:,} device TDs ({p['triples']:,} triples), loaded in "
        f"{p['load_s']:.0f} s; the first {p['validated']:,} with validation on (TD 1.1 JSON Schema + SHACL) took "
        f"{p['validated_load_s']:.0f} s ({p['validated_load_s'] / max(1, p['validated']) * 1000:.0f} ms per TD).", "",
        "| what | n | p50 (ms) | p95 (ms) | max (ms) |", "|---|---:|---:|---:|---:|",
        f"| `GET /things?offset=random&limit={p['limit']}` over HTTP | {http['n']} | {http['p50_ms']:.1f} | "
        f"{http['p95_ms']:.1f} | {http['max_ms']:.1f} |",
        f"| walk all pages by `next` links (limit {p['limit']}) | {p['http_walk_all_pages']['n']} | "
        f"{p['http_walk_all_pages']['p50_ms']:.1f} | {p['http_walk_all_pages']['p95_ms']:.1f} | "
        f"{p['http_walk_all_pages']['max_ms']:.1f} |",
        f"| same pages in-process (`ThingDirectory.page`) | {p['in_process_page']['n']} | "
        f"{p['in_process_page']['p50_ms']:.1f} | {p['in_process_page']['p95_ms']:.1f} | "
        f"{p['in_process_page']['max_ms']:.1f} |",
        f"| CLI baseline: `inventory` ({p['cli_baseline_inventory']['rows']:,} rows) | "
        f"{p['cli_baseline_inventory']['n']} | {p['cli_baseline_inventory']['p50_ms']:.1f} | "
        f"{p['cli_baseline_inventory']['p95_ms']:.1f} | {p['cli_baseline_inventory']['max_ms']:.1f} |",
        f"| CLI baseline: `devices_for_model` ({p['cli_baseline_devices_for_model']['rows']:,} rows) | "
        f"{p['cli_baseline_devices_for_model']['n']} | {p['cli_baseline_devices_for_model']['p50_ms']:.1f} | "
        f"{p['cli_baseline_devices_for_model']['p95_ms']:.1f} | {p['cli_baseline_devices_for_model']['max_ms']:.1f} |",
        "", f"`tinyfleet registry inventory --json` as a process (Python start-up included): "
        f"{p['cli_process_inventory_s']:.1f} s.", "",
        f"Goal `GET /things` p95 <= {GOAL_PAGE_P95_MS:.0f} ms: "
        f"**{'met' if payload['goals']['paging_met'] else 'NOT met'}** ({http['p95_ms']:.1f} ms).", "",
        f"Dashboard `/` of a {d['devices']:,}-device fleet in headless Chromium ({d['repeats']} fresh browsers; the "
        f"cards count all {d['devices']:,} devices, the device table shows its first page of {d['rows']}): first "
        f"contentful paint p50 {fcp['p50_ms']:.0f} ms, max {fcp['max_ms']:.0f} ms; HTML fully received "
        f"(responseEnd) p50 {d['server_response_end_ms']['p50_ms']:.0f} ms; load event p50 "
        f"{d['load_event_end_ms']['p50_ms']:.0f} ms; page {d['html_bytes'] / 1024:.0f} KiB.", "",
        f"The same page with all {f['rows']:,} devices in one table (`{f['path']}`): first contentful paint p50 "
        f"{ffcp['p50_ms']:.0f} ms, max {ffcp['max_ms']:.0f} ms; responseEnd p50 "
        f"{f['server_response_end_ms']['p50_ms']:.0f} ms; page {f['html_bytes'] / 1024:.0f} KiB.", "",
        f"Goal first paint <= {GOAL_FIRST_PAINT_S:.0f} s: "
        f"**{'met' if payload['goals']['first_paint_met'] else 'NOT met'}** (worst {fcp['max_ms']:.0f} ms).", "",
        f"Machine: {payload['machine']}.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tds", type=int, default=10_000)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--dashboard-devices", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--validated", type=int, default=1000, help="TDs loaded with validation on")
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args(argv)
    paging = bench_paging(args.tds, limit=args.limit, requests=args.requests, seed=args.seed,
                          validated=min(args.validated, args.tds))
    _log(json.dumps({k: v for k, v in paging.items() if "page" in k}, indent=1))
    dashboard = bench_dashboard(args.dashboard_devices, repeats=args.repeats)
    _log(json.dumps(dashboard["first_contentful_paint_ms"]))
    fcp = dashboard["first_contentful_paint_ms"]
    payload = {"paging": paging, "dashboard": dashboard,
               "goals": {"paging_p95_ms": GOAL_PAGE_P95_MS, "first_paint_s": GOAL_FIRST_PAINT_S,
                         "paging_met": paging["http_page_random_offset"]["p95_ms"] <= GOAL_PAGE_P95_MS,
                         "first_paint_met": bool(fcp) and fcp["max_ms"] <= GOAL_FIRST_PAINT_S * 1000},
               "machine": f"{platform.processor() or platform.machine()}, 2 cores shared with other jobs, "
                          f"Python {platform.python_version()}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "directory.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(payload, args.out / "directory.md")
    _log(f"wrote {args.out / 'directory.json'} and directory.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
