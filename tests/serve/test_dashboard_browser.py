"""The fleet dashboard in a real browser: headless Chromium loads a demo-like fleet, checks the device
table, follows a run to its learning curve, watches the curve grow while the run goes on, and saves
screenshots (to the test's temp dir; also to $TINYFLEET_SCREENSHOTS when set, e.g. docs/img)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.boards import BOARDS
from registry.store import open_store
from tests.support.browser import headless_chromium, require_chromium
from tests.support.serve import DemoFleet, build_demo_fleet, write_run
from tinyfleet.serve.server import DirectoryServer, ServeOptions


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DirectoryServer, DemoFleet, Path]]:
    require_chromium()
    tmp = tmp_path_factory.mktemp("dash")
    runs = tmp / "runs"
    store = open_store(memory=True)
    fleet = build_demo_fleet(store, runs)
    write_run(runs / "demo-sine-fedavg-test", "demo-sine-fedavg-test", 5, finished=False)
    with DirectoryServer(store, ServeOptions(port=0, tokens=tmp / "tokens.json", runs=[runs])) as srv:
        yield srv, fleet, runs
    store.close()


@pytest.fixture(scope="module")
def browser(served: Any) -> Iterator[Any]:
    with headless_chromium() as drv:
        yield drv


def _shot(drv: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    drv.save_screenshot(str(path))
    extra = os.environ.get("TINYFLEET_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(Path(extra) / name))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def test_fleet_page_shows_every_device_and_run(served: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    srv, fleet, _ = served
    browser.get(srv.url + "/")
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.ID, "devices")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#devices tbody tr[data-device]")
    assert sorted(r.get_attribute("data-device") for r in rows) == fleet.devices
    first = [c.text for c in rows[0].find_elements(By.TAG_NAME, "td")]
    board = BOARDS["nano33ble"]
    assert first[:4] == ["dev-0000", "demo", board.title, board.mcu] and first[6] == "online"
    assert first[4] == f"{board.ram_bytes / 1024:.1f} KiB"
    online = [r for r in rows if r.find_element(By.CSS_SELECTOR, ".online .dot").get_attribute("class") == "dot on"]
    assert len(online) == len(fleet.devices) // 2
    assert browser.find_element(By.ID, "count-online").text == str(len(online))
    models = browser.find_element(By.ID, "models").text
    assert "sine-federated" in models and fleet.run_id in models
    _shot(browser, tmp_path, "dashboard-fleet.png")


def test_run_page_draws_the_learning_curve_and_follows_a_live_run(served: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    srv, fleet, runs = served
    browser.get(srv.url + "/")
    browser.find_element(By.LINK_TEXT, fleet.run_id).click()
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#loss-chart path.loss")))
    path = browser.find_element(By.CSS_SELECTOR, "#loss-chart path.loss")
    assert path.get_attribute("data-points") == str(fleet.rounds)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bytes-chart rect.up")) == fleet.rounds
    assert "sine-federated" in browser.find_element(By.ID, "run-models").text
    _shot(browser, tmp_path, "dashboard-run.png")

    # A run still going on: the page polls its metrics and redraws when a round is appended.
    live = runs / "demo-sine-fedavg-test"
    browser.get(srv.url + "/runs/demo-sine-fedavg-test")
    WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#loss-chart path.loss").get_attribute("data-points") == "5")
    with open(live / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"round": 6, "loss": 0.05, "eval_loss": 0.05, "bytes_up": 10, "bytes_down": 10}) + "\n")
    WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#loss-chart path.loss").get_attribute("data-points") == "6")
    assert browser.find_element(By.ID, "run-progress").text == "6/5"

    # From the run to its model version's lineage (run -> rounds -> devices).
    browser.get(srv.url + f"/runs/{fleet.run_id}")
    browser.find_element(By.LINK_TEXT, "sine-federated").click()
    lineage = WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.ID, "lineage"))).text
    assert fleet.run_id in lineage and all(d in lineage for d in fleet.eligible)


def test_pages_are_self_contained(served: Any) -> None:
    srv, fleet, _ = served
    html = httpx.get(srv.url + "/").text
    assert "http://" not in html.replace(srv.url, "") and "https://" not in html  # no CDN, no remote asset
    assert httpx.get(srv.url + "/static/dashboard.js").status_code == 200
    r = httpx.get(srv.url + "/runs/no-such-run")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    api = httpx.get(srv.url + f"/api/runs/{fleet.run_id}").json()
    assert api["summary"]["state"] == "finished" and len(api["points"]["loss"]) == fleet.rounds


def test_device_table_pages_like_the_directory(served: Any) -> None:
    srv, fleet, _ = served
    n = len(fleet.devices)
    seen: list[str] = []
    url: str | None = srv.url + "/?limit=4"
    pages = 0
    while url is not None:
        html = httpx.get(url).text
        rows = [part.split('"', 1)[0] for part in html.split('data-device="')[1:]]
        assert 1 <= len(rows) <= 4 and f"&ndash;{len(seen) + len(rows)} of {n}" in html  # "devices 5–8 of 12"
        assert f'<div class="big" id="count-devices">{n}</div>' in html  # the cards count the whole fleet
        seen += rows
        pages += 1
        nxt = html.split('rel="next" href="')[1:2]
        url = srv.url + nxt[0].split('"', 1)[0].replace("&amp;", "&") if nxt else None
    assert seen == sorted(fleet.devices) and pages == -(-n // 4)  # every device once, in order, on ceil(n/4) pages
    past = httpx.get(srv.url + f"/?offset={n + 10}&limit=4").text
    assert "data-device=" not in past and f"No devices past number {n}" in past and "&ndash;" not in past
    last_page = (n - 1) // 4 * 4
    assert f'rel="prev" href="/?offset={last_page}&amp;limit=4#devices"' in past  # back to the last real page
    for bad in ("offset=-1", "limit=0", "limit=1001", "offset=x", "offset=%C2%B2", "offset=" + "9" * 5000):
        r = httpx.get(srv.url + "/?" + bad)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), bad
        assert bad.split("=")[0] in r.json()["detail"]
