"""Processes of a local deployment: started with a log file and a marker, awaited by what they log, stopped by PID.

A hierarchical run on one machine is a dozen processes (a SuperLink, N SuperNodes, N site
brokers, N device groups) and Flower starts more of its own (``flower-superexec`` under each
SuperLink/SuperNode, one ``flwr-serverapp`` per run, one ``flwr-clientapp`` per message). All of
them must be gone when the command ends, also after a failure or Ctrl-C, and nothing else may be
touched. So every process we start gets a unique marker in its environment
(``TINYFLEET_DEPLOYMENT=<token>``), which its children inherit; stopping sends SIGTERM to each
process we started (newest first), waits for it, and then finds any marked process still alive
(a grandchild re-parented to init, say) by reading ``/proc/<pid>/environ`` and kills it by PID.
Nothing is ever stopped by name.

Readiness is read from the log, never waited for with a fixed sleep: e.g. a SuperNode is ready
when it logs its node id.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from federation.exceptions import FederationError

MARKER_ENV = "TINYFLEET_DEPLOYMENT"
"""Environment variable that tags every process of one deployment (children inherit it)."""


@dataclass
class ManagedProcess:
    """One started process: its name, command, log file and `Popen` handle."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    _log_offset: int = field(default=0, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 8) -> str:
        return " | ".join(line.strip() for line in self.log_text().strip().splitlines()[-lines:]) or "(empty log)"


class ProcessSet:
    """Start, await and stop the processes of one deployment.

    Parameters
    ----------
    directory : Path
        Log files go to ``directory/logs/<name>.log``.
    token : str
        The marker value; unique per deployment (the run directory's path is a good one).
    env : mapping, optional
        Extra environment for every process (on top of this process's environment).
    """

    def __init__(self, directory: Path, token: str, *, env: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.token = token
        self.env = {**os.environ, **(env or {}), MARKER_ENV: token}
        self.processes: list[ManagedProcess] = []
        self.stopped_pids: list[int] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> ManagedProcess:
        """Start `argv` in a new session with stdout+stderr to its log file."""
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        try:
            with open(log_path, "ab") as out:
                popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**self.env, **(env or {})}, start_new_session=True)
        except OSError as exc:
            raise FederationError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
        proc = ManagedProcess(name, list(argv), log_path, popen)
        self.processes.append(proc)
        return proc

    def wait_for_log(self, proc: ManagedProcess, pattern: str, *, timeout: float, count: int = 1) -> list[str]:
        """Block until `proc`'s log has `count` lines matching regex `pattern`; return the matches.

        Raises `FederationError` with the log's tail when the process exits first or time runs out.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [m.group(0) for m in rx.finditer(proc.log_text())]
            if len(found) >= count:
                return found
            if not proc.alive():
                raise FederationError(f"{proc.name} exited with code {proc.popen.returncode} before it was ready; "
                                      f"log {proc.log_path}: {proc.log_tail()}")
            if time.monotonic() >= deadline:
                raise FederationError(f"{proc.name} was not ready within {timeout:g} s (waiting for "
                                      f"{pattern!r} x{count}); log {proc.log_path}: {proc.log_tail()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise `FederationError` naming the first process that has died."""
        for proc in self.processes:
            if not proc.alive():
                raise FederationError(f"{proc.name} exited with code {proc.popen.returncode}; "
                                      f"log {proc.log_path}: {proc.log_tail()}")

    def stop_all(self, *, timeout: float = 10.0) -> list[int]:
        """Stop every process (newest first: SIGTERM, then SIGKILL), then every marked leftover; return PIDs.

        Why newest first: device groups say goodbye to their broker before it goes away, and
        SuperNodes leave before the SuperLink.
        """
        for proc in reversed(self.processes):
            _terminate(proc.popen, timeout)
            self.stopped_pids.append(proc.pid)
        for pid in marked_pids(self.token):  # Flower's own children (superexec, serverapp, clientapp)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.stopped_pids.append(pid)
        # wait for the marker to vanish AND for every killed process to have exited: a dying process
        # loses its environment (so it no longer looks marked) before it becomes a zombie
        deadline = time.monotonic() + timeout
        while (marked_pids(self.token) or not all(map(exited, self.stopped_pids))) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.stopped_pids


def _terminate(popen: subprocess.Popen[bytes], timeout: float) -> None:
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)


def exited(pid: int) -> bool:
    """True when `pid` is gone or a zombie (it has exited; only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] in "ZX"
    except (OSError, IndexError):
        return True


def marked_pids(token: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment carries ``TINYFLEET_DEPLOYMENT=<token>``."""
    needle = b"\0" + f"{MARKER_ENV}={token}".encode() + b"\0"
    out = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = b"\0" + Path(f"/proc/{pid}/environ").read_bytes() + b"\0"
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if needle in environ and state != "Z":
            out.append(pid)
    return out


def _pids() -> Iterator[int]:
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                yield int(entry.name)
