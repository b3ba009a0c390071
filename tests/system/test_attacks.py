"""What one enrolled device can do to the fleet (issue #12), each attack against a real, secured Mosquitto.

The attacker holds one device's own credentials: the broker's ACL confines it to its own topics,
so every attack here uses only those. Honest devices are real `DeviceAgent`s (`FleetSimulator`);
the attacker is a `HostileDevice` speaking the real wire protocol. The coordinator is the real
`tinyfleet federate run`, invoked in-process. docs/reliability.md ("Attacks by an enrolled
device") describes each attack, the outcome before and after, and names these tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from broker.accounts import enroll_device, enroll_device_credentials, ensure_server_account
from broker.files import SERVER_USER, SecurityPaths
from broker.process import MosquittoBroker
from broker.secure import secured_broker
from devices.boards import get_board
from devices.link.address import BrokerAddress, Credentials, parse_broker_url
from devices.link.fleet_client import FleetClient
from devices.simulator import FleetSimulator, simulated_ids
from devices.wire import protocol
from devices.wire.thing_description import td_payload, thing_description
from federation.checkpoint import load_checkpoint
from tests.support.hostile import HostileDevice, eval_reply, task_arrays, train_reply
from tests.support.waiting import wait_until
from tinyfleet.cli.main import app

FLEET = "atk"
TRAIN, EVALUATE = protocol.MessageType.TRAIN, protocol.MessageType.EVALUATE


@dataclass
class Secured:
    directory: Path
    broker: MosquittoBroker
    url: str

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.url)

    @property
    def server_file(self) -> Path:
        return SecurityPaths(self.directory).credentials_dir / f"{SERVER_USER}.json"

    def device(self, name: str) -> Credentials:
        return enroll_device(self.directory, name, fleet=FLEET).credentials


@pytest.fixture()
def secured(tmp_path: Path) -> Iterator[Secured]:
    d = tmp_path / "mq"
    broker = secured_broker(d)
    info = broker.start()
    try:
        yield Secured(d, broker, info.url)
    finally:
        broker.stop()


@contextlib.contextmanager
def honest_fleet(sb: Secured, n: int, root: Path, prefix: str = "hon") -> Iterator[FleetSimulator]:
    creds = enroll_device_credentials(sb.directory, simulated_ids(n, prefix), fleet=FLEET)
    sim = FleetSimulator(n=n, use_case="sine", address=sb.address, state_root=root / f"devices-{prefix}",
                         fleet=FLEET, id_prefix=prefix, samples_per_device=16, telemetry_s=0.0,
                         device_credentials=creds, seed=1)
    try:
        assert sim.start(timeout=30) == n
        yield sim
    finally:
        sim.stop()


def federate(sb: Secured, out: Path, *extra: str, command: str = "run") -> Any:
    args = ["federate", "run", "--task", "sine", "--broker", sb.url, "--credentials", str(sb.server_file),
            "--fleet", FLEET, "--out", str(out), "--run-id", "atk", "--local-steps", "5",
            "--round-timeout", "60", "--quorum-timeout", "30", "--json", *extra]
    return CliRunner().invoke(app, args)


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "atk" / "metrics.jsonl").read_text().splitlines()]


def params(path: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(path)[0]


def local_keys(frame: protocol.Frame) -> set[str]:
    keys = [name for name, _ in frame.tensors]
    n_layers = len(keys) // 2
    return {f"{p}{i % n_layers}" for i in frame.config.get("local-layers", []) for p in ("w", "b")}


# ---------------------------------------------------------------------------------------------- 1
def test_a_device_cannot_rewrite_another_devices_registry_record(secured: Secured) -> None:
    """Attack 1: a forged, retained TD on the attacker's own topic names the victim (RAM and flash 7)."""
    from registry import inventory, open_store
    from registry.presence import PresenceListener

    board = get_board("nano33ble")
    with (HostileDevice(secured.address, secured.device("victim"), fleet=FLEET, device_id="victim") as victim,
          HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory") as mallory):
        real = thing_description(device_id="victim", fleet=FLEET, board=board, use_case="sine", host="127.0.0.1",
                                 port=1883, sensors=["scalar-signal"])
        victim.publish("td", td_payload(real), retain=True)
        forged = json.loads(td_payload(real))
        forged["tinyfleet:board"] = {**forged["tinyfleet:board"], "tinyfleet:ramBytes": 7, "tinyfleet:flashBytes": 7}
        mallory.publish("td", json.dumps(forged).encode(), retain=True)
        mallory.publish("presence", json.dumps({"v": 1, "type": "presence", "device": "victim", "fleet": FLEET,
                                                "online": False, "ts": 1.0}).encode(), retain=True)
        store = open_store(memory=True)
        listener_creds = ensure_server_account(secured.directory, "registry-listener")
        with PresenceListener(store, secured.address, listener_creds, fleet=FLEET) as listener:
            assert listener.wait_for(lambda lis: lis.devices_added >= 1 and len(lis.rejected) >= 2, timeout=20), \
                (listener.devices_added, listener.rejected)
        rows = {r["id"]: r for r in inventory(store)}
    assert set(rows) == {"victim"}, rows  # the forged TD added nothing and changed nothing
    assert rows["victim"]["ram_bytes"] == board.ram_bytes and rows["victim"]["flash_bytes"] == board.flash_bytes
    assert all(line.startswith(f"tinyfleet/v1/{FLEET}/mallory/") and "wrong-device" in line
               for line in listener.rejected), listener.rejected
    assert listener.rejected_reasons["wrong-device"] == 2


def test_devices_list_and_show_take_the_id_from_the_topic(secured: Secured) -> None:
    """Attack 1 through `devices list|show`: a forged TD or presence is dropped with a reason."""
    board = get_board("nano33ble")
    with (HostileDevice(secured.address, secured.device("victim"), fleet=FLEET, device_id="victim") as victim,
          HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory") as mallory):
        real = thing_description(device_id="victim", fleet=FLEET, board=board, use_case="sine", host="127.0.0.1",
                                 port=1883, sensors=["scalar-signal"])
        victim.publish("td", td_payload(real), retain=True)
        victim.announce()
        mallory.publish("td", td_payload({**real, "title": "victim"}), retain=True)
        mallory.publish("telemetry", protocol.telemetry_payload("victim", {"loss": 1.0}))
        mallory.publish("presence", protocol.presence_payload("victim", online=False, fleet=FLEET), retain=True)
        with FleetClient(secured.address, fleet=FLEET, client_id="watch",
                         credentials=ensure_server_account(secured.directory, "watch")) as fc:
            assert wait_until(lambda: len(fc.bad_messages) >= 2 and "victim" in fc.tds and fc.online() == ["victim"],
                              timeout=20), fc.bad_messages
        assert set(fc.tds) == {"victim"}
        assert fc.tds["victim"]["tinyfleet:board"]["tinyfleet:ramBytes"] == board.ram_bytes
        assert "mallory" not in fc.presence
        assert all("wrong-device" in b for b in fc.bad_messages), fc.bad_messages
        shown = CliRunner().invoke(app, ["devices", "list", "--broker", secured.url, "--fleet", FLEET,
                                         "--credentials", str(secured.server_file), "--json"])
    assert shown.exit_code == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert [(d["device"], d["online"]) for d in doc["devices"]] == [("victim", True)]
    assert doc["rejected"].get("wrong-device", 0) >= 2


# ---------------------------------------------------------------------------------------------- 2
def _overflowing(dev: HostileDevice, frame: protocol.Frame) -> bytes:
    if frame.type == TRAIN:
        return train_reply(frame, dev.device_id,
                           [(k, np.full(v.shape, 1e300, np.float64)) for k, v in task_arrays(frame).items()])
    return eval_reply(frame, dev.device_id)


def test_a_float64_reply_that_overflows_float32_is_refused(secured: Secured, tmp_path: Path) -> None:
    """Attack 2: 1e300 passes a float64 finiteness check and becomes inf in float32."""
    with (honest_fleet(secured, 1, tmp_path),
          HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory",
                        respond=_overflowing) as mallory):
        mallory.announce()
        r = federate(secured, tmp_path / "runs", "--strategy", "fedavg", "--rounds", "2", "--quorum", "2")
    assert r.exit_code == 0, r.stderr
    final = params(tmp_path / "runs" / "atk" / "final.npz")
    assert all(np.isfinite(v).all() for v in final.values())
    assert [m["reasons"].get("non-finite") for m in metrics(tmp_path / "runs")] == [1, 1]
    assert [m["replies"] for m in metrics(tmp_path / "runs")] == [1, 1]


def test_a_run_where_no_round_aggregated_exits_1(secured: Secured, tmp_path: Path) -> None:
    """Attack 2/5: with only the attacker present nothing aggregates; the run must not report success."""
    with HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory",
                       respond=_overflowing) as mallory:
        mallory.announce()
        r = federate(secured, tmp_path / "runs", "--strategy", "fedavg", "--rounds", "2", "--quorum", "1")
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no round aggregated an update"), r.stderr
    assert not (tmp_path / "runs" / "atk" / "final.npz").exists()
    status = CliRunner().invoke(app, ["federate", "status", str(tmp_path / "runs" / "atk"), "--json"])
    assert json.loads(status.stdout)["state"] == "failed"


