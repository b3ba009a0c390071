"""The hardened Mosquitto (no TLS): passwords, the per-device ACL matrix, client-id takeover, limits.

Every assertion is on what the real broker answers (MQTT v5 reason codes) and on what ARRIVES at
the server account: Mosquitto grants a forbidden SUBSCRIBE and only filters delivery, and it drops a
forbidden QoS 0 PUBLISH silently, so a SUBACK or a missing error proves nothing.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.accounts import (
    Enrollment,
    enroll_device,
    enroll_server,
    list_accounts,
    load_credentials,
    server_credentials,
)
from broker.exceptions import SecurityError
from broker.files import SERVER_USER
from broker.process import MosquittoBroker
from broker.secure import SecureBrokerConfig
from devices.exceptions import DeviceIdError
from devices.link.address import Credentials
from devices.wire.topics import device_topic
from tests.support.broker import BAD_USER_OR_PASSWORD, NOT_AUTHORIZED, Probe, connect
from tests.support.waiting import wait_until

FLEET = "lab"


class Secured:
    """A running secured broker with two devices of fleet `lab` and one of fleet `other`."""

    def __init__(self, directory: Path) -> None:
        self.config = SecureBrokerConfig(directory, max_packet_size=64 * 1024)
        self.broker: MosquittoBroker = self.config.broker()
        self.port = self.broker.start().port
        # enrolled while the broker runs: they can log in only because enrolment reloads it (SIGHUP)
        self.a = enroll_device(directory, "dev-a", fleet=FLEET)
        self.b = enroll_device(directory, "dev-b", fleet=FLEET)
        self.o = enroll_device(directory, "dev-o", fleet="other")
        self.server = server_credentials(directory)


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    s = Secured(tmp_path_factory.mktemp("secure-mq"))
    try:
        yield s
    finally:
        s.broker.stop()


def _dev(sec: Secured, e: Enrollment) -> Probe:
    p = connect(sec.port, client_id=e.name, creds=e.credentials)
    assert p.connack == 0, f"{e.name} refused: {p.connack:#x}"
    return p


def _login(sec: Secured, creds: Credentials) -> int | None:
    """Connect, return the CONNACK reason code, disconnect."""
    p = connect(sec.port, client_id=str(creds.username), creds=creds)
    p.close()
    return p.connack


@pytest.fixture()
def server(sec: Secured) -> Iterator[Probe]:
    """The server account, subscribed to everything under the root."""
    p = connect(sec.port, client_id=SERVER_USER, creds=sec.server)
    assert p.connack == 0
    p.subscribe("tinyfleet/v1/#")
    yield p
    p.close()


def test_files_are_private_and_the_acl_names_each_devices_topics(sec: Secured) -> None:
    root = sec.config.paths
    for f in (root.passwd, root.acl, root.accounts, root.credentials_dir / f"{SERVER_USER}.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    passwd = root.passwd.read_text()
    assert sec.a.password not in passwd and "dev-a:$7$" in passwd  # PBKDF2 hash only
    acl = root.acl.read_text()
    assert "topic write tinyfleet/v1/lab/dev-a/result" in acl and "topic read tinyfleet/v1/lab/dev-a/task" in acl
    assert "%u" not in acl and "%c" not in acl
    assert list_accounts(root.directory)["dev-o"] == {**list_accounts(root.directory)["dev-o"], "role": "device",
                                                      "fleet": "other"}


def test_anonymous_unknown_user_and_wrong_password_are_refused(sec: Secured) -> None:
    refused = {NOT_AUTHORIZED, BAD_USER_OR_PASSWORD}
    anon = connect(sec.port, client_id="anon-1")
    wrong = connect(sec.port, client_id="dev-a", creds=Credentials("dev-a", sec.b.password))
    ghost = connect(sec.port, client_id="ghost", creds=Credentials("ghost", sec.a.password))
    try:
        assert anon.connack in refused and wrong.connack in refused and ghost.connack in refused
    finally:
        for p in (anon, wrong, ghost):
            p.client.loop_stop()


def test_device_acl_matrix_publish(sec: Secured, server: Probe) -> None:
    a = _dev(sec, sec.a)
    try:
        own = device_topic(FLEET, "dev-a", "telemetry")
        assert a.publish(own, b"own-1") in (0x00, 0x10)
        assert server.wait_for(lambda s: (own, b"own-1") in s.received)
        forbidden = [device_topic(FLEET, "dev-b", "result"),        # another device's result
                     device_topic(FLEET, "dev-b", "presence"),      # ... or presence
                     device_topic(FLEET, "dev-a", "task"),          # its own task topic is read-only
                     device_topic("other", "dev-a", "telemetry"),   # its own id in a fleet it is not in
                     "tinyfleet/v1/lab/dev-a/telemetry/extra",      # below its topics
                     "elsewhere/x"]
        for topic in forbidden:
            assert a.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        a.client.publish(device_topic(FLEET, "dev-b", "td"), b"forged-qos0", qos=0)  # QoS 0: no answer at all
        # ordering per subscriber: once this marker arrives, any forged message would have arrived before it
        assert a.publish(own, b"marker") in (0x00, 0x10)
        assert server.wait_for(lambda s: (own, b"marker") in s.received)
        assert [t for t, pl in server.received if pl.startswith(b"forged")] == []
        assert a.disconnects == []  # denial costs a reason code, not the connection
    finally:
        a.close()


def test_device_acl_matrix_subscribe_delivers_only_its_own_tasks(sec: Secured, server: Probe) -> None:
    a, b = _dev(sec, sec.a), _dev(sec, sec.b)
    try:
        a.subscribe(device_topic(FLEET, "dev-b", "task"), "tinyfleet/v1/#", device_topic(FLEET, "dev-a", "task"))
        b.subscribe(device_topic(FLEET, "dev-b", "task"))
        b_task, a_task = device_topic(FLEET, "dev-b", "task"), device_topic(FLEET, "dev-a", "task")
        assert server.publish(b_task, b"for-b") in (0x00, 0x10)
        assert server.publish(device_topic(FLEET, "dev-b", "result"), b"b-result") in (0x00, 0x10)
        assert server.publish(a_task, b"for-a") in (0x00, 0x10)
        assert b.wait_for(lambda p: (b_task, b"for-b") in p.received)  # routing works...
        assert a.wait_for(lambda p: (a_task, b"for-a") in p.received)
        assert {t for t, _ in a.received} == {a_task}  # ...and dev-a saw nothing of dev-b
    finally:
        a.close()
        b.close()


def test_a_device_cannot_take_over_another_devices_session_by_client_id(sec: Secured, server: Probe) -> None:
    a = _dev(sec, sec.a)
    spoof = connect(sec.port, client_id="dev-a", creds=sec.b.credentials)  # dev-b's login, dev-a's client id
    try:
        assert spoof.connack == 0  # the broker replaced the client id by the user name "dev-b"
        assert spoof.publish(device_topic(FLEET, "dev-a", "presence"), b"forged") == NOT_AUTHORIZED
        assert a.publish(device_topic(FLEET, "dev-a", "telemetry"), b"still-here") in (0x00, 0x10)
        assert a.disconnects == []  # without use_username_as_clientid dev-a would have been kicked (0x8E)
    finally:
        spoof.close()
        a.close()


def test_rotating_a_password_locks_out_the_old_one_on_the_running_broker(sec: Secured) -> None:
    old = enroll_device(sec.config.directory, "dev-rot", fleet=FLEET)
    assert _login(sec, old.credentials) == 0
    with pytest.raises(SecurityError, match="already enrolled.*--rotate"):
        enroll_device(sec.config.directory, "dev-rot", fleet=FLEET)
    new = enroll_device(sec.config.directory, "dev-rot", fleet=FLEET, rotate=True)
    assert new.password != old.password
    # SIGHUP is handled asynchronously by the broker: poll until the old password stops working
    assert wait_until(lambda: _login(sec, old.credentials) == NOT_AUTHORIZED, timeout=5)
    assert _login(sec, new.credentials) == 0


def test_bad_names_and_role_clashes_are_refused_before_any_file_changes(sec: Secured) -> None:
    before = sec.config.paths.accounts.read_text()
    for bad in ("dev/evil", "dev+", "#", "a:b", "", "x" * 65):
        with pytest.raises(DeviceIdError):
            enroll_device(sec.config.directory, bad, fleet=FLEET)
    with pytest.raises(SecurityError, match="already a server account"):
        enroll_device(sec.config.directory, SERVER_USER, fleet=FLEET)
    with pytest.raises(SecurityError, match="already a device account"):
        enroll_server(sec.config.directory, "dev-a")
    assert sec.config.paths.accounts.read_text() == before
    with pytest.raises(SecurityError, match="not initialized"):
        enroll_device(sec.config.directory.parent / "nowhere", "dev-x")
    with pytest.raises(SecurityError, match="initialized without TLS"):
        SecureBrokerConfig(sec.config.directory, tls=True).initialize()


def test_credentials_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="does not exist"):
        load_credentials(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SecurityError, match="bad.json cannot be read as JSON"):
        load_credentials(bad)
    bad.write_text('{"username": "x"}')
    with pytest.raises(SecurityError, match="'username' and 'password'"):
        load_credentials(bad)


def test_packet_limit_is_advertised_and_enforced(sec: Secured) -> None:
    a = _dev(sec, sec.a)
    try:
        assert a.connack_props.MaximumPacketSize == 64 * 1024
        info = a.client.publish(device_topic(FLEET, "dev-a", "telemetry"), b"\0" * (80 * 1024), qos=1)
        # paho refuses to send it (it honours the CONNACK limit) or the broker disconnects with 0x95
        assert info.rc != 0 or a.wait_for(lambda p: 0x95 in p.disconnects)
        print("oversize publish:", "refused by paho" if info.rc else f"broker disconnect {a.disconnects}")
    finally:
        a.close()
