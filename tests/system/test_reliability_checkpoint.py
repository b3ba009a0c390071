"""Crash-safe run state: an unwritable run directory or a full disk is one clear error, never a torn checkpoint.

The devices are the deterministic in-process `QuadraticDevice`s over the in-memory transport (the
real codec and Grid; no broker is needed to make the disk fail). Two faults:

* unwritable directory — real: ``chattr +i`` (immutable) on the run directory when running as root
  on a filesystem that supports it (chmod does not stop root), else ``chmod 0555``; and a run
  directory below a regular file (ENOTDIR) for the CLI;
* disk full — `FakeDiskFull`, a *fake*: the real part cannot run out of space on demand, so the
  checkpoint's file object writes half of the bytes and then raises ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result

from federation import checkpoint
from federation.checkpoint import load_checkpoint, save_checkpoint
from federation.coordinator import CHECKPOINT_FILE, METRICS_FILE, Coordinator, RunConfig
from federation.exceptions import CheckpointError
from federation.flower_compat import init_task_identity
from federation.grid import FleetGrid
from federation.inprocess_transport import InProcessTransport
from federation.wire import ProtocolCodec
from tests.support.federation import QuadraticDevice, initial_head

DEVICES = ["dev-0", "dev-1", "dev-2", "dev-3"]


def make_config(rounds: int = 3) -> RunConfig:
    return RunConfig(run_id="ckpt-run", task="sine", strategy="reptile", rounds=rounds, quorum=4, seed=7,
                     local_steps=2, lr=0.1, round_timeout=5.0, quorum_timeout=5.0,
                     strategy_params={"epsilon": 0.9, "fraction_train": 0.5})


def new_grid() -> FleetGrid:
    init_task_identity(1)
    transport = InProcessTransport({d: QuadraticDevice(d) for d in DEVICES})
    return FleetGrid(transport, ProtocolCodec({"local-steps": 2, "lr": 0.1}), run_id="ckpt-run")


def coordinator(run_dir: Path, **kw: Any) -> Coordinator:
    return Coordinator(make_config(), new_grid(), run_dir, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Final digest of an uninterrupted run."""
    c = coordinator(tmp_path_factory.mktemp("ref"))
    try:
        return str(c.start(initial_head())["final_sha256"])
    finally:
        c.grid.transport.close()


def _lock(directory: Path) -> str:
    """Make `directory` refuse new entries for real; return how."""
    root_with_chattr = os.geteuid() == 0 and shutil.which("chattr")
    if root_with_chattr and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0:
        return "chattr"
    directory.chmod(0o555)
    return "chmod"


def _unlock(directory: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o755)


@pytest.fixture()
def locker() -> Iterator[list[tuple[Path, str]]]:
    locked: list[tuple[Path, str]] = []
    yield locked
    for d, how in locked:  # never leave an immutable directory behind, even when the test fails
        _unlock(d, how)


def test_unwritable_run_dir_is_one_clear_error_and_resume_matches(tmp_path: Path, reference: str,
                                                                   locker: list[tuple[Path, str]]) -> None:
    run_dir = tmp_path / "run"

    def lock_after_round_1(record: dict[str, Any]) -> None:
        if record["round"] == 1:
            locker.append((run_dir, _lock(run_dir)))
            try:
                (run_dir / "probe").touch()
            except OSError:
                return
            pytest.skip("cannot make a directory unwritable here")

    c = coordinator(run_dir, on_round=lock_after_round_1)
    with pytest.raises(CheckpointError) as info:
        c.start(initial_head())
    c.grid.transport.close()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{run_dir / CHECKPOINT_FILE}: cannot write checkpoint (")
    assert "the previous checkpoint, if any, is intact" in msg
    _, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert meta["round"] == 1
    assert not list(run_dir.glob(".checkpoint.npz.*"))  # no temporary file left behind
    # writable again: resume continues from round 1 and ends where an uninterrupted run ends
    d, how = locker.pop()
    _unlock(d, how)
    c2 = Coordinator(RunConfig.load(run_dir), new_grid(), run_dir)
    try:
        out = c2.resume()
    finally:
        c2.grid.transport.close()
    assert [r["round"] for r in out["rounds"]] == [1, 2, 3]
    assert out["final_sha256"] == reference


class FakeDiskFull:
    """FAKE for a full disk: a file object that writes half of what it is given, then raises ENOSPC."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.written = 0

    def write(self, data: bytes) -> int:
        half = len(data) // 2
        self.real.write(data[:half])
        self.real.flush()
        self.written += half
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> FakeDiskFull:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path: Path, reference: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    fakes: list[FakeDiskFull] = []
    real_fdopen = os.fdopen

    def full_from_round_2(record: dict[str, Any]) -> None:
        if record["round"] == 1:
            def fdopen(fd: int, *a: Any, **k: Any) -> FakeDiskFull:
                fakes.append(FakeDiskFull(real_fdopen(fd, *a, **k)))
                return fakes[-1]

            monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)

    before = None
    c = coordinator(run_dir, on_round=full_from_round_2)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint \(No space left on device\)"):
        c.start(initial_head())
    c.grid.transport.close()
    assert fakes and fakes[0].written > 0  # a partial temporary file really was written, then removed
    assert not list(run_dir.glob(".checkpoint.npz.*"))
    arrays, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert meta["round"] == 1 and all(np.all(np.isfinite(a)) for a in arrays.values())
    before = (run_dir / CHECKPOINT_FILE).read_bytes()
    monkeypatch.undo()
    # the metrics line of the failed round is dropped on resume; the run then matches the reference
    assert len((run_dir / METRICS_FILE).read_text().splitlines()) == 2
    c2 = Coordinator(RunConfig.load(run_dir), new_grid(), run_dir)
    try:
        out = c2.resume()
    finally:
        c2.grid.transport.close()
    assert before is not None and out["final_sha256"] == reference
    assert [r["round"] for r in out["rounds"]] == [1, 2, 3]


def test_save_checkpoint_below_a_file_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match=r"not-a-dir/checkpoint.npz: cannot write checkpoint \(Not a directory\)"):
        save_checkpoint(blocker / CHECKPOINT_FILE, arrays=initial_head(), state={"round": 1})


def test_cli_run_with_out_below_a_file_is_one_line(cli: Callable[..., Result], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = cli("federate", "run", "--task", "sine", "--simulate", "2", "--rounds", "1", "--out", str(blocker / "runs"),
               "--json")
    assert proc.exit_code == 1, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Not a directory" in lines[0]
