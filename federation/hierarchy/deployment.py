"""A hierarchical deployment on one machine: SuperLink, gateway SuperNodes, site brokers and device groups.

`LocalDeployment` is what ``tinyfleet federate run --gateways N`` and ``benchmarks.scale`` start:

* N **site brokers** (Mosquitto, secured like every broker tinyfleet manages), each with its own
  gateway server account; optionally bridged up to a **central broker** (`federation.hierarchy.bridge`);
* N **device groups**, each a ``tinyfleet devices simulate`` process on its site broker with its own
  device ids (``g0-0000``, ``g1-0000``, ...) and data;
* one ``flower-superlink`` and N ``flower-supernode`` processes, each SuperNode told its site by
  ``--node-config`` (`SiteConfig`); Flower's own ``flower-superexec`` runs the ServerApp and, per
  message, the gateway ClientApp.

A run is submitted with ``flwr run`` (the FAB in `FLOWER_APP_DIR`, copied into the run directory)
against a Flower configuration kept in ``<dir>/flwr-home`` (``FLWR_HOME``), so the user's own
``~/.flwr`` is never touched. Everything listens on 127.0.0.1 on free ports; every process is
awaited by what it logs and stopped by PID (`processes.ProcessSet`), also after a failure.
A real multi-host deployment differs only in where these processes run (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from broker.process import MosquittoBroker, free_port
from devices.link.address import BrokerAddress
from federation.exceptions import FederationError
from federation.hierarchy import FLOWER_APP_DIR
from federation.hierarchy.processes import ManagedProcess, ProcessSet, marked_pids
from federation.hierarchy.server import STATUS_FILE, read_status
from federation.hierarchy.settings import HierarchyConfig, SiteConfig
from federation.signals import sigterm_unwinds

CONNECTION = "tinyfleet"
"""Name of the SuperLink connection in the deployment's own Flower configuration."""

FLOWER_ENV = {
    "FLWR_DISABLE_UPDATE_CHECK": "1",  # no network calls to flower.ai from an offline machine
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",  # pick up a new ServerApp/ClientApp task within 0.1 s (default 1 s)
}


@dataclass(frozen=True)
class DeviceGroup:
    """How to simulate one site's devices (arguments of ``tinyfleet devices simulate``)."""

    task: str = "sine"
    samples_per_device: int = 64
    models_dir: Path | None = None
    intermittent: float = 0.0
    online_s: float = 60.0
    period_s: float = 180.0
    telemetry_s: float = 0.0
    workers: int = 2
    seed: int = 0


@dataclass
class Site:
    """One site of the deployment: its broker, gateway account and device group."""

    config: SiteConfig
    broker: MosquittoBroker
    broker_dir: Path
    id_prefix: str
    n_devices: int
    devices: ManagedProcess | None = None
    supernode: ManagedProcess | None = None
    node_id: int | None = None


