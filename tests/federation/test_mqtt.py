"""Federation over a real Mosquitto against real device agents (devices.simulator), small and fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from click.testing import Result
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg

from broker.process import BrokerInfo
from devices.link.address import parse_broker_url
from devices.link.fleet_client import snapshot
from devices.wire import protocol
from devices.wire.topics import device_topic
from federation.coordinator import Coordinator, RunConfig
from federation.flower_compat import init_task_identity
from federation.session import fleet_grid, initial_parameters

ROOT = Path(__file__).resolve().parents[2]
Cli = Callable[..., Result]


def config(broker: BrokerInfo, fleet: str, strategy: str, *, rounds: int = 2, n: int = 4, **kw: object) -> RunConfig:
    return RunConfig(run_id=f"{fleet}-run", task="sine", strategy=strategy, rounds=rounds, quorum=n, simulate=n,
                     broker=broker.url, fleet=fleet, round_timeout=10.0, quorum_timeout=20.0,
                     samples_per_device=32, **kw)  # type: ignore[arg-type]


def test_stock_fedavg_runs_unmodified_over_mqtt_against_real_agents(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    cfg = config(mosquitto, "fl-stock", "fedavg")
    init = initial_parameters("sine")
    with fleet_grid(cfg, tmp_path) as grid:
        init_task_identity(1)
        result = FedAvg(min_available_nodes=4, min_train_nodes=4, min_evaluate_nodes=4).start(
            grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in init.items()}), num_rounds=2, timeout=10)
        ledger = [grid.ledger.round_summary(r)["phases"] for r in (1, 2)]
    assert [p["train"]["replies"] for p in ledger] == [4, 4]
    assert [p["evaluate"]["replies"] for p in ledger] == [4, 4]
    assert all(p["train"]["failures"] == 0 for p in ledger)
    final = {k: v.numpy() for k, v in result.arrays.items()}
    assert set(final) == set(init)
    assert all(np.all(np.isfinite(v)) for v in final.values())
    assert any(not np.array_equal(final[k], init[k]) for k in init)
    assert set(result.evaluate_metrics_clientapp) == {1, 2}


def run_strategy(broker: BrokerInfo, tmp_path: Path, strategy: str, **params: object) -> dict:
    cfg = config(broker, f"fl-{strategy}", strategy, strategy_params=dict(params))
    with fleet_grid(cfg, tmp_path / strategy) as grid:
        return Coordinator(cfg, grid, tmp_path / strategy).start(initial_parameters("sine"))


def test_reptile_and_tinymetafed_over_mqtt(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    reptile = run_strategy(mosquitto, tmp_path, "reptile", epsilon=0.5)
    tmf = run_strategy(mosquitto, tmp_path, "tinymetafed", epsilon=0.5, top_p=0.1)
    for res in (reptile, tmf):
        assert [r["replies"] for r in res["rounds"]] == [4, 4]
        assert all(r["failures"] == 0 and r["missing"] == 0 for r in res["rounds"])
        assert all(np.isfinite(r["loss"]) for r in res["rounds"])
    # Top-P 10% of the shared layers' update travels up: far fewer bytes than Reptile's dense heads
    up_r = sum(r["bytes_up_train"] for r in reptile["rounds"])
    up_t = sum(r["bytes_up_train"] for r in tmf["rounds"])
    assert up_t < 0.4 * up_r, (up_t, up_r)
    # the device-local last layer never changes on the server
    init = initial_parameters("sine")
    np.testing.assert_array_equal(tmf["final"]["w2"], init["w2"])
    assert not np.array_equal(tmf["final"]["w0"], init["w0"])


class RogueDevice:
    """A paho client that claims to be a device and answers every task with NaN weights."""

    def __init__(self, broker: BrokerInfo, fleet: str, device_id: str) -> None:
        self.fleet, self.device_id = fleet, device_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.ready = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: (
            c.subscribe(device_topic(fleet, device_id, "task"), qos=1),
            c.publish(device_topic(fleet, device_id, "presence"),
                      protocol.presence_payload(device_id, online=True, fleet=fleet), qos=1, retain=True),
            self.ready.set())
        self.client.on_message = self.on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        frame = protocol.decode_frame(msg.payload)
        tensors = [(n, np.full_like(t, np.nan)) for n, t in frame.tensors]
        reply = protocol.encode_frame({"v": 1, "type": "result", "id": protocol.new_id(), "reply-to": frame.id,
                                       "device": self.device_id, "ok": True, "run": frame.header.get("run"),
                                       "round": frame.header.get("round"), "metrics": {"num-examples": 5}}, tensors)
        client.publish(device_topic(self.fleet, self.device_id, "result"), reply, qos=1)

    def close(self) -> None:
        presence = device_topic(self.fleet, self.device_id, "presence")
        self.client.publish(presence, b"", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()


def test_malformed_reply_over_mqtt_is_a_failure_not_a_crash(mosquitto: BrokerInfo, tmp_path: Path) -> None:
    rogue = RogueDevice(mosquitto, "fl-rogue", "rogue-1")
    try:
        assert rogue.ready.wait(5)
        cfg = config(mosquitto, "fl-rogue", "reptile", n=3, allow_undescribed=True)  # the rogue has no TD
        cfg.quorum = 4
        with fleet_grid(cfg, tmp_path) as grid:
            res = Coordinator(cfg, grid, tmp_path).start(initial_parameters("sine"))
    finally:
        rogue.close()
    for r in res["rounds"]:
        assert (r["replies"], r["failures"]) == (3, 1)
        assert r["reasons"].get("non-finite", 0) >= 1  # NaN weights: the documented reason
    assert all(np.all(np.isfinite(v)) for v in res["final"].values())


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from federation.coordinator import Coordinator, RunConfig
    from federation.session import fleet_grid, initial_parameters
    broker, fleet, run_dir, kill_after = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    cfg = RunConfig(run_id="resume-run", task="sine", strategy="reptile", rounds=4, quorum=4, simulate=4,
                    broker=broker, fleet=fleet, round_timeout=10.0, quorum_timeout=20.0, samples_per_device=32,
                    seed=3, strategy_params={"epsilon": 0.7, "fraction_train": 0.5})
    def on_round(record):
        if record["round"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    with fleet_grid(cfg, run_dir) as grid:
        res = Coordinator(cfg, grid, run_dir, on_round=on_round).start(initial_parameters("sine", seed=3))
    print(res["final_sha256"])
""")


