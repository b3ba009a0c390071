"""Fleet benchmark (issue #5): simulated device agents against a bare echo fleet, same run, same broker build.

Run: ``python -m benchmarks.fleet [--sizes 100,1000] [--reps 5] [--no-cli]``. Writes
``docs/results/fleet.json``, ``fleet.md`` (the README table) and ``fleet.png``.

For every fleet size N and every fleet kind, a **fresh private Mosquitto** on 127.0.0.1 is started and
the fleet runs in a **child process** (``--child agent|echo``) so that its resident memory is its own;
this process is the server (one paho client, its own network thread), as in a real deployment.

* ``agent``: N `devices.simulator.FleetSimulator` agents (sine use case: own data, own 1-32-32-1 head,
  online learner), one `MqttHub` network thread plus 2 workers.
* ``echo``: the baseline: N bare paho clients on the same `MqttHub` that publish every task payload
  straight back to their result topic from the network thread (no decoding, no learning).

Measured per (N, kind), all on the same machine within the same run:

* connect: wall time from `MqttHub.start` until all N have their CONNACK (the hub paces CONNECTs at
  500/s so that the broker's listen backlog does not overflow), and per-device CONNECT->CONNACK p50/p95;
* memory: the child's VmRSS growth (``/proc/self/status``) from before the fleet was built until all
  N are connected, divided by N; also Mosquitto's VmRSS growth per connection;
* message rate: a burst of ``--burst`` small tasks per device (header-only ``task.evaluate``
  frames, ~150 B) published at QoS 0, then at QoS 1; replies/s = replies received / (last reply -
  first publish). Replies always travel at QoS 1 (what the agent does);
* train round trip: the server publishes one ``task.train`` (the current 1-32-32-1 weights,
  ``local-steps`` SGD steps) to every device and waits until all replied; per-device round trip
  (its publish -> its reply) p50/p95 pooled over ``--reps`` repetitions after one warm-up, and the
  broadcast makespan (first publish -> last reply) p50/p95 over the repetitions.

Finally ``tinyfleet devices simulate --n 1000 --task sine --duration 10 --json`` is run as a user
would (own private broker) and its summary, wall time and peak RSS are recorded.
Everything is bounded: each phase has a timeout, children exit when stdin closes or on a deadline,
and `--budget` bounds the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from broker.process import MosquittoBroker, find_mosquitto
from devices.learning.head import MLPHead
from devices.link.address import BrokerAddress
from devices.link.hub import Link, MqttHub
from devices.wire.protocol import MessageType, encode_task, frame_header
from devices.wire.topics import device_topic, fleet_filter, parse_topic

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docs" / "results"
FLEET = "bench"
KINDS = ("echo", "agent")
HEAD_SIZES = (1, 32, 32, 1)          # the simulator's sine head (devices.simulator.DEFAULT_HIDDEN)
TRAIN_CONFIG = {"local-steps": 10, "lr": 0.01}
SAMPLES_PER_DEVICE = 50
WORKERS = 2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def proc_status_bytes(key: str, pid: int | str = "self") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM) in bytes; why: RSS is what the OS really holds."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(f"/proc/{pid}/status has no {key}")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), as a plain float."""
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