@dataclass
class LocalDeployment:
    """Start (and always stop) a hierarchical deployment under `directory`.

    Parameters
    ----------
    directory : Path
        Everything lives here: ``sites/<name>/broker``, ``logs/``, ``flwr-home/``, ``flower-app/``.
    gateways : int
        Sites (one SuperNode, one broker and one device group each).
    devices : int
        Devices in total, split as evenly as possible over the sites.
    group : DeviceGroup
        What the simulated devices run.
    fleet : str, default="default"
    secure : bool, default=True
        Secure the site brokers (accounts, ACL); False only for debugging.
    central : BrokerAddress, optional
        Bridge every site broker's TDs, presence and telemetry up to this broker
        (`bridge.central_bridge`); needs `central_dir`, the central broker's directory.
    central_dir : Path, optional
    ready_timeout : float, default=180.0
        Seconds each process may take to become ready (the machine may be busy).
    """

    directory: Path
    gateways: int
    devices: int
    group: DeviceGroup = field(default_factory=DeviceGroup)
    fleet: str = "default"
    secure: bool = True
    central: BrokerAddress | None = None
    central_dir: Path | None = None
    ready_timeout: float = 180.0
    sites: list[Site] = field(default_factory=list, init=False)
    superlink: ManagedProcess | None = field(default=None, init=False)
    superlink_port: int = field(default=0, init=False)
    broker_pids: list[int] = field(default_factory=list, init=False)
    flwr_home: Path = field(init=False)
    procs: ProcessSet = field(init=False)
    _stack: contextlib.ExitStack = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        if self.gateways < 1:
            raise FederationError(f"--gateways must be at least 1; got {self.gateways}")
        if self.devices < self.gateways:
            raise FederationError(f"{self.devices} devices cannot fill {self.gateways} sites (at least one each)")
        self.flwr_home = self.directory / "flwr-home"
        bin_dir = str(Path(sys.executable).parent)
        env = {**FLOWER_ENV, "FLWR_HOME": str(self.flwr_home),
               "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}  # flower-superexec must be on PATH
        self.procs = ProcessSet(self.directory, str(self.directory), env=env)
        self._stack = contextlib.ExitStack()

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        self._stack.enter_context(sigterm_unwinds())
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Brokers, then device groups, then SuperLink and SuperNodes; each awaited by its log."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stack.callback(self._stop_brokers)  # runs last: devices say goodbye to a live broker
        self._stack.callback(self.procs.stop_all)
        sizes = [self.devices // self.gateways + (1 if i < self.devices % self.gateways else 0)
                 for i in range(self.gateways)]
        for i, n in enumerate(sizes):
            self.sites.append(self._start_site(i, n))
        for site in self.sites:
            site.devices = self.procs.start(f"devices-{site.config.name}", self._simulate_argv(site))
        self.superlink_port = free_port()
        self.superlink = self.procs.start("superlink", [
            _bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.superlink_port),
            "--disable-runtime-dependency-installation"])
        self._write_flower_config()
        for site in self.sites:
            site.supernode = self.procs.start(f"supernode-{site.config.name}", [
                _bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.superlink_port}",
                "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", site.config.node_config()])
        for site in self.sites:
            assert site.devices is not None
            line = self.procs.wait_for_log(site.devices, r"(\d+)/(\d+) devices online", timeout=self.ready_timeout)[0]
            connected, total = (int(x) for x in line.split()[0].split("/"))
            if connected < total:
                raise FederationError(f"site {site.config.name}: only {connected} of {total} simulated devices "
                                      f"connected; log {site.devices.log_path}")
        self.procs.wait_for_log(self.superlink, r"Uvicorn running on", timeout=self.ready_timeout)
        for site in self.sites:
            assert site.supernode is not None
            found = self.procs.wait_for_log(site.supernode, r"SuperNode ID: \d+", timeout=self.ready_timeout)
            site.node_id = int(found[0].rsplit(" ", 1)[1])

    def stop(self) -> None:
        """Stop every process by PID (also Flower's own children) and every broker; idempotent."""
        self._stack.close()

    def _stop_brokers(self) -> None:
        for site in self.sites:
            site.broker.stop()

    # -- sites -------------------------------------------------------------------------------------
    def _start_site(self, index: int, n_devices: int) -> Site:
        name = f"site{index}"
        broker_dir = self.directory / "sites" / name / "broker"
        broker_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(broker_dir, 0o700)  # its mosquitto.conf may hold the bridge's password
        if self.secure:
            from broker.secure import secured_broker

            broker = secured_broker(broker_dir)
        else:
            broker = MosquittoBroker(broker_dir)
        if self.central is not None:
            from federation.hierarchy.bridge import central_bridge

            if self.central_dir is None:
                raise FederationError("bridging to a central broker needs its directory (to enrol the bridge)")
            broker.extra_config += "\n" + central_bridge(self.central, self.central_dir, site=name, fleet=self.fleet)
        info = broker.start()
        self.broker_pids.append(info.pid)
        creds_path: str | None = None
        if self.secure:
            from broker.accounts import ensure_server_account
            from broker.files import SecurityPaths

            account = f"gateway-{name}"
            ensure_server_account(broker_dir, account)
            creds_path = str(SecurityPaths(broker_dir).credentials_dir / f"{account}.json")
        config = SiteConfig(name=name, index=index, broker=info.url, fleet=self.fleet, credentials=creds_path,
                            devices=expected_present(n_devices, self.group))
        return Site(config, broker, broker_dir, id_prefix=f"g{index}", n_devices=n_devices)

    def _simulate_argv(self, site: Site) -> list[str]:
        g = self.group
        argv = [sys.executable, "-m", "tinyfleet.cli.main", "devices", "simulate", "--n", str(site.n_devices),
                "--task", g.task, "--broker", site.config.broker, "--fleet", site.config.fleet,
                "--id-prefix", site.id_prefix, "--seed", str(g.seed + site.config.index),
                "--samples", str(g.samples_per_device), "--telemetry", str(g.telemetry_s),
                "--workers", str(g.workers), "--state-root", str(site.broker_dir.parent / "devices")]
        if self.secure:
            argv += ["--broker-dir", str(site.broker_dir)]
        else:
            argv += ["--insecure"]
        if g.models_dir is not None:
            argv += ["--models", str(g.models_dir)]
        if g.intermittent > 0:
            argv += ["--intermittent", str(g.intermittent), "--online", str(g.online_s), "--period", str(g.period_s)]
        return argv

    # -- runs --------------------------------------------------------------------------------------
    def _write_flower_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        doc = {"superlink": {"default": CONNECTION, CONNECTION: {"address": f"127.0.0.1:{self.superlink_port}",
                                                                  "insecure": True}}}
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(doc))

    def submit(self, settings: HierarchyConfig, run_dir: Path) -> int:
        """``flwr run`` the app with `settings`; return Flower's run id. ``run_dir/initial.npz`` must exist."""
        run_dir = Path(run_dir).resolve()
        app_dir = self.directory / "flower-app"
        if not app_dir.is_dir():
            shutil.copytree(FLOWER_APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
        overrides = run_dir / "flower-run-config.toml"
        overrides.write_text(tomli_w.dumps(settings.flower_run_config(run_dir)))
        (run_dir / STATUS_FILE).unlink(missing_ok=True)
        proc = subprocess.run([_bin("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(overrides),
                               "--format", "json"], capture_output=True, text=True, env=self.procs.env,
                              timeout=self.ready_timeout, check=False)
        try:
            doc = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            doc = {}
        if proc.returncode != 0 or not doc.get("success"):
            detail = (doc.get("error-message") or proc.stderr or proc.stdout).strip().splitlines()
            raise FederationError(f"flwr run failed (exit {proc.returncode}): {' '.join(detail[-3:])}")
        return int(doc["run-id"])

    def wait(self, run_dir: Path, *, timeout: float, on_line: Callable[[dict[str, Any]], None] | None = None
             ) -> dict[str, Any]:
        """Block until the ServerApp reports finished (return its status) or failed (`FederationError`).

        Also fails when any deployment process dies, or when no ServerApp process is left while
        the status still says running (a crash before it could write its status).
        """
        run_dir = Path(run_dir)
        deadline = time.monotonic() + timeout
        seen = 0
        gone_since: float | None = None
        while True:
            seen = self._follow(run_dir, seen, on_line)
            status = read_status(run_dir) or {}
            if status.get("state") == "finished":
                self._follow(run_dir, seen, on_line)
                return status
            if status.get("state") == "failed":
                raise FederationError(f"the hierarchical run failed: {status.get('error')}")
            self.procs.check_alive()
            serverapp = [p for p in marked_pids(self.procs.token) if b"flwr-serverapp" in _cmdline(p)]
            now = time.monotonic()
            if status.get("state") == "running" and not serverapp:
                gone_since = gone_since or now
                if now - gone_since > 10.0:
                    raise FederationError("the ServerApp process ended without reporting; see "
                                          f"{self.superlink.log_path if self.superlink else 'the SuperLink log'}")
            else:
                gone_since = None
            if now >= deadline:
                raise FederationError(f"the hierarchical run did not finish within {timeout:g} s; state "
                                      f"{status.get('state', 'pending')}")
            time.sleep(0.2)

    @staticmethod
    def _follow(run_dir: Path, seen: int, on_line: Callable[[dict[str, Any]], None] | None) -> int:
        from federation.coordinator import METRICS_FILE

        try:
            lines = (run_dir / METRICS_FILE).read_text().splitlines()
        except OSError:
            return seen
        for line in lines[seen:]:
            try:
                record = json.loads(line)
            except ValueError:
                return seen  # a line being written
            if on_line is not None:
                on_line(record)
            seen += 1
        return seen

    def describe(self) -> dict[str, Any]:
        """Where everything runs (for `--json` output and the benchmark)."""
        return {"superlink": f"127.0.0.1:{self.superlink_port}",
                "sites": [{"name": s.config.name, "broker": s.config.broker, "devices": s.n_devices,
                           "gateway_waits_for": s.config.devices,
                           "node_id": s.node_id, "id_prefix": s.id_prefix} for s in self.sites],
                "pids": {p.name: p.pid for p in self.procs.processes} | {
                    f"broker-{s.config.name}": pid for s, pid in zip(self.sites, self.broker_pids, strict=False)}}


def expected_present(n: int, group: DeviceGroup) -> int:
    """How many of a site's `n` devices its gateway waits for: all, or most of the awake ones when some sleep."""
    if group.intermittent <= 0:
        return n
    awake = n * (1 - group.intermittent * (1 - group.online_s / group.period_s))
    return max(1, int(0.8 * awake))


def _bin(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise FederationError(f"{name} is not installed (pip install 'flwr>=1.41,<1.42')")
        return found
    return str(path)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