def test_an_aggregate_that_overflows_never_replaces_the_model(secured: Secured, tmp_path: Path) -> None:
    """Attack 2, TinyMetaFed: finite float32 deltas of 3.4e38 add up to inf in θ + ε·Δ over two rounds."""
    def huge_delta(dev: HostileDevice, frame: protocol.Frame) -> bytes:
        if frame.type != TRAIN:
            return eval_reply(frame, dev.device_id)
        local = local_keys(frame)
        tensors = [(k, protocol.SparseTensor(np.array([0], np.uint32), np.array([3.4e38], np.float32), v.shape))
                   for k, v in task_arrays(frame).items() if k not in local]
        return train_reply(frame, dev.device_id, tensors)

    with (honest_fleet(secured, 1, tmp_path),
          HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory",
                        respond=huge_delta) as mallory):
        mallory.announce()
        r = federate(secured, tmp_path / "runs", "--strategy", "tinymetafed", "--rounds", "3", "--quorum", "2",
                     "--epsilon", "1", "--epsilon-floor", "1",
                     "--downlink", "dense")  # the attack is on the uplink: every device gets dense weights
    run_dir = tmp_path / "runs" / "atk"
    for name in ("checkpoint.npz", "final.npz"):
        if (run_dir / name).exists():
            assert all(np.isfinite(v).all() for v in params(run_dir / name).values()), name
    assert r.exit_code == 0, r.stderr
    assert any("non-finite aggregate" in m.get("skipped", "") for m in metrics(tmp_path / "runs"))


