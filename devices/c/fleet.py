"""Run C devices (``tf-agent`` processes) next to Python ones: their folders, start and stop.

Each C device gets the same kind of local data a simulated Python device gets (one task of the use
case, ``uc.devices("train", ...)``), its own folder (config, head, data, TD) and its own process.
Credentials are never written into that folder: the caller enrols the device on the broker (the
`broker` package does that) and passes the path of a 0600 credentials file, which the config names.
A use case with a backbone gives the C device its backbone's features (the int8 backbone runs in
TFLite here; on a microcontroller TFLite Micro computes them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.boards import get_board
from devices.c.build import build_agent
from devices.c.files import HeadLayout, write_agent_files
from devices.exceptions import CBuildError
from devices.learning.fit import sample_nbytes
from devices.link.address import parse_broker_url
from devices.simulator import LearnerFactory
from devices.wire.thing_description import thing_description
from devices.wire.topics import check_name
from firmware_models.memory_budget import FLOAT_BYTES, account
from firmware_models.usecases import get_use_case


def c_device_ids(n: int, prefix: str = "c") -> list[str]:
    """``c-0000``, ``c-0001``, ..."""
    return [check_name(f"{prefix}-{i:04d}") for i in range(n)]


@dataclass
class CDevice:
    """One C device: its id, folder and (once started) process."""

    device_id: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0, *, signalled: bool = False) -> int | None:
        """SIGTERM (clean: presence offline "shutdown", then DISCONNECT); SIGKILL after `timeout`.

        `signalled`: the caller already sent SIGTERM (`stop_c_devices`); only wait, then kill.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            if not signalled:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def prepare_c_devices(n: int, *, use_case: str, broker_url: str, fleet: str, root: Path,
                      credentials: Mapping[str, Path] | None = None, models_dir: Path | None = None,
                      samples_per_device: int = 64, seed: int = 0, board: str = "rpi4", telemetry_s: float = 0.0,
                      ids: Sequence[str] | None = None) -> tuple[list[CDevice], HeadLayout]:
    """Write the folders of `n` C devices; returns them (not started) and the head layout they run.

    Parameters
    ----------
    credentials : mapping of device id -> credentials file, optional
        Each device's enrolment (username, password, ...); None for an open broker.
    seed : int
        Selects the devices' tasks: device i gets task i of ``uc.devices("train", n, seed=seed)``.
    """
    uc = get_use_case(use_case)
    prof = get_board(board)
    address = parse_broker_url(broker_url)
    device_ids = list(ids) if ids is not None else c_device_ids(n)
    datas = uc.devices("train", n, samples_per_device=samples_per_device, seed=seed)
    factory = LearnerFactory(uc, models_dir, seed=seed)
    out: list[CDevice] = []
    layout: HeadLayout | None = None
    for i, (device_id, data) in enumerate(zip(device_ids, datas, strict=True)):
        learner = factory(i, data)
        feats = learner.features(data.x)
        head = learner.head
        layout = HeadLayout.of(head)
        mem = account(layer_sizes=head.layer_sizes, gradient_floats=head.error_floats(), arena=0,
                      backbone_bytes=0, sample_bytes=sample_nbytes((head.layer_sizes[0],), FLOAT_BYTES)).ram
        cred = credentials.get(device_id) if credentials else None
        td = thing_description(device_id=device_id, fleet=fleet, board=prof, use_case=uc.name, host=address.host,
                               port=address.port, tls=address.tls,
                               sensors=tuple(uc.sensors), authenticated=cred is not None)
        d = Path(root) / device_id
        config = write_agent_files(d, device_id=device_id, fleet=fleet, broker_url=broker_url,
                                   weights=head.get_weights(), kind=head.kind, x=feats, y=data.y, td=td,
                                   credentials=cred, board=prof.name, ram_bytes=prof.ram_bytes,
                                   flash_bytes=prof.flash_bytes, memory_bytes=mem, telemetry_s=telemetry_s,
                                   seed=seed + i, lr=learner.lr, clip_norm=learner.clip_norm or 0.0,
                                   sensors=tuple(uc.sensors))
        out.append(CDevice(device_id, config, d / "agent.log"))
    if layout is None:
        raise CBuildError("no C devices to prepare (n must be >= 1)")
    return out, layout


def start_c_devices(devices: Sequence[CDevice], layout: HeadLayout, *, samples: int,
                    build_dir: Path | None = None, verbose: bool = False) -> Path:
    """Build ``tf-agent`` for `layout` (cached) and start one process per device; returns the program."""
    exe = build_agent(layout, max(1, samples), out_dir=build_dir)
    for dev in devices:
        log = open(dev.log, "wb")  # noqa: SIM115 - the child owns it; closed when this process exits
        args = [str(exe), str(dev.config)] + (["--verbose"] if verbose else [])
        dev.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "LC_ALL": "C"})
        log.close()
    return exe


def wait_started(devices: Sequence[CDevice], *, seconds: float = 0.5) -> None:
    """Fail early if a device exited at once (bad config, refused credentials: exit 2 or 3)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dead = [d for d in devices if d.process is not None and d.process.poll() is not None]
        if dead:
            d = dead[0]
            raise CBuildError(f"C device {d.device_id} exited with {d.process.returncode if d.process else '?'}: "
                              f"{d.log_text().strip()[-400:]}")
        time.sleep(0.05)


def stop_c_devices(devices: Sequence[CDevice], timeout: float = 10.0) -> list[int | None]:
    """Stop every device cleanly (in parallel: SIGTERM to all, then wait)."""
    for d in devices:
        if d.alive() and d.process is not None:
            d.process.send_signal(signal.SIGTERM)
    return [d.stop(timeout, signalled=True) for d in devices]