# ============================================================================================ child side
class EchoDevice:
    """The baseline device: a bare paho client that returns every task payload at once, no decoding.

    It implements `devices.link.hub.Endpoint`, so the hub, the sockets and the QoS are exactly the
    agent's; what differs is only the work the device does per message.
    """

    def __init__(self, device_id: str, fleet: str) -> None:
        self.client_id = device_id
        self._task = device_topic(fleet, device_id, "task")
        self._result = device_topic(fleet, device_id, "result")

    def will(self) -> tuple[str, bytes] | None:
        return None

    def subscriptions(self) -> list[str]:
        return [self._task]

    def on_connected(self, link: Link) -> None:
        pass

    def on_message(self, link: Link, topic: str, payload: bytes) -> None:
        link.publish(self._result, payload, qos=1)

    def on_tick(self, link: Link, now: float) -> None:
        pass

    def goodbye(self) -> list[tuple[str, bytes, bool]]:
        return []


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def run_child(kind: str, n: int, port: int, max_seconds: float) -> int:
    """Build and connect one fleet, report, then idle until the parent says ``stop`` (or stdin closes)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s child: %(message)s")
    address = BrokerAddress("127.0.0.1", port)
    if kind == "agent":  # one-time costs (modules, use-case setup) are not per-device memory: pay them first
        from devices.simulator import FleetSimulator
        from firmware_models.usecases import get_use_case

        get_use_case("sine").devices("train", 1, samples_per_device=SAMPLES_PER_DEVICE, seed=0)
    rss0 = proc_status_bytes("VmRSS")
    t0 = time.perf_counter()
    sim = None
    with tempfile.TemporaryDirectory(prefix="tinyfleet-bench-") as tmp:
        if kind == "agent":
            sim = FleetSimulator(n=n, use_case="sine", address=address, state_root=Path(tmp), fleet=FLEET,
                                 id_prefix="dev", samples_per_device=SAMPLES_PER_DEVICE, telemetry_s=0.0,
                                 workers=WORKERS)
            hub = sim.hub
        else:
            hub = MqttHub(address, workers=WORKERS)
            for i in range(n):
                hub.add(EchoDevice(f"dev-{i:04d}", FLEET))
        build_s = time.perf_counter() - t0
        rss_built = proc_status_bytes("VmRSS")
        t1 = time.perf_counter()
        hub.start()
        connected = hub.wait_connected(max(10.0, n / 50))
        connect_s = time.perf_counter() - t1
        rss_connected = proc_status_bytes("VmRSS")
        per_link = [lk.connect_seconds for lk in hub.links.values() if lk.connect_seconds is not None]
        _emit({"event": "ready", "kind": kind, "n": n, "connected": connected, "build_s": build_s,
               "connect_s": connect_s, "connack_p50_s": percentile(per_link, 50),
               "connack_p95_s": percentile(per_link, 95), "rss_before": rss0, "rss_built": rss_built,
               "rss_connected": rss_connected, "threads": threading.active_count(),
               "tensorflow_imported": "tensorflow" in sys.modules})
        sel = selectors.DefaultSelector()
        sel.register(sys.stdin, selectors.EVENT_READ)
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            if sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                line = sys.stdin.readline()
                if not line or line.strip() == "stop":
                    break
        hwm = proc_status_bytes("VmHWM")
        hub.stop()
        done: dict[str, Any] = {"event": "done", "rss_peak": hwm}
        if sim is not None:
            done.update(tasks_done=sum(a.tasks_done for a in sim.agents),
                        errors_sent=sum(a.errors_sent for a in sim.agents))
        _emit(done)
    return 0


# ============================================================================================ server side
@dataclass
class Collector:
    """Arrival time of every reply, keyed by the id of the task it answers (``reply-to``, or the echoed ``id``)."""

    arrivals: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    train_seconds: float = 0.0
    bad: int = 0
    expected: set[str] = field(default_factory=set)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        try:
            parse_topic(msg.topic)
            header = frame_header(bytes(msg.payload))
            rid = header.get("reply-to") or header.get("id")
        except Exception:  # noqa: BLE001 - a malformed reply is counted, never raised on paho's thread
            with self.cond:
                self.bad += 1
            return
        with self.cond:
            if rid in self.expected and rid not in self.arrivals:
                self.arrivals[rid] = now
                metrics = header.get("metrics")
                secs = metrics.get("train-seconds") if isinstance(metrics, dict) else None
                if isinstance(secs, (int, float)):
                    self.train_seconds += float(secs)
                if header.get("ok") is False:
                    self.failed[rid] = str(header.get("error", {}).get("code"))
                if len(self.arrivals) >= len(self.expected):
                    self.cond.notify_all()

    def reset(self, ids: set[str]) -> None:
        with self.cond:
            self.arrivals, self.failed, self.expected = {}, {}, set(ids)
            self.train_seconds = 0.0

    def wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals) < len(self.expected):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


class Server:
    """The measuring server: one paho MQTT v5 client on its own network thread, subscribed to results."""

    def __init__(self, port: int) -> None:
        self.collector = Collector()
        self._connected = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-server", protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_message = self.collector.on_message
        self._subscribed = threading.Event()
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.client = c
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        if not (self._connected.wait(10) and self._subscribed.wait(10)):
            self.close()
            raise RuntimeError(f"bench server: no CONNACK/SUBACK from 127.0.0.1:{port} within 10 s")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(fleet_filter(FLEET, "result"), qos=1)
        self._connected.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def exchange(self, tasks: list[tuple[str, str, bytes]], *, qos: int, timeout: float) -> dict[str, Any]:
        """Publish ``(device, task id, frame)`` in order; wait for every reply; times per task id."""
        col = self.collector
        col.reset({tid for _, tid, _ in tasks})
        sent: dict[str, float] = {}
        for device, tid, frame in tasks:
            sent[tid] = time.perf_counter()
            self.client.publish(device_topic(FLEET, device, "task"), frame, qos=qos)
        complete = col.wait_all(timeout)
        with col.cond:
            arrivals, failed, train_s = dict(col.arrivals), dict(col.failed), col.train_seconds
        t_first = min(sent.values())
        rtts = [arrivals[t] - sent[t] for t in arrivals]
        return {"sent": len(tasks), "received": len(arrivals), "complete": complete, "failed": len(failed),
                "failure_codes": sorted(set(failed.values())), "rtts": rtts, "train_seconds": train_s,
                "span_s": (max(arrivals.values()) - t_first) if arrivals else float("nan")}


def burst(server: Server, devices: list[str], *, per_device: int, qos: int, timeout: float) -> dict[str, Any]:
    """`per_device` small evaluate tasks to every device (round-robin); replies per second."""
    tasks = []
    for _ in range(per_device):
        for d in devices:
            tid, frame = encode_task(MessageType.EVALUATE)
            tasks.append((d, tid, frame))
    r = server.exchange(tasks, qos=qos, timeout=timeout)
    return {"qos": qos, "sent": r["sent"], "received": r["received"], "failed": r["failed"],
            "task_bytes": len(tasks[0][2]), "seconds": r["span_s"],
            "replies_per_s": r["received"] / r["span_s"] if r["received"] else 0.0,
            "messages_per_s": (r["sent"] + r["received"]) / r["span_s"] if r["received"] else 0.0,
            "rtt_p50_s": percentile(r["rtts"], 50), "rtt_p95_s": percentile(r["rtts"], 95)}


def train_round_trips(server: Server, devices: list[str], *, reps: int, timeout: float) -> dict[str, Any]:
    """One warm-up plus `reps` broadcasts of a real train task; per-device RTTs pooled, makespans per rep."""
    weights = MLPHead.init(list(HEAD_SIZES), kind="regression", seed=0).get_weights()
    pooled: list[float] = []
    spans: list[float] = []
    warmup: dict[str, Any] = {}
    missing = failed = 0
    task_bytes = 0
    compute: list[float] = []
    for rep in range(reps + 1):
        tasks = []
        for d in devices:
            tid, frame = encode_task(MessageType.TRAIN, config={**TRAIN_CONFIG, "server-round": rep + 1},
                                     weights=weights, run="bench", server_round=rep + 1)
            tasks.append((d, tid, frame))
        task_bytes = len(tasks[0][2])
        r = server.exchange(tasks, qos=1, timeout=timeout)
        if rep == 0:
            warmup = {"span_s": r["span_s"], "received": r["received"]}
            continue
        pooled += r["rtts"]
        spans.append(r["span_s"])
        compute.append(r["train_seconds"])
        missing += r["sent"] - r["received"]
        failed += r["failed"]
        _log(f"    train rep {rep}: {r['received']}/{r['sent']} replies, makespan {r['span_s']:.3f} s")
    return {"reps": reps, "task_bytes": task_bytes, "config": dict(TRAIN_CONFIG), "missing": missing,
            "failed": failed, "warmup": warmup, "rtt_p50_s": percentile(pooled, 50),
            "rtt_p95_s": percentile(pooled, 95), "rtt_max_s": max(pooled) if pooled else float("nan"),
            "makespan_p50_s": percentile(spans, 50), "makespan_p95_s": percentile(spans, 95),
            "makespans_s": spans, "device_train_seconds_per_broadcast": percentile(compute, 50)}


class Child:
    """One fleet in a child process; its stdout carries one JSON line per event."""

    def __init__(self, kind: str, n: int, port: int, max_seconds: float) -> None:
        cmd = [sys.executable, "-m", "benchmarks.fleet", "--child", kind, "--n", str(n), "--port", str(port),
               "--max-seconds", str(max_seconds)]
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def read_event(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"fleet child {self.proc.pid} said nothing within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet child {self.proc.pid} exited with code {self.proc.wait(5)}")
        return json.loads(line)

    def stop(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        return self.read_event(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by its own pid: only the child this benchmark started
        self.proc.wait(10)


def measure(kind: str, n: int, *, reps: int, per_device: int, deadline: float) -> dict[str, Any]:
    """Everything for one (kind, N) on a fresh broker; raises TimeoutError when the budget runs out."""
    def left(cap: float) -> float:
        rest = deadline - time.monotonic()
        if rest <= 5:
            raise TimeoutError("benchmark budget exhausted")
        return min(cap, rest)

    with tempfile.TemporaryDirectory(prefix="tinyfleet-bench-mq-") as tmp, MosquittoBroker(Path(tmp)) as mq:
        port = int(mq.port or 0)
        broker_pid = mq.process.pid if mq.process else 0
        broker_rss0 = proc_status_bytes("VmRSS", broker_pid)
        child = Child(kind, n, port, max_seconds=left(1800))
        try:
            ready = child.read_event(left(60 + n * 0.1))
            if ready["connected"] != n:
                raise RuntimeError(f"only {ready['connected']}/{n} {kind} devices connected")
            broker_rss1 = proc_status_bytes("VmRSS", broker_pid)
            _log(f"  {kind} N={n}: connected in {ready['connect_s']:.2f} s")
            devices = [f"dev-{i:04d}" for i in range(n)]
            server = Server(port)
            try:
                bursts = [burst(server, devices, per_device=per_device, qos=q, timeout=left(30 + n * per_device * 0.01))
                          for q in (0, 1)]
                for b in bursts:
                    _log(f"    burst QoS{b['qos']}: {b['received']}/{b['sent']} replies, {b['replies_per_s']:.0f}/s")
                train = train_round_trips(server, devices, reps=reps, timeout=left(30 + n * 0.05))
            finally:
                server.close()
            done = child.stop(left(60))
        finally:
            child.kill()
    built, conn = ready["rss_built"] - ready["rss_before"], ready["rss_connected"] - ready["rss_before"]
    return {"kind": kind, "n": n, "connected": ready["connected"], "build_s": ready["build_s"],
            "connect_s": ready["connect_s"], "connack_p50_s": ready["connack_p50_s"],
            "connack_p95_s": ready["connack_p95_s"], "threads": ready["threads"],
            "tensorflow_imported": ready["tensorflow_imported"],
            "rss_before_bytes": ready["rss_before"], "rss_connected_bytes": ready["rss_connected"],
            "rss_peak_bytes": done["rss_peak"], "bytes_per_device_built": built / n,
            "bytes_per_device_connected": conn / n,
            "broker_bytes_per_connection": (broker_rss1 - broker_rss0) / n,
            "burst": bursts, "train": train,
            **({"tasks_done": done["tasks_done"], "errors_sent": done["errors_sent"]} if kind == "agent" else {})}


def run_cli_simulate(n: int, duration: float, timeout: float) -> dict[str, Any]:
    """`tinyfleet devices simulate` exactly as a user runs it; wall time and its own peak RSS (``wait4``).

    It runs with empty config/data dirs so that it starts its own private Mosquitto, as on a fresh machine.
    """
    exe = Path(sys.executable).with_name("tinyfleet")
    args = ["devices", "simulate", "--n", str(n), "--task", "sine", "--duration", f"{duration:g}", "--json"]
    result: dict[str, Any] = {"command": "tinyfleet " + " ".join(args)}
    with tempfile.TemporaryDirectory(prefix="tinyfleet-bench-cli-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYFLEET_")}
        env.update(XDG_DATA_HOME=tmp, XDG_CONFIG_HOME=tmp, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        t0 = time.perf_counter()
        with open(out_path, "w") as out, open(err_path, "w") as errf:
            proc = subprocess.Popen([str(exe), *args], cwd=tmp, env=env, stdout=out, stderr=errf)
        deadline = time.monotonic() + timeout
        status, usage = 0, None
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        else:
            proc.kill()  # only the process this benchmark started
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            result["error"] = f"did not finish within {timeout:.0f} s"
            return result
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out_text, err_text = out_path.read_text(), err_path.read_text()
    result.update(exit_code=proc.returncode, wall_s=wall, max_rss_bytes=usage.ru_maxrss * 1024 if usage else None,
                  stderr_tail=err_text.strip().splitlines()[-3:])
    try:
        result["summary"] = json.loads(out_text)
    except json.JSONDecodeError:
        result["error"] = f"stdout is not JSON: {out_text[:200]!r}"
    return result


# ============================================================================================ report
def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    mosq = find_mosquitto()
    version = ""
    if mosq:
        text = subprocess.run([mosq, "-h"], capture_output=True, text=True, timeout=10).stdout
        version = text.splitlines()[0] if text else ""
    mem = None
    with contextlib.suppress(OSError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem = next(int(ln.split()[1]) * 1024 for ln in meminfo if ln.startswith("MemTotal"))
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_bytes": mem, "kernel": platform.release(),
            "python": platform.python_version(), "paho_mqtt": mqtt.__version__ if hasattr(mqtt, "__version__")
            else _dist_version("paho-mqtt"), "numpy": np.__version__, "mosquitto": version,
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """agent / echo for every headline number, per N (the same-run baseline)."""
    out: dict[str, dict[str, float]] = {}
    for n in sorted({r["n"] for r in results}):
        by = {r["kind"]: r for r in results if r["n"] == n}
        if set(by) != set(KINDS):
            continue
        a, e = by["agent"], by["echo"]
        out[str(n)] = {
            "connect_s": a["connect_s"] / e["connect_s"],
            "bytes_per_device_connected": a["bytes_per_device_connected"] / e["bytes_per_device_connected"],
            "replies_per_s_qos0": a["burst"][0]["replies_per_s"] / e["burst"][0]["replies_per_s"],
            "replies_per_s_qos1": a["burst"][1]["replies_per_s"] / e["burst"][1]["replies_per_s"],
            "train_rtt_p50": a["train"]["rtt_p50_s"] / e["train"]["rtt_p50_s"],
            "train_rtt_p95": a["train"]["rtt_p95_s"] / e["train"]["rtt_p95_s"],
            "train_makespan_p50": a["train"]["makespan_p50_s"] / e["train"]["makespan_p50_s"],
        }
    return out


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    m, res = doc["machine"], doc["results"]
    lines = [
        "# Fleet benchmark",
        "",
        f"Machine: this {m['cpus']}-core box ({m['cpu_model']}, {m['memory_bytes'] / 2**30:.1f} GiB), "
        f"loopback {m['mosquitto']}, Python {m['python']}, paho-mqtt {m['paho_mqtt']}. Generated by "
        f"`python -m benchmarks.fleet` on {doc['date']} in {doc['wall_s']:.0f} s. Every fleet runs in its own "
        "process on a fresh Mosquitto; the server is the benchmark process. 1-min load average before/after: "
        f"{m['loadavg_1min_before_after'][0]:.1f}/{m['loadavg_1min_before_after'][1]:.1f} (other work shared "
        "the cores, which is why the baseline is measured in the same run).",
        "",
        "**agent** = `FleetSimulator` device agents (sine, own data, 1-32-32-1 head, 1 network thread + "
        f"{WORKERS} workers); **echo** = the same-run baseline: bare paho clients on the same `MqttHub` that "
        "return every task payload at once (no decoding, no learning).",
        "",
        "| N | fleet | connect s | CONNACK p95 ms | RSS/device kB | broker kB/conn | QoS0 replies/s | "
        "QoS1 replies/s | train RTT p50 ms | train RTT p95 ms | makespan p50 s | makespan p95 s | "
        "SGD s / broadcast |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res:
        t = r["train"]
        lines.append(
            f"| {r['n']:,} | {r['kind']} | {r['connect_s']:.2f} | {r['connack_p95_s'] * 1e3:.1f} | "
            f"{r['bytes_per_device_connected'] / 1024:.1f} | {r['broker_bytes_per_connection'] / 1024:.1f} | "
            f"{r['burst'][0]['replies_per_s']:,.0f} | {r['burst'][1]['replies_per_s']:,.0f} | "
            f"{t['rtt_p50_s'] * 1e3:.0f} | {t['rtt_p95_s'] * 1e3:.0f} | {t['makespan_p50_s']:.2f} | "
            f"{t['makespan_p95_s']:.2f} | {t['device_train_seconds_per_broadcast']:.2f} |")
    lines += ["", "Ratios agent / echo (same run):", "",
              "| N | connect | RSS/device | QoS0 replies/s | QoS1 replies/s | RTT p50 | RTT p95 | makespan p50 |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, q in doc["ratio_agent_over_echo"].items():
        lines.append(f"| {int(n):,} | {q['connect_s']:.2f} | {q['bytes_per_device_connected']:.1f} | "
                     f"{q['replies_per_s_qos0']:.2f} | {q['replies_per_s_qos1']:.2f} | {q['train_rtt_p50']:.1f} | "
                     f"{q['train_rtt_p95']:.1f} | {q['train_makespan_p50']:.1f} |")
    cfg = doc["config"]
    lines += [
        "",
        "What the numbers mean:",
        "",
        "- **connect s**: `MqttHub.start` until all N have their CONNACK. The hub paces CONNECTs at 500/s "
        "(1,000 simultaneous CONNECTs overflow the broker's listen backlog), so 1,000 devices need >= 2 s by "
        "design. **CONNACK p95**: one device's CONNECT -> CONNACK.",
        "- **RSS/device**: growth of the fleet process's VmRSS from before the fleet was built until all are "
        "connected, / N (agent: data, learner, head, paho client, socket buffers). **broker kB/conn**: "
        "Mosquitto's VmRSS growth / N (an agent also leaves its retained Thing Description and presence "
        "there).",
        f"- **replies/s**: {cfg['burst_per_device']} small `task.evaluate` frames "
        f"({res[0]['burst'][0]['task_bytes']} B) per device published back to back at QoS 0 (then QoS 1); "
        "replies (always QoS 1) / (last reply - first publish). The agent decodes, evaluates its head on its "
        "held-out samples and encodes a result; echo returns the payload.",
        f"- **train RTT**: one `task.train` ({res[0]['train']['task_bytes']} B: 1-32-32-1 weights, "
        f"local-steps {TRAIN_CONFIG['local-steps']}, lr {TRAIN_CONFIG['lr']}) published to all N at QoS 1; a "
        "device's round trip = its publish -> its result, pooled over "
        f"{cfg['reps']} broadcasts after one warm-up; **makespan** = first publish -> last reply of a broadcast "
        "(p50/p95 over the broadcasts). **SGD s / broadcast**: the devices' own `train-seconds` (wall time "
        "inside `learner.train`, so waits for the GIL count) summed over all N replies of one broadcast "
        f"(median): the learning work that {WORKERS} worker threads must fit into the makespan; the rest is "
        "decoding, encoding and MQTT.",
    ]
    cli = doc.get("cli_simulate")
    if cli:
        s = cli.get("summary", {})
        lines += ["", f"`{cli['command']}`: exit code {cli.get('exit_code')}, "
                  f"{s.get('connected', '?')}/{s.get('devices', '?')} devices connected in "
                  f"{s.get('connect_seconds', float('nan')):.2f} s, wall time {cli.get('wall_s', float('nan')):.1f} s "
                  f"(imports, data for every device, private broker, connect, 10 s idle, clean shutdown), "
                  f"peak RSS {cli.get('max_rss_bytes', 0) / 2**20:.0f} MiB."]
        if "error" in cli:
            lines.append(f"Error: {cli['error']}")
    path.write_text("\n".join(lines) + "\n")


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    sizes = sorted({r["n"] for r in res})
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.2
    colors = {"echo": ("#9ecae1", "#3182bd"), "agent": ("#fdae6b", "#e6550d")}
    x = np.arange(len(sizes))
    for j, kind in enumerate(KINDS):
        by = {r["n"]: r for r in res if r["kind"] == kind}
        p50 = [by[n]["train"]["rtt_p50_s"] * 1e3 if n in by else 0 for n in sizes]
        p95 = [by[n]["train"]["rtt_p95_s"] * 1e3 if n in by else 0 for n in sizes]
        axes[0].bar(x + (2 * j - 1.5) * width, p50, width, label=f"{kind} p50", color=colors[kind][0])
        axes[0].bar(x + (2 * j - 0.5) * width, p95, width, label=f"{kind} p95", color=colors[kind][1])
        for k, q in enumerate((0, 1)):
            rate = [by[n]["burst"][k]["replies_per_s"] if n in by else 0 for n in sizes]
            axes[1].bar(x + (2 * j + k - 1.5) * width, rate, width, label=f"{kind} QoS{q}", color=colors[kind][k])
        mem = [by[n]["bytes_per_device_connected"] / 1024 if n in by else 0 for n in sizes]
        axes[2].bar(x + (j - 0.5) * 2 * width, mem, 2 * width, label=kind, color=colors[kind][1])
    titles = ("train-task round trip (ms)", "small-task replies per second", "process RSS per device (kB)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks(x, [f"N={n:,}" for n in sizes])
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    fig.suptitle(f"tinyfleet fleet benchmark: agents vs bare echo, {doc['machine']['cpus']}-core box, "
                 "loopback Mosquitto", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000", help="comma-separated fleet sizes (default: 100,1000)")
    ap.add_argument("--reps", type=int, default=5, help="timed train broadcasts per fleet (default: 5)")
    ap.add_argument("--burst", type=int, default=5, help="small tasks per device in each burst (default: 5)")
    ap.add_argument("--budget", type=float, default=900.0, help="hard limit for the whole run in s (default: 900)")
    ap.add_argument("--no-cli", action="store_true", help="skip the `tinyfleet devices simulate` check")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: docs/results)")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child, args.n, args.port, args.max_seconds)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print(f"error: --sizes {args.sizes!r}: expected comma-separated integers like 100,1000", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 1 or args.reps < 1 or args.burst < 1:
        print("error: --sizes, --reps and --burst must be positive", file=sys.stderr)
        return 2
    if find_mosquitto() is None:
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    load_before = os.getloadavg()
    deadline = t0 + args.budget
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for n in sizes:
        for kind in KINDS:
            _log(f"fleet {kind} N={n}")
            try:
                results.append(measure(kind, n, reps=args.reps, per_device=args.burst, deadline=deadline))
            except (TimeoutError, RuntimeError, OSError) as exc:
                errors.append(f"{kind} N={n}: {exc}")
                _log(f"  error: {exc}")
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "config": {"sizes": sizes, "reps": args.reps, "burst_per_device": args.burst, "train": dict(TRAIN_CONFIG),
                   "samples_per_device": SAMPLES_PER_DEVICE, "workers": WORKERS, "head": list(HEAD_SIZES),
                   "hub_connect_rate_per_s": 500.0, "host": "127.0.0.1"},
        "results": results, "ratio_agent_over_echo": ratios(results), "errors": errors}
    if not args.no_cli and deadline - time.monotonic() > 60:
        _log("tinyfleet devices simulate --n 1000 --task sine --duration 10")
        doc["cli_simulate"] = run_cli_simulate(1000, 10.0, timeout=min(180.0, deadline - time.monotonic()))
        _log(f"  {doc['cli_simulate'].get('summary') or doc['cli_simulate'].get('error')}")
    doc["wall_s"] = time.monotonic() - t0
    doc["machine"]["loadavg_1min_before_after"] = [load_before[0], os.getloadavg()[0]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_text(json.dumps(doc, indent=2) + "\n")
    if results:
        write_markdown(doc, args.out / "fleet.md")
        plot(doc, args.out / "fleet.png")
    _log(f"wrote {args.out / 'fleet.json'} ({doc['wall_s']:.0f} s)")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors or not results else 0


if __name__ == "__main__":
    sys.exit(main())
