"""Bearer tokens for the directory's write operations, stored hashed.

`tinyfleet serve token` prints a new random token once and stores only its SHA-256 (with a name and
the creation time) in a JSON file readable by its owner only. Why SHA-256 and not a password hash
(scrypt, argon2): the tokens are 256-bit random strings, not human passwords, so there is nothing to
slow a guesser down for; a fast hash lets every write request be checked in microseconds. Checks
compare digests in constant time. The file is re-read when it changes, so a token created (or
deleted) while the server runs takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firmware_models.exceptions import TinyFleetError

TOKEN_PREFIX = "tft_"


class TokenFileError(TinyFleetError):
    """The token file cannot be read or written."""


def default_tokens_path() -> Path:
    """Where tokens live unless `--tokens` says otherwise (the user's config dir)."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("tinyfleet")) / "serve-tokens.json"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The hashed tokens in `path` (a JSON list of {name, sha256, created})."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._digests: list[str] = []

    def _entries(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise TokenFileError(f"{self.path}: unreadable token file ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                                 for e in data):
            raise TokenFileError(f"{self.path}: not a tinyfleet token file (a JSON list of {{name, sha256}})")
        return data

    def create(self, name: str) -> str:
        """Add a token called `name`; returns the token (shown once, never stored)."""
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
            raise TokenFileError(f"token name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            entries = self._entries()
            if any(e.get("name") == name for e in entries):
                raise TokenFileError(f"{self.path}: a token named {name!r} exists; pick another name")
            entries.append({"name": name, "sha256": _digest(token),
                            "created": datetime.now(UTC).isoformat(timespec="seconds")})
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(entries, f, indent=2)
                os.replace(tmp, self.path)
            except OSError as exc:
                raise TokenFileError(f"{self.path}: cannot write the token file ({exc.strerror or exc})") from None
        return token

    def names(self) -> list[str]:
        """Names of the stored tokens (no secrets)."""
        return [str(e.get("name")) for e in self._entries()]

    def _current(self) -> list[str]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return []
        with self._lock:
            if stamp != self._stamp:
                self._digests = [e["sha256"] for e in self._entries()]
                self._stamp = stamp
            return self._digests

    def any(self) -> bool:
        """True when at least one token exists (else writes are impossible)."""
        return bool(self._current())

    def verify(self, token: str) -> bool:
        """True when `token` is one of the stored tokens (constant-time digest comparison)."""
        if not token or len(token) > 256:
            return False
        digest = _digest(token)
        ok = False
        for known in self._current():
            ok |= hmac.compare_digest(digest, known)
        return ok
