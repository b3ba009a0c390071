"""Shared fixtures: a real Mosquitto on a free loopback port for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from devices.broker import BrokerInfo, MosquittoBroker, find_mosquitto  # noqa: E402

pytest_plugins = ["fixtures_models"]  # model fixtures (sine build, tiny CNN): tests/fixtures_models.py


def _require_mosquitto() -> None:
    """Skip without Mosquitto on a developer machine; fail in CI, where `make test` installs it."""
    if find_mosquitto() is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed, but CI must run the broker tests")
        pytest.skip("mosquitto is not installed (make test installs it)")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A private Mosquitto for the test session, stopped by PID afterwards."""
    _require_mosquitto()
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    info = broker.start()
    try:
        yield info
    finally:
        broker.stop()


@pytest.fixture()
def fresh_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of a test's own (for tests that restart or reconfigure it)."""
    _require_mosquitto()
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
