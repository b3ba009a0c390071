"""Crash-safe checkpoints of a federated run: one `.npz` replaced atomically after every round.

A coordinator can be killed at any instant (SIGKILL, power loss). The checkpoint is therefore
written to a temporary file in the same directory, flushed and fsync'ed, then moved over the old
one with `os.replace` (atomic on POSIX) and the directory is fsync'ed, so a reader sees either
the previous round's checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from federation.exceptions import CheckpointError

CHECKPOINT_FORMAT = 1
_META = "__meta__"
_EXTRA = "__extra__"


def save_checkpoint(path: str | Path, *, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any],
                    extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Atomically write the global parameters `arrays` and the JSON-able `state` to `path`.

    Parameters
    ----------
    path : path
        Destination, e.g. ``<run dir>/checkpoint.npz``.
    arrays : mapping of str to np.ndarray
        Global parameters after the round (keys must not start with "__").
    state : mapping
        Round, strategy state, RNG state, ...; stored as JSON beside the arrays.
    extra : mapping of str to np.ndarray, optional
        Further arrays with free-form names (a strategy's server-side state), read back with
        `load_extra_arrays`; stored under positional keys so that any name is safe in the zip.
    """
    path = Path(path)
    if any(k.startswith("__") for k in arrays):
        raise ValueError("array names starting with '__' are reserved")
    bad = sorted(k for k, v in arrays.items() if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)))
    if bad:  # the last line of defence: a model with NaN/inf would make every honest device refuse its tasks
        raise CheckpointError(f"{path}: refusing to write non-finite parameters ({', '.join(bad)}); "
                              "the previous checkpoint, if any, is intact")
    extra = dict(extra or {})
    meta = json.dumps({"format": CHECKPOINT_FORMAT, "keys": list(arrays), "extra_keys": list(extra), **state},
                      sort_keys=True)
    buf = io.BytesIO()
    members = {_META: np.frombuffer(meta.encode(), dtype=np.uint8), **{k: np.asarray(v) for k, v in arrays.items()},
               **{f"{_EXTRA}{i}": np.asarray(v) for i, v in enumerate(extra.values())}}
    np.savez(buf, allow_pickle=False, **members)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise _write_error(path, exc) from None


def _write_error(path: Path, exc: OSError) -> CheckpointError:
    """One line naming the file and the OS reason (disk full, not a directory, ...); old file untouched."""
    reason = exc.strerror or type(exc).__name__
    return CheckpointError(f"{path}: cannot write checkpoint ({reason}); the previous checkpoint, if any, is intact")


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint; any defect is a `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (the run has not finished a round yet?)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data[_META]).decode())
            keys = meta.get("keys")
            if not isinstance(keys, list):
                raise ValueError("no key list")
            arrays = {k: np.array(data[k]) for k in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r} is not {CHECKPOINT_FORMAT}")
    return arrays, meta


def load_extra_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The `extra` arrays saved with a checkpoint (empty for checkpoints written without any)."""
    path = Path(path)
    _, meta = load_checkpoint(path)
    names = meta.get("extra_keys") or []
    try:
        with np.load(path, allow_pickle=False) as data:
            return {str(name): np.array(data[f"{_EXTRA}{i}"]) for i, name in enumerate(names)}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: unreadable strategy state ({type(exc).__name__}: {exc})") from None