def test_a_round_where_every_device_lost_its_base_still_switches_them_to_dense(secured: Secured,
                                                                             tmp_path: Path) -> None:
    """Not an attack: the delta downlink's fallback must hold when no reply of a round is valid.

    The device's head is not the server's initial θ, so the first delta-coded task gets `stale-base`;
    that round aggregates nothing (the coordinator skips it) but the strategy must still learn to send
    dense weights, or the device answers `stale-base` forever (found by the test above, before it ran
    with `--downlink dense`).
    """
    with honest_fleet(secured, 1, tmp_path):
        r = federate(secured, tmp_path / "runs", "--strategy", "tinymetafed", "--rounds", "3", "--quorum", "1")
    rounds = metrics(tmp_path / "runs")
    assert r.exit_code == 0, (r.stderr, [(m["round"], m["reasons"]) for m in rounds])
    assert [m["replies"] for m in rounds][1:] == [1, 1], [(m["round"], m["reasons"]) for m in rounds]


# ---------------------------------------------------------------------------------------------- 3
def _capture_results(sb: Secured) -> FleetClient:
    return FleetClient(sb.address, fleet=FLEET, client_id="monitor",
                       credentials=ensure_server_account(sb.directory, "monitor")).connect()


def _phi_of(fc: FleetClient, device: str) -> dict[str, np.ndarray]:
    (frame,) = [f for f in fc.results[device] if f.header["ok"] and f.tensors]
    return {name: np.asarray(t, np.float64) for name, t in frame.tensors}