def test_resume_after_sigkill_ends_with_the_same_parameters(cli: Cli, mosquitto: BrokerInfo, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Reference: the same run without interruption (subprocesses: the second one is killed with SIGKILL).
    ref = subprocess.run([sys.executable, "-c", KILLER, mosquitto.url, "fl-ref", str(tmp_path / "ref"), "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert ref.returncode == 0, ref.stderr[-2000:]
    expected = ref.stdout.strip().splitlines()[-1]
    # Killed right after round 2 was checkpointed.
    killed = subprocess.run([sys.executable, "-c", KILLER, mosquitto.url, "fl-kill", str(tmp_path / "kill"), "2"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    status_run = cli("federate", "status", str(tmp_path / "kill"), "--json")
    assert status_run.exit_code == 0, status_run.stderr
    status = json.loads(status_run.stdout)
    assert (status["rounds_done"], status["state"]) == (2, "interrupted")
    # wait until the broker has published the killed devices' Last Will (all four retained presences offline)
    gone = snapshot(parse_broker_url(mosquitto.url), fleet="fl-kill", seconds=30,
                    until=lambda c: len(c.presence) == 4 and not c.online())
    assert len(gone.presence) == 4 and not gone.online(), gone.presence
    resumed = cli("federate", "resume", str(tmp_path / "kill"), "--json")
    assert resumed.exit_code == 0, resumed.stderr[-2000:]
    out = json.loads(resumed.stdout)
    assert [r["round"] for r in out["rounds"]] == [1, 2, 3, 4]
    assert out["final_sha256"] == expected
    lines = (tmp_path / "kill" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2, 3, 4]


def test_cli_run_simulate_json_is_self_contained(cli: Cli, tmp_path: Path) -> None:
    proc = cli("federate", "run", "--task", "sine", "--strategy", "tinymetafed", "--rounds", "2", "--simulate", "4",
               "--out", str(tmp_path), "--run-id", "cli", "--json")
    assert proc.exit_code == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert len(out["rounds"]) == 2 and len(out["final_sha256"]) == 64
    assert all({"loss", "replies", "failures", "bytes_up", "bytes_down", "seconds"} <= set(r) for r in out["rounds"])
    assert (tmp_path / "cli" / "checkpoint.npz").is_file()
    assert len((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "cli" / "broker" / "broker.json").exists()  # the private broker was stopped


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--task", "sine", "--strategy", "tinymetafed", "--top-p", "1.5", "--simulate", "2"],
     "The 'top_p' parameter of TinyMetaFed must be a float in the range (0, 1]. Got 1.5 instead."),
    (["run", "--task", "sine", "--broker", "http://x"], "must look like mqtt://host:port"),
    (["run", "--task", "nope", "--simulate", "2"], "unknown use case 'nope'"),
    (["run", "--task", "sine"], "no devices to federate with"),
    (["status", "/nonexistent/run"], "not a federated run directory"),
    (["resume", "/nonexistent/run"], "not a federated run directory"),
])
def test_cli_bad_input_is_one_line_without_traceback(cli: Cli, tmp_path: Path, args: list[str], needle: str) -> None:
    proc = cli("federate", *args, "--out", str(tmp_path)) if args[0] == "run" else cli("federate", *args)
    assert proc.exit_code != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
