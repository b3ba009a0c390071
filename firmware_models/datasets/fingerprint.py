"""A short, reproducible description of which real data files a model was trained on.

Why: a model card must say which data was used, and a path alone says nothing once the folder
changes. Hashing every byte of Speech Commands (2.3 GB) would make each build minutes slower, so
the fingerprint hashes the *file list*: one `<relative path>\\t<size in bytes>` line per file,
sorted, UTF-8. Adding, removing, renaming or truncating a file changes it; it is identical on
every machine that holds the same files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def file_list_fingerprint(root: str | Path, files: Iterable[str | Path]) -> dict[str, Any]:
    """Path, file count, total bytes and sha256 of the sorted file list of `files` under `root`.

    Parameters
    ----------
    root : str or Path
        The folder (or the single file) the user pointed at; reported resolved.
    files : iterable of str or Path
        The files actually read, absolute or relative to `root`.

    Returns
    -------
    dict
        ``{"path", "files", "bytes", "file_list_sha256"}``.
    """
    root = Path(root).resolve()
    base = root if root.is_dir() else root.parent
    lines: list[str] = []
    total = 0
    for f in files:
        path = Path(f) if Path(f).is_absolute() else base / f
        size = path.stat().st_size
        total += size
        try:
            rel = path.resolve().relative_to(base).as_posix()
        except ValueError:
            rel = path.resolve().as_posix()
        lines.append(f"{rel}\t{size}")
    lines.sort()
    digest = hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()
    return {"path": str(root), "files": len(lines), "bytes": total, "file_list_sha256": digest}