def _push_away(dev: HostileDevice, frame: protocol.Frame) -> bytes:
    """A plausible update (5 % of |θ|: under every norm bound) claiming 10^9 examples."""
    if frame.type != TRAIN:
        return eval_reply(frame, dev.device_id)
    theta = task_arrays(frame)
    size = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in theta.values()))
    count = sum(v.size for v in theta.values())
    step = 0.05 * size / math.sqrt(count)
    return train_reply(frame, dev.device_id, [(k, (v + step).astype(np.float32)) for k, v in theta.items()],
                       num_examples=1e9)


@pytest.mark.parametrize("aggregate", ["mean", "median", "trimmed-mean", "krum"])
def test_num_examples_is_capped_and_every_aggregate_is_what_the_server_computes(
        secured: Secured, tmp_path: Path, aggregate: str) -> None:
    """Attack 3: a device claiming 10^9 examples decided the whole FedAvg model."""
    n_honest = 4
    with (honest_fleet(secured, n_honest, tmp_path),
          HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory",
                        respond=_push_away) as mallory):
        mallory.announce()
        fc = _capture_results(secured)
        try:
            r = federate(secured, tmp_path / "runs", "--strategy", "fedavg", "--rounds", "1", "--quorum", "5",
                         "--aggregate", aggregate, "--trim", "0.2", "--malicious", "1")
            assert r.exit_code == 0, r.stderr
            devices = [*simulated_ids(n_honest, "hon"), "mallory"]
            phis = [_phi_of(fc, d) for d in devices]
        finally:
            fc.close()
    initial = params(tmp_path / "runs" / "atk" / "checkpoint.npz")  # round 1's result
    final = params(tmp_path / "runs" / "atk" / "final.npz")
    assert [m["replies"] for m in metrics(tmp_path / "runs")] == [5]
    for k in final:
        stack = np.stack([p[k] for p in phis])
        if aggregate == "mean":  # every device weighs local-steps (5) examples, whatever it claims
            expected = stack.mean(axis=0)
        elif aggregate == "median":
            expected = np.median(stack, axis=0)
        elif aggregate == "trimmed-mean":  # 0.2 of 5 cuts one value at each end per coordinate
            expected = np.sort(stack, axis=0)[1:-1].mean(axis=0)
        else:
            expected = None
        if expected is not None:
            np.testing.assert_allclose(final[k], expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(final[k], phis[-1][k], rtol=1e-4, atol=0), f"{aggregate}: the attacker decided {k}"
    if aggregate == "krum":  # Krum picks one honest device's parameters
        picks = [i for i, p in enumerate(phis) if all(np.allclose(final[k], p[k], rtol=1e-6) for k in final)]
        assert picks and picks[0] < n_honest, picks
    assert initial.keys() == final.keys()


# ---------------------------------------------------------------------------------------------- 4
def test_presence_floods_cost_the_attacker_not_the_fleet(secured: Secured, tmp_path: Path) -> None:
    """Attack 4: 2,000 "online" messages (and 500 offline/online flips) made the coordinator re-send 2,000 tasks."""
    def flood(dev: HostileDevice, frame: protocol.Frame) -> list[bytes]:
        if frame.type == TRAIN:
            for _ in range(2000):
                dev.mqtt.publish(dev.topic("presence"), protocol.presence_payload(dev.device_id, online=True,
                                                                                 fleet=FLEET), qos=1)
            for i in range(1000):
                dev.mqtt.publish(dev.topic("presence"), protocol.presence_payload(dev.device_id, online=i % 2 == 1,
                                                                                 fleet=FLEET), qos=1)
            theta = task_arrays(frame)
            return [train_reply(frame, dev.device_id, list(theta.items()))]  # after the flood, in order
        return [eval_reply(frame, dev.device_id)]

    with (honest_fleet(secured, 1, tmp_path),
          HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory",
                        respond=flood) as mallory):
        mallory.announce()
        r = federate(secured, tmp_path / "runs", "--strategy", "fedavg", "--rounds", "1", "--quorum", "2")
    assert r.exit_code == 0, r.stderr
    (m,) = metrics(tmp_path / "runs")
    assert m["replies"] == 2
    assert m["resent"] <= 3, m  # at most MAX_RESENDS per task, however many flips
    assert m["bytes_down_train"] < 5 * 8_000, m  # 2 tasks of ~4.8 kB plus at most 3 re-sends (was 10.4 MB)
    assert m["reasons"].get("rate-limited", 0) > 0 or m["reasons"].get("duplicate-online", 0) > 0, m


