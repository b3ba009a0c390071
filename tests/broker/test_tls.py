"""mqtts with the private CA: right CA works, wrong CA / no client certificate / plain MQTT are refused,
the certificate (not the user name or password) decides the account; an enrolled DeviceAgent answers
a train task and the server accounts (FleetClient,
the coordinator's MqttTransport, the registry's PresenceListener) read the whole fleet.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from broker.accounts import Enrollment, enroll_device, enroll_server, server_credentials
from broker.files import SecurityPaths
from broker.pki import make_pki
from broker.process import MosquittoBroker
from broker.secure import SecureBrokerConfig
from devices.agent import AgentConfig, DeviceAgent
from devices.boards import get_board
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from devices.link.address import BrokerAddress
from devices.link.fleet_client import FleetClient
from devices.link.hub import MqttHub
from devices.wire import protocol as p
from devices.wire.protocol import ConfigKey, MessageType
from tests.support.broker import NOT_AUTHORIZED, connect
from tests.support.devices import sine_data
from tests.support.waiting import wait_until

FLEET = "lab"


@dataclasses.dataclass
class TlsBroker:
    directory: Path
    broker: MosquittoBroker
    port: int
    device: Enrollment

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port, tls=True)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    d = tmp_path_factory.mktemp("tls-mq")
    broker = SecureBrokerConfig(d, tls=True).broker()
    info = broker.start()
    try:
        assert info.url.startswith("mqtts://")
        yield TlsBroker(d, broker, info.port, enroll_device(d, "dev-t1", fleet=FLEET))
    finally:
        broker.stop()


def test_right_ca_connects_and_a_wrong_ca_fails_certificate_verification(tls_broker: TlsBroker,
                                                                         tmp_path: Path) -> None:
    creds = tls_broker.device.credentials
    t0 = time.monotonic()
    ok = connect(tls_broker.port, client_id="dev-t1", creds=creds, tls=True)
    connect_s = time.monotonic() - t0
    ok.close()
    assert ok.connack == 0
    print(f"mqtts connect + CONNACK: {connect_s * 1000:.1f} ms")
    other_ca = SecurityPaths(make_pki(tmp_path / "other").directory).ca_cert
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(tls_broker.port, client_id="dev-t1", creds=dataclasses.replace(creds, ca=other_ca), tls=True)


def test_tls_refuses_a_missing_client_certificate_and_plain_mqtt_and_the_certificate_is_the_account(
        tls_broker: TlsBroker) -> None:
    creds = tls_broker.device.credentials
    no_cert = dataclasses.replace(creds, cert=None, key=None)
    try:
        probe = connect(tls_broker.port, client_id="dev-t1", creds=no_cert, tls=True, wait=3)
        probe.client.loop_stop()
        assert probe.connack is None  # the handshake fails; no CONNACK ever arrives
    except (ssl.SSLError, OSError):
        pass  # or the handshake failure surfaces right away
    # use_identity_as_username: the certificate's CN is the account, whatever user name and password come with it
    wrong = connect(tls_broker.port, client_id="x", creds=dataclasses.replace(creds, username="fleet-server",
                                                                            password="nope"), tls=True)
    try:
        assert wrong.connack == 0
        assert wrong.publish(f"tinyfleet/v1/{FLEET}/dev-t1/telemetry") in (0, 16)  # as dev-t1 ...
        assert wrong.publish(f"tinyfleet/v1/{FLEET}/other/telemetry") == NOT_AUTHORIZED  # ... not as the server
    finally:
        wrong.close()
    plain = connect(tls_broker.port, client_id="dev-t1", creds=creds, tls=False, wait=2)
    plain.client.loop_stop()
    assert plain.connack is None


def _agent(e: Enrollment, address: BrokerAddress, state_dir: Path) -> DeviceAgent:
    head = MLPHead.init([1, 8, 1], kind="regression", seed=0)
    cfg = AgentConfig(device_id=e.name, board=get_board("nano33ble"), state_dir=state_dir, fleet=FLEET,
                      use_case="sine", sensors=("scalar-signal",), telemetry_s=0.0)
    return DeviceAgent(cfg, OnlineLearner(head, None, seed=0), sine_data(e.name), address=address,
                       authenticated=True)


def test_enrolled_agent_trains_over_mqtts_and_every_server_account_sees_the_fleet(tls_broker: TlsBroker,
                                                                                  tmp_path: Path) -> None:
    from federation.mqtt_transport import MqttTransport
    from registry import inventory, open_store
    from registry.presence import PresenceListener

    address = tls_broker.address
    agent = _agent(tls_broker.device, address, tmp_path)
    hub = MqttHub(address, credentials=tls_broker.device.credentials, workers=1)
    hub.add(agent)
    hub.start()
    # one account per concurrently running server process: the broker forces client id = user name
    coord = enroll_server(tls_broker.directory, "coordinator").credentials
    reg = enroll_server(tls_broker.directory, "registry").credentials
    try:
        assert hub.wait_connected(10) == 1, hub.links["dev-t1"].last_error
        with FleetClient(address, fleet=FLEET, credentials=server_credentials(tls_broker.directory)) as fc:
            assert fc.wait_online(1, timeout=5) == ["dev-t1"]
            assert wait_until(lambda: "dev-t1" in fc.tds)
            assert fc.tds["dev-t1"]["securityDefinitions"]  # the TD says how to authenticate
            w = agent.learner.head.get_weights()
            tid, frame = p.encode_task(MessageType.TRAIN, config={ConfigKey.LOCAL_STEPS: 10, ConfigKey.LR: 0.01,
                                                                  ConfigKey.SERVER_ROUND: 1}, weights=w)
            reply = fc.request({"dev-t1": (tid, frame)}, timeout=10)["dev-t1"]
            assert reply is not None and reply.header["ok"], reply and reply.header
            assert reply.header["metrics"]["num-examples"] == 10
            assert any(not np.allclose(a, b) for a, b in zip(reply.arrays(), w, strict=True))

            transport = MqttTransport(address, fleet=FLEET, credentials=coord)
            transport.start(lambda device, payload: None)
            try:
                assert wait_until(lambda: transport.present_devices() == ["dev-t1"])
            finally:
                transport.close()

            st = open_store(memory=True)
            with PresenceListener(st, address, reg, fleet=FLEET) as listener:
                assert listener.wait_for(lambda s: s.devices_added >= 1 and s.presence_updates >= 1, timeout=10), \
                    listener.rejected
                assert {r["name"]: r for r in inventory(st)}["dev-t1"]["online"] is True
    finally:
        hub.stop()


def test_a_device_login_cannot_read_other_devices_results_through_a_wildcard(tls_broker: TlsBroker) -> None:
    other = enroll_device(tls_broker.directory, "dev-t2", fleet=FLEET)
    server = server_credentials(tls_broker.directory)
    eve = connect(tls_broker.port, client_id="x", creds=tls_broker.device.credentials, tls=True)
    t2 = connect(tls_broker.port, client_id="dev-t2", creds=other.credentials, tls=True)
    srv = connect(tls_broker.port, client_id="srv", creds=server, tls=True)
    try:
        own_task = f"tinyfleet/v1/{FLEET}/dev-t1/task"
        eve.subscribe(f"tinyfleet/v1/{FLEET}/+/result", "tinyfleet/v1/#", own_task)  # granted, filtered on delivery
        srv.subscribe(f"tinyfleet/v1/{FLEET}/+/result")
        assert t2.publish(f"tinyfleet/v1/{FLEET}/dev-t2/result", b"secret-result") in (0x00, 0x10)
        assert srv.wait_for(lambda s: b"secret-result" in [pl for _, pl in s.received])  # the server reads it
        assert srv.publish(own_task, b"marker") in (0x00, 0x10)
        assert eve.wait_for(lambda s: (own_task, b"marker") in s.received)
        # (twice: overlapping filters) the result published before the marker never reached dev-t1
        assert set(eve.topics()) == {own_task}
    finally:
        for c in (eve, t2, srv):
            c.close()
