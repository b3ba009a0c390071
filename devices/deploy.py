"""Safe model deployment on a device: chunk assembly, checksum, fit check, atomic swap, self-test, rollback.

A device that is updated over the air must never end up without a working model: a lost chunk,
a corrupted file, a model too big for the board or one that does not run must all leave the old
model in place. The steps, in order:

1. collect chunks (any order, duplicates ignored) until all ``chunk-count`` have arrived;
2. refuse before touching any file if the size or SHA-256 differ (``sha-mismatch``) or the model
   does not fit the board's RAM/flash (``does-not-fit``);
3. write ``<artifact>.new`` and fsync it, copy the current file to ``<artifact>.prev``, then
   ``os.replace`` the new file over the current one (atomic on POSIX: at every instant the path
   holds a complete model);
4. self-test the installed file: it loads with `TFLiteModel`, produces finite output on a few of the
   device's own samples, and (for a backbone) feeds the head the number of features it takes;
5. on failure, ``os.replace`` the previous file back (``self-test-failed``, action ``rolled-back``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.exceptions import DeployError, ModelDoesNotFitError, ProtocolError
from devices.learning.fit import MemoryReport, check_fits, measure_backbone_arena
from devices.wire.protocol import ConfigKey, ErrorCode, Frame, sha256_hex
from firmware_models.exceptions import TinyFleetError
from firmware_models.interpreters import TFLiteModel

ASSEMBLY_TIMEOUT_S = 300.0
"""A deployment whose chunks stop arriving is forgotten after this long (bounded memory)."""
SELF_TEST_SAMPLES = 4


@dataclass
class _Assembly:
    artifact: str
    sha256: str
    size: int
    count: int
    arena_bytes: int | None
    chunks: dict[int, bytes] = field(default_factory=dict)
    received: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class DeployOutcome:
    """What a finished deployment did; becomes the ``deploy`` object of the result."""

    action: str  # swapped | rolled-back | refused
    artifact: str
    sha256: str
    previous_sha256: str | None
    model: TFLiteModel | None = None
    arena_bytes: int | None = None
    error: tuple[str, str] | None = None

    def report(self) -> dict[str, Any]:
        return {"action": self.action, "artifact": self.artifact, "sha256": self.sha256,
                "previous-sha256": self.previous_sha256}


class ChunkAssembler:
    """Collects the chunks of deployments, keyed by the deployment's correlation id."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._open: dict[str, _Assembly] = {}

    def add(self, frame: Frame) -> bytes | None:
        """Store one chunk; return the whole file once every chunk is there, else None.

        Raises `ProtocolError` for a malformed chunk and `DeployError` (``does-not-fit`` /
        ``sha-mismatch``) when the file is refused; the assembly is then forgotten.
        """
        cfg = frame.config
        self._expire()
        if len(frame.tensors) != 1 or frame.tensors[0][0] != "chunk":
            raise ProtocolError("task.deploy needs exactly one tensor named 'chunk'", request_id=frame.id)
        chunk = frame.tensors[0][1]
        if not isinstance(chunk, np.ndarray) or chunk.dtype != np.uint8 or chunk.ndim != 1:
            raise ProtocolError("task.deploy 'chunk' must be a dense 1-D uint8 tensor", request_id=frame.id)
        size = int(cfg[ConfigKey.SIZE])
        if size > self.max_bytes:
            self._open.pop(frame.id, None)
            raise DeployError(f"model of {size:,} B exceeds the device's {self.max_bytes:,} B of flash",
                              code=ErrorCode.DOES_NOT_FIT)
        asm = self._open.get(frame.id)
        if asm is None:
            asm = _Assembly(cfg[ConfigKey.ARTIFACT], cfg[ConfigKey.SHA256], size, int(cfg[ConfigKey.CHUNK_COUNT]),
                            cfg.get(ConfigKey.ARENA_BYTES))
            self._open[frame.id] = asm
        elif (asm.sha256, asm.size, asm.count, asm.artifact) != (cfg[ConfigKey.SHA256], size,
                                                                 cfg[ConfigKey.CHUNK_COUNT], cfg[ConfigKey.ARTIFACT]):
            raise ProtocolError("task.deploy chunk disagrees with earlier chunks of the same id "
                                "(sha256/size/chunk-count/artifact)", code=ErrorCode.BAD_CONFIG, request_id=frame.id)
        index = int(cfg[ConfigKey.CHUNK_INDEX])
        if index in asm.chunks:
            return None  # duplicate chunk (QoS 1 redelivery)
        if asm.received + chunk.size > asm.size:
            self._open.pop(frame.id, None)
            raise DeployError(f"chunks add up to more than the announced {asm.size:,} B", code=ErrorCode.SHA_MISMATCH)
        asm.chunks[index] = chunk.tobytes()
        asm.received += chunk.size
        if len(asm.chunks) < asm.count:
            return None
        del self._open[frame.id]
        data = b"".join(asm.chunks[i] for i in range(asm.count))
        digest = sha256_hex(data)
        if len(data) != asm.size or digest != asm.sha256:
            raise DeployError(f"assembled model has {len(data):,} B and sha256 {digest[:12]}..., announced "
                              f"{asm.size:,} B and {asm.sha256[:12]}...; old model kept", code=ErrorCode.SHA_MISMATCH)
        return data

    def pending(self) -> int:
        """Deployments still waiting for chunks."""
        return len(self._open)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, a in self._open.items() if now - a.started > ASSEMBLY_TIMEOUT_S]:
            del self._open[key]


