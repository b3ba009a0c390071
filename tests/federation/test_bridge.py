"""Site brokers bridged to a central one: the registry sees every device; tasks and results never cross.

Real Mosquitto on both ends (all secured), real simulated devices on two sites, the registry's
own `PresenceListener` on the central broker. Absence is checked with a sentinel sent after the
forbidden message over the same path: when the sentinel has arrived, anything sent before it on
that bridge connection would have arrived too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.accounts import enroll_bridge, enroll_server, server_credentials
from broker.process import MosquittoBroker
from broker.secure import secured_broker
from devices.link.address import BrokerAddress, Credentials, parse_broker_url
from devices.link.client import MqttClient
from devices.simulator import FleetSimulator, simulated_ids
from devices.wire import protocol
from devices.wire.protocol import ConfigKey, MessageType
from devices.wire.topics import device_topic, parse_topic
from federation.hierarchy.bridge import central_bridge
from registry import inventory, open_store
from registry.presence import PresenceListener
from tests.support.waiting import wait_until

FLEET = "default"


class Observer:
    """A server-side MQTT client that records every message it sees."""

    def __init__(self, address: BrokerAddress, creds: Credentials, subscriptions: list[str], name: str) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = MqttClient(address, creds, client_id=name, subscriptions=subscriptions,
                                 on_message=self._on_message).connect()

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.seen.append((topic, payload))

    def kinds(self, device_prefix: str = "") -> set[tuple[str, str]]:
        with self._lock:
            out = set()
            for topic, _ in self.seen:
                t = parse_topic(topic)
                if t.device_id.startswith(device_prefix):
                    out.add((t.device_id, t.kind))
            return out


@pytest.fixture()
def bridged_sites(tmp_path: Path) -> Iterator[dict]:
    central_dir = tmp_path / "central"
    central = secured_broker(central_dir)
    central_url = central.start().url
    brokers: list[MosquittoBroker] = [central]
    sims: list[FleetSimulator] = []
    try:
        sites = []
        for i in range(2):
            d = tmp_path / f"site{i}"
            site = secured_broker(d)
            site.extra_config += "\n" + central_bridge(parse_broker_url(central_url), central_dir, site=f"site{i}",
                                                       fleet=FLEET)
            url = site.start().url
            brokers.append(site)
            from broker.accounts import enroll_device_credentials

            ids = simulated_ids(3, f"g{i}")
            sim = FleetSimulator(n=3, use_case="sine", address=parse_broker_url(url), state_root=d / "devices",
                                 fleet=FLEET, id_prefix=f"g{i}", telemetry_s=0.2, seed=i,
                                 device_credentials=enroll_device_credentials(d, ids, fleet=FLEET))
            sims.append(sim)
            assert sim.start(timeout=30) == 3
            sites.append({"dir": d, "url": url, "ids": ids, "sim": sim})
        yield {"central_dir": central_dir, "central_url": central_url, "sites": sites}
    finally:
        for sim in sims:
            sim.stop()
        for b in reversed(brokers):
            b.stop()


def test_registry_on_the_central_broker_sees_every_site_and_its_telemetry(bridged_sites: dict) -> None:
    central = parse_broker_url(bridged_sites["central_url"])
    creds = enroll_server(bridged_sites["central_dir"], "registry").credentials
    every = {d for s in bridged_sites["sites"] for d in s["ids"]}
    st = open_store(memory=True)
    with PresenceListener(st, central, creds, fleet=FLEET) as listener:
        assert listener.wait_for(lambda s: s.devices_added >= 6 and s.presence_updates >= 6, timeout=30), \
            listener.rejected
        rows = {r["name"]: r for r in inventory(st)}
        assert every <= set(rows) and all(rows[d]["online"] for d in every)
    telemetry = Observer(central, enroll_server(bridged_sites["central_dir"], "tele").credentials,
                         [f"tinyfleet/v1/{FLEET}/+/telemetry"], "tele")
    try:
        assert wait_until(lambda: {d for d, k in telemetry.kinds() if k == "telemetry"} == every, timeout=30)
    finally:
        telemetry.client.close()


def test_tasks_and_results_never_cross_the_bridge(bridged_sites: dict) -> None:
    site = bridged_sites["sites"][0]
    central = parse_broker_url(bridged_sites["central_url"])
    site_addr = parse_broker_url(site["url"])
    central_dir = bridged_sites["central_dir"]
    up = Observer(central, enroll_server(central_dir, "watch-central").credentials, ["tinyfleet/v1/#"], "watch-central")
    down = Observer(site_addr, enroll_server(site["dir"], "watch-site").credentials, ["tinyfleet/v1/#"], "watch-site")
    site_server = MqttClient(site_addr, server_credentials(site["dir"]), client_id="fleet-server").connect()
    central_server = MqttClient(central, server_credentials(central_dir), client_id="fleet-server").connect()
    try:
        dev = site["ids"][0]
        # down: a task published centrally for a site device never reaches the site
        central_server.publish(device_topic(FLEET, dev, "task"), b"central task", qos=1).wait_for_publish(5)
        # up: a real device result on the site stays on the site
        tid, frame = protocol.encode_task(MessageType.EVALUATE, config={ConfigKey.SERVER_ROUND: 1},
                                          weights=site["sim"].agents[0].learner.head.get_weights())
        site_server.publish(device_topic(FLEET, dev, "task"), frame, qos=1).wait_for_publish(5)
        assert wait_until(lambda: (dev, "result") in down.kinds(), timeout=20)
        # sentinel after both: a TD through the same bridge connection
        site_server.publish(device_topic(FLEET, "g0-sentinel", "td"), b"{}", qos=1).wait_for_publish(5)
        assert wait_until(lambda: ("g0-sentinel", "td") in up.kinds(), timeout=20)
        site_tasks = [p for t, p in down.seen if t == device_topic(FLEET, dev, "task")]
        assert site_tasks == [frame]  # only the site's own task, never the central one
        central_tasks = [p for t, p in up.seen if t == device_topic(FLEET, dev, "task")]
        assert central_tasks == [b"central task"]  # the site's task did not come up either
        assert not {k for _, k in up.kinds() if k == "result"}
        # the central broker itself refuses a bridge account's tasks (ACL), even if a site were misconfigured
        rogue = enroll_bridge(central_dir, "bridge-rogue", fleet=FLEET).credentials
        probe = MqttClient(central, rogue, client_id="bridge-rogue").connect()
        try:
            probe.publish(device_topic(FLEET, "g1-0000", "task"), b"rogue task", qos=1).wait_for_publish(5)
            probe.publish(device_topic(FLEET, "rogue-sentinel", "td"), b"{}", qos=1).wait_for_publish(5)
            assert wait_until(lambda: ("rogue-sentinel", "td") in up.kinds(), timeout=20)
            assert ("g1-0000", "task") not in up.kinds()
        finally:
            probe.close()
    finally:
        for c in (site_server, central_server, up.client, down.client):
            c.close()
