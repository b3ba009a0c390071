"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, for dashboard tests.

As root Chromium needs `--no-sandbox`; every session gets a fresh profile directory and no network
besides this machine (no sync, no component updates, no background requests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first(paths: tuple[str, ...], name: str) -> str | None:
    for p in paths:
        if os.path.exists(p):
            return p
    return shutil.which(name)


def require_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; fail without them on every machine alike (`make test` installs them)."""
    browser, driver = _first(CHROMIUM, "chromium"), _first(DRIVER, "chromedriver")
    if browser is None or driver is None:
        pytest.fail("chromium and chromium-driver are not installed: `make system-deps` installs them")
    return browser, driver


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A Selenium WebDriver on headless Chromium, quit (and its profile removed) afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_chromium()
    profile = tempfile.mkdtemp(prefix="tinyfleet-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", f"--window-size={width},{height}",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