def fit_check(data: bytes, *, artifact: str, arena_bytes: int | None, current: MemoryReport,
              ram_bytes: int, flash_bytes: int) -> int:
    """Raise `DeployError` (``does-not-fit``) if the new model + head exceed the board; return the arena.

    The learner's current `MemoryReport` is reused with the new model's arena and file size, so
    the head's weights, gradients, activations and buffer are counted exactly as `devices.learning.fit`
    counts them. The arena comes from the task (the model card's measured TFLM arena) or is
    measured here with TFLite Micro (seconds).
    """
    arena = arena_bytes if arena_bytes is not None else measure_backbone_arena(data)
    report = replace(current, arena=int(arena), flash_backbone=len(data))
    try:
        check_fits(report, ram_bytes=ram_bytes, flash_bytes=flash_bytes, what=f"deployed {artifact}")
    except ModelDoesNotFitError as exc:
        raise DeployError(f"{exc}; old model kept", code=ErrorCode.DOES_NOT_FIT) from None
    return arena


def self_test(path: Path, *, samples: np.ndarray, head_inputs: int | None) -> TFLiteModel:
    """Load the installed model and run it on a few local samples; raise `DeployError` if anything is off."""
    try:
        model = TFLiteModel.from_file(path)
        out = model.predict(samples[:SELF_TEST_SAMPLES])
    except TinyFleetError as exc:
        raise DeployError(f"self-test: {exc}", code=ErrorCode.SELF_TEST_FAILED) from None
    except (ValueError, RuntimeError) as exc:
        raise DeployError(f"self-test: the model does not run on local samples ({exc})",
                          code=ErrorCode.SELF_TEST_FAILED) from None
    if not np.all(np.isfinite(out)):
        raise DeployError("self-test: the model produced NaN or infinity", code=ErrorCode.SELF_TEST_FAILED)
    n_out = int(np.prod(model.output.shape[1:]))
    if head_inputs is not None and n_out != head_inputs:
        raise DeployError(f"self-test: the backbone outputs {n_out} features but the head takes {head_inputs}",
                          code=ErrorCode.SELF_TEST_FAILED)
    return model


def install(data: bytes, *, state_dir: Path, artifact: str, samples: np.ndarray,
            head_inputs: int | None) -> DeployOutcome:
    """Atomically put `data` in place as `state_dir/artifact`, self-test it, roll back on failure."""
    state_dir.mkdir(parents=True, exist_ok=True)
    current = state_dir / artifact
    new = current.with_name(artifact + ".new")
    prev = current.with_name(artifact + ".prev")
    previous_sha = sha256_hex(current.read_bytes()) if current.is_file() else None
    with open(new, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if current.is_file():
        shutil.copy2(current, prev)
    else:
        prev.unlink(missing_ok=True)
    os.replace(new, current)
    _fsync_dir(state_dir)
    sha = sha256_hex(data)
    try:
        model = self_test(current, samples=samples, head_inputs=head_inputs)
    except DeployError as exc:
        if prev.is_file():
            os.replace(prev, current)
        else:
            current.unlink(missing_ok=True)
        _fsync_dir(state_dir)
        return DeployOutcome("rolled-back", artifact, sha, previous_sha, error=(exc.code, f"{exc}; rolled back"))
    return DeployOutcome("swapped", artifact, sha, previous_sha, model=model)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["ChunkAssembler", "DeployOutcome", "fit_check", "install", "self_test"]
