"""One broker account per server process, or a clear error when two processes share one.

A secured tinyfleet broker forces MQTT client id = user name, so two processes logging in with the
same account take each other's session over. These tests run a real secured Mosquitto: a second
*process* (a real subprocess, because the account is named after the PID) gets its own account
and both stay connected; two Grids sharing one credentials file end with the thrown-out one
refusing to go on, with one line that says why, instead of reconnecting and throwing the other out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.accounts import enroll_server, list_accounts, process_server_account
from broker.files import SERVER_USER, SecurityPaths
from broker.process import find_mosquitto
from broker.secure import secured_broker
from federation import MqttGrid
from federation.exceptions import FederationError
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def managed(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    broker = secured_broker(tmp_path / "broker")
    url = broker.start().url
    try:
        yield tmp_path / "broker", url
    finally:
        broker.stop()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_each_process_gets_its_own_account_and_dead_ones_are_retired(managed: tuple[Path, str]) -> None:
    directory, _ = managed
    stale = f"{SERVER_USER}-{_dead_pid()}"
    enroll_server(directory, stale)
    creds = process_server_account(directory)
    mine = f"{SERVER_USER}-{os.getpid()}"
    assert creds.username == mine
    accounts = list_accounts(directory)
    assert mine in accounts and stale not in accounts and SERVER_USER in accounts
    paths = SecurityPaths(directory)
    assert not (paths.credentials_dir / f"{stale}.json").exists()
    assert f"{stale}:" not in paths.passwd.read_text() and f"user {stale}\n" not in paths.acl.read_text()
    assert process_server_account(directory) == creds  # the same process keeps its account


def test_two_server_processes_on_one_managed_broker_both_stay_connected(
        managed: tuple[Path, str]) -> None:
    directory, url = managed
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from federation import MqttGrid
            with MqttGrid({url!r}, broker_dir={str(directory)!r}) as grid:
                print(grid.transport.username, flush=True)
                sys.stdin.readline()  # the parent has connected too
                grid.wait_for_nodes(0, timeout=5)  # still usable: not taken over
                print("still-connected", grid.transport.mqtt.connected.is_set(), flush=True)
        """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None and child.stdin is not None
        theirs = child.stdout.readline().strip()
        with MqttGrid(url, broker_dir=directory) as grid:
            assert grid.transport.username != theirs and theirs.startswith(f"{SERVER_USER}-")
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "still-connected True"
            assert grid.transport.mqtt.connected.is_set() and not grid.transport.mqtt.taken_over
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()


def test_a_shared_account_is_a_clear_error_not_a_tug_of_war(managed: tuple[Path, str]) -> None:
    directory, url = managed
    shared = SecurityPaths(directory).credentials_dir / f"{SERVER_USER}.json"
    with MqttGrid(url, credentials=shared) as one, MqttGrid(url, credentials=shared) as two:
        # each connect throws the other out; within a few reconnects one of them gives up
        assert wait_until(lambda: one.transport.mqtt.taken_over or two.transport.mqtt.taken_over, timeout=30)
        loser, winner = (one, two) if one.transport.mqtt.taken_over else (two, one)
        with pytest.raises(FederationError, match=f"with account '{SERVER_USER}' and took this connection over"):
            loser.get_node_ids()
        thread = loser.transport.mqtt._client._thread  # noqa: SLF001 - paho's network thread
        assert thread is None or not thread.is_alive()  # it does not reconnect: no tug of war
        assert wait_until(winner.transport.mqtt.connected.is_set, timeout=15)
        assert not winner.transport.mqtt.taken_over
        assert winner.wait_for_nodes(0, timeout=5) == []
