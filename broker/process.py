"""A private Mosquitto broker managed by tinyfleet (demo, tests, `tinyfleet broker`).

Mosquitto is started from a generated config in its own directory, bound to a loopback address
on a free port, and stopped by the PID it writes. When run as root it needs `user root` in the
config, otherwise it drops privileges and cannot write its PID file. `set_tcp_nodelay` makes a
federated round ~10x faster on loopback (see shared notes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from broker.exceptions import BrokerError

log = logging.getLogger(__name__)


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class BrokerInfo:
    """Where a managed broker listens; persisted as `broker.json` in its directory."""

    host: str
    port: int
    pid: int
    directory: str
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class MosquittoBroker:
    """Start, probe and stop one private Mosquitto whose files live under `directory`.

    Parameters
    ----------
    directory : Path
        Holds `mosquitto.conf`, `mosquitto.pid`, `mosquitto.log`, `broker.json` and `data/`.
    host : str, default="127.0.0.1"
        Listen address; only loopback addresses are accepted.
    port : int or None, default=None
        None picks a free port.
    extra_config : str, default=""
        Appended to the generated config right after the listener line, so listener options
        (TLS files) apply to it; `broker.secure` builds the hardened settings.
    tls : bool, default=False
        The listener serves mqtts (set by `SecureBrokerConfig`); only changes `BrokerInfo.url`.
    """

    STATE_FILE = "broker.json"

    def __init__(self, directory: str | Path, *, host: str = "127.0.0.1", port: int | None = None,
                 extra_config: str = "", persistence: bool = False, allow_anonymous: bool = True,
                 tls: bool = False) -> None:
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise BrokerError(f"refusing to bind the private broker to non-loopback address {host!r}")
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.extra_config = extra_config
        self.persistence = persistence
        self.allow_anonymous = allow_anonymous
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.directory / "mosquitto.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def write_config(self) -> Path:
        """Write `mosquitto.conf` for this broker and return its path."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "data").mkdir(exist_ok=True)
        except OSError as exc:  # e.g. --out below a regular file, or a read-only disk
            raise BrokerError(f"{self.directory}: cannot create the broker directory "
                              f"({exc.strerror or exc})") from None
        if self.port is None:
            self.port = free_port(self.host)
        lines = [
            f"pid_file {self.pid_file}",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory / 'data'}/",
            "set_tcp_nodelay true",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "max_queued_messages 10000",
            f"listener {self.port} {self.host}",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        if self.extra_config:
            lines.append(self.extra_config.strip())
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, *, timeout: float = 10.0) -> BrokerInfo:
        """Start Mosquitto and wait until it accepts TCP connections."""
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto is not installed (Debian/Ubuntu: apt-get install -y mosquitto)")
        self._stop_leftover(timeout)
        conf = self.write_config()
        self.pid_file.unlink(missing_ok=True)
        with open(self.directory / "mosquitto.stdout", "ab") as out:
            self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited with code {self.process.returncode}; "
                                  f"see {self.log_file}: {self._log_tail()}")
            if _port_open(self.host, int(self.port or 0)):
                info = BrokerInfo(self.host, int(self.port or 0), self.process.pid, str(self.directory), self.tls)
                (self.directory / self.STATE_FILE).write_text(json.dumps(asdict(info)))
                return info
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout:.0f} s")

    def _stop_leftover(self, timeout: float) -> None:
        """Stop a Mosquitto still running from this directory (its owner was SIGKILLed) before replacing it.

        Why: a killed `federate run --simulate` leaves its private broker running; starting a new one
        would overwrite the PID and state files and orphan the old process for good. Only a process
        whose command line names this directory's config is stopped (a recycled PID is left alone).
        """
        state = read_state(self.directory)
        pid = state.pid if state is not None else _read_pid(self.pid_file)
        if pid is None or not _pid_alive(pid):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if str(self.directory / "mosquitto.conf").encode() not in cmdline:
            return
        log.warning("stopping the Mosquitto (PID %d) left running in %s by a killed process", pid, self.directory)
        _terminate(pid, timeout)

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the broker by PID (SIGTERM, then SIGKILL) and forget its state file."""
        pid = self.process.pid if self.process else _read_pid(self.pid_file)
        if pid:
            _terminate(pid, timeout)
        if self.process:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
            self.process = None
        (self.directory / self.STATE_FILE).unlink(missing_ok=True)

    def restart(self) -> BrokerInfo:
        """Stop and start again on the same port (used by fault tests)."""
        self.stop()
        return self.start()

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text().strip().splitlines()[-1]
        except (OSError, IndexError):
            return "(no log)"

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_state(directory: str | Path) -> BrokerInfo | None:
    """The broker recorded in `directory`, or None when none runs there (stale files are ignored)."""
    path = Path(directory) / MosquittoBroker.STATE_FILE
    try:
        info = BrokerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _pid_alive(info.pid):
        return None
    return info


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def reload_broker(directory: str | Path) -> bool:
    """Send SIGHUP to the broker running from `directory` (it rereads password and ACL files).

    Returns False when no broker runs there (the files are read at the next start anyway).
    """
    info = read_state(directory)
    if info is None:
        return False
    try:
        os.kill(info.pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True