# ---------------------------------------------------------------------------------------------- 5
def test_losing_the_broker_fails_loudly_and_the_run_resumes(secured: Secured, tmp_path: Path) -> None:
    """Attack 5: broker killed after round 1 and not restarted; rounds 2-3 were skipped and the run 'finished'."""
    def kill_in_round_2(dev: HostileDevice, frame: protocol.Frame) -> bytes | None:
        if frame.header.get("round") == 2 and frame.type == TRAIN:
            os.kill(secured.broker.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
            return None
        if frame.type == TRAIN:
            return train_reply(frame, dev.device_id, list(task_arrays(frame).items()))
        return eval_reply(frame, dev.device_id)

    with HostileDevice(secured.address, secured.device("scripted"), fleet=FLEET, device_id="scripted",
                       respond=kill_in_round_2) as dev:
        dev.announce()
        r = federate(secured, tmp_path / "runs", "--strategy", "fedavg", "--rounds", "3", "--quorum", "1",
                     "--broker-timeout", "2")
    assert r.exit_code == 1, (r.exit_code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "lost the MQTT broker" in lines[0] and "federate resume" in lines[0], r.stderr
    run_dir = tmp_path / "runs" / "atk"
    status = json.loads(CliRunner().invoke(app, ["federate", "status", str(run_dir), "--json"]).stdout)
    assert (status["state"], status["rounds_done"]) == ("interrupted", 1)
    secured.broker.start()  # same port: the devices and the resumed coordinator come back
    with honest_fleet(secured, 1, tmp_path):
        resumed = CliRunner().invoke(app, ["federate", "resume", str(run_dir), "--credentials",
                                           str(secured.server_file), "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    assert [x["round"] for x in json.loads(resumed.stdout)["rounds"]] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- 6
def test_devices_run_refuses_an_existing_account_without_rotate(secured: Secured, tmp_path: Path) -> None:
    """Attack 6: `devices run --id <enrolled device>` rotated its password and locked the device out."""
    from tests.support.broker import connect

    original = secured.device("dev-001")
    args = ["devices", "run", "--id", "dev-001", "--broker-dir", str(secured.directory), "--duration", "0",
            "--telemetry", "0", "--fleet", "elsewhere", "--state-dir", str(tmp_path / "state")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"error: 'dev-001' is already enrolled in {SecurityPaths(secured.directory).root}; pass --rotate to "
        "replace its password (the old one stops working)"]
    probe = connect(secured.broker.port or 0, client_id="dev-001", creds=original)
    probe.close()
    assert probe.connack == 0  # the real device still logs in
    rotated = CliRunner().invoke(app, [*args, "--rotate"])
    assert rotated.exit_code == 0, rotated.stderr
    probe = connect(secured.broker.port or 0, client_id="dev-001", creds=original)
    probe.close()
    assert probe.connack != 0


# ---------------------------------------------------------------------------------------------- 7
def test_hostile_replies_get_their_documented_reasons(secured: Secured, tmp_path: Path) -> None:
    """Attack 7: NaN counted as malformed, foreign header accepted, a 60,000-character code verbatim, loss 1e300."""
    def hostile(dev: HostileDevice, frame: protocol.Frame) -> bytes:
        rnd = frame.header.get("round")
        if frame.type == EVALUATE:
            return eval_reply(frame, dev.device_id, loss=1e300)
        theta = list(task_arrays(frame).items())
        if rnd == 1:
            return train_reply(frame, dev.device_id, [(k, np.full(v.shape, np.nan, np.float32)) for k, v in theta])
        if rnd == 2:
            return train_reply(frame, "hon-0000", theta)  # its own topic, another device's name
        return protocol.encode_result(frame.header, device=dev.device_id, error=("x" * 60_000, "y" * 60_000))

    with (honest_fleet(secured, 1, tmp_path),
          HostileDevice(secured.address, secured.device("mallory"), fleet=FLEET, device_id="mallory",
                        respond=hostile) as mallory):
        mallory.announce()
        r = federate(secured, tmp_path / "runs", "--strategy", "fedavg", "--rounds", "3", "--quorum", "2")
    assert r.exit_code == 0, r.stderr
    rounds = metrics(tmp_path / "runs")
    assert [sorted(m["reasons"]) for m in rounds] == [["non-finite"], ["non-finite", "wrong-device"],
                                                      ["device-error:other", "non-finite"]], rounds
    assert all(m["eval_loss"] < 1e3 and m["eval_replies"] == 1 for m in rounds), rounds
    assert len(r.stdout) < 20_000 and max(len(line) for line in
                                          (tmp_path / "runs" / "atk" / "metrics.jsonl").read_text().splitlines()) < 5000


@pytest.mark.parametrize("fraction", ["nan", "0", "inf", "-0.5"])
def test_bad_fractions_are_usage_errors(fraction: str, tmp_path: Path) -> None:
    """Attack 7: `--fraction nan` printed a 93-line traceback; `--fraction 0` ran empty rounds and exited 0."""
    r = CliRunner().invoke(app, ["federate", "run", "--task", "sine", "--simulate", "2", "--fraction", fraction,
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert "fraction" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 6
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- 8
def _refused(port: int, creds: Credentials, client_id: str, *, tls: bool) -> bool:
    """True when the broker does not let `creds` in (TLS alert, CONNACK refusal or a dropped connection)."""
    import ssl

    from tests.support.broker import connect

    try:
        probe = connect(port, client_id=client_id, creds=creds, tls=tls, wait=0)
    except (ssl.SSLError, OSError):
        return True
    try:
        assert probe.wait_for(lambda p: p.connack is not None or p.disconnects, timeout=15), "no answer at all"
        return probe.connack != 0
    finally:
        probe.client.loop_stop()


def test_with_tls_the_certificate_is_the_account_and_rotation_revokes_the_old_one(tmp_path: Path) -> None:
    """Attack 8: device A's certificate with B's user name and password logged in as B; a rotated certificate
    kept working."""
    import shutil

    from broker.exceptions import SecurityError
    from tests.support.broker import NOT_AUTHORIZED, connect

    d = tmp_path / "tls"
    broker = secured_broker(d, tls=True)
    info = broker.start()
    try:
        a, b = enroll_device(d, "dev-a", fleet=FLEET), enroll_device(d, "dev-b", fleet=FLEET)
        mixed = Credentials("dev-b", b.password, a.credentials.ca, a.credentials.cert, a.credentials.key)
        probe = connect(info.port, client_id="dev-b", creds=mixed, tls=True)
        try:
            assert probe.connack == 0
            assert probe.publish(f"tinyfleet/v1/{FLEET}/dev-b/telemetry") == NOT_AUTHORIZED  # not B
            assert probe.publish(f"tinyfleet/v1/{FLEET}/dev-a/telemetry") in (0, 16)  # it is A
        finally:
            probe.close()
        keep = tmp_path / "old-a"
        keep.mkdir()
        old = Credentials("dev-a", a.password, a.credentials.ca, Path(shutil.copy(a.credentials.cert, keep)),
                          Path(shutil.copy(a.credentials.key, keep)))
        rotated = enroll_device(d, "dev-a", fleet=FLEET, rotate=True)
        # the CRL lists the old serial (Mosquitto rereads it on the SIGHUP the rotation sent)
        assert wait_until(lambda: _refused(info.port, old, "dev-a", tls=True), timeout=30)
        assert not _refused(info.port, rotated.credentials, "dev-a", tls=True)
        with pytest.raises(SecurityError, match="not enrolled"):
            from broker.accounts import revoke_account
            revoke_account(d, "nobody")
    finally:
        broker.stop()


@pytest.mark.parametrize("tls", [False, True], ids=["password", "tls"])
def test_devices_revoke_disconnects_locks_out_and_marks_the_registry(tmp_path: Path, tls: bool) -> None:
    """Attack 8: there was no command to remove or revoke a device."""
    from registry import add_device, open_store
    from registry.exceptions import RegistryInputError
    from tests.support.broker import connect
    from tests.support.registry import td

    d = tmp_path / "mq"
    broker = secured_broker(d, tls=tls)
    info = broker.start()
    store_dir = tmp_path / "registry"
    with open_store(store_dir) as st:
        add_device(st, td("dev-b", 65536, 1 << 20, ["scalar-signal"]))
    try:
        b = enroll_device(d, "dev-b", fleet=FLEET)
        device = connect(info.port, client_id="dev-b", creds=b.credentials, tls=tls)
        assert device.connack == 0
        r = CliRunner().invoke(app, ["devices", "revoke", "dev-b", "--dir", str(d), "--store", str(store_dir),
                                     "--json"])
        assert r.exit_code == 0, r.stderr
        doc = json.loads(r.stdout)
        assert (doc["name"], doc["role"], doc["reloaded"], doc["retained_cleared"], doc["registry"]) == \
            ("dev-b", "device", True, True, "revoked")
        assert device.wait_for(lambda p: p.disconnects, timeout=15)  # the broker dropped the live session
        device.client.loop_stop()
        assert wait_until(lambda: _refused(info.port, b.credentials, "dev-b", tls=tls), timeout=30)
        p = SecurityPaths(d)
        assert "dev-b" not in json.loads(p.accounts.read_text())["accounts"]
        assert not any(line.startswith("dev-b:") for line in p.passwd.read_text().splitlines())
        assert "user dev-b" not in p.acl.read_text()
        if tls:
            from cryptography import x509
            crl = x509.load_pem_x509_crl(p.crl.read_bytes())
            assert crl.get_revoked_certificate_by_serial_number(int(doc["certificate_serial"], 16)) is not None
        else:
            assert doc["certificate_serial"] is None
        with open_store(store_dir) as st, pytest.raises(RegistryInputError, match="revoked"):
            add_device(st, td("dev-b", 65536, 1 << 20, ["scalar-signal"]))
        again = CliRunner().invoke(app, ["devices", "revoke", "dev-b", "--dir", str(d), "--store", str(store_dir)])
        assert again.exit_code == 1 and "not enrolled" in again.stderr
    finally:
        broker.stop()


# ---------------------------------------------------------------------------------------------- 7
KILLED_AFTER_ROUND_1 = """
import os, signal, sys
from pathlib import Path
from federation.coordinator import Coordinator, RunConfig
from federation.session import fleet_grid, initial_parameters
run_dir = Path(sys.argv[1])
cfg = RunConfig(run_id="crash", task="sine", strategy="reptile", rounds=3, quorum=2, simulate=2, round_timeout=30.0,
                quorum_timeout=30.0, samples_per_device=16, local_steps=5, seed=2)
def on_round(record):
    os.kill(os.getpid(), signal.SIGKILL)
with fleet_grid(cfg, run_dir) as grid:
    Coordinator(cfg, grid, run_dir, on_round=on_round).start(initial_parameters("sine", seed=2))
"""


def test_resume_after_sigkill_stops_the_private_broker_left_behind(tmp_path: Path) -> None:
    """Attack 7: a SIGKILLed `federate run --simulate` left its Mosquitto running and `resume` orphaned it."""
    import subprocess
    import sys

    from broker.process import _pid_alive, read_state

    run_dir = tmp_path / "crash"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_ROUND_1, str(run_dir)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = read_state(run_dir / "broker")
    assert left is not None and _pid_alive(left.pid)  # the private broker outlived its owner
    try:
        resumed = CliRunner().invoke(app, ["federate", "resume", str(run_dir), "--json"])
        assert resumed.exit_code == 0, resumed.stderr
        assert [r["round"] for r in json.loads(resumed.stdout)["rounds"]] == [1, 2, 3]
        assert wait_until(lambda: not _pid_alive(left.pid), timeout=10)  # stopped by resume, not orphaned
        assert read_state(run_dir / "broker") is None  # and resume's own broker is gone again too
        assert (run_dir / "final.npz").is_file()
    finally:
        if _pid_alive(left.pid):
            os.kill(left.pid, signal.SIGKILL)
