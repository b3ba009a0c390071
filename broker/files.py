"""Where a secured broker keeps its files, and how they are written (atomically, 0600, under a lock).

Files under ``<broker dir>/security/``: ``passwd``, ``acl``, ``accounts.json`` (names, roles,
fleets; no secrets), ``credentials/`` (server accounts' 0600 JSON), ``pki/`` (CA, server and client
certificates, the CRL ``crl.pem`` Mosquitto reads and ``revoked.json``, the serials it lists). Every
write is a temp file + fsync + rename, so a crash never leaves half a file,
and enrolments of one directory are serialized by an advisory lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from broker.exceptions import SecurityError
from devices.exceptions import DeviceIdError
from devices.wire.topics import check_name

SERVER_USER = "fleet-server"
"""The server account that `SecureBrokerConfig.initialize` creates."""

SECURITY_DIR = "security"

Role = Literal["device", "server", "bridge"]
ROLES: tuple[str, ...] = ("device", "server", "bridge")
ACCOUNTS_VERSION = 1


@dataclass(frozen=True)
class SecurityPaths:
    """Where the security files of one broker directory live."""

    directory: Path

    @property
    def root(self) -> Path:
        return Path(self.directory) / SECURITY_DIR

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def acl(self) -> Path:
        return self.root / "acl"

    @property
    def accounts(self) -> Path:
        return self.root / "accounts.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def credentials_dir(self) -> Path:
        return self.root / "credentials"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.pki / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.pki / "server.key"

    @property
    def crl(self) -> Path:
        return self.pki / "crl.pem"

    @property
    def revoked(self) -> Path:
        return self.pki / "revoked.json"

    def client_cert(self, name: str) -> Path:
        return self.pki / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.pki / "clients" / f"{name}.key"


def check_account_name(name: str) -> str:
    """An account name is a device id (`check_name`: that rule already excludes the password file's ':')."""
    return check_name(name, what="account name")


def read_accounts(p: SecurityPaths) -> dict[str, Any] | None:
    try:
        doc = json.loads(p.accounts.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{p.accounts} cannot be read as JSON: {exc}") from None
    if (not isinstance(doc, dict) or doc.get("version") != ACCOUNTS_VERSION or not isinstance(doc.get("accounts"), dict)
            or not isinstance(doc.get("tls"), bool)):
        raise SecurityError(f"{p.accounts} is not a tinyfleet accounts file (version {ACCOUNTS_VERSION})")
    for name, acc in doc["accounts"].items():
        if not isinstance(acc, dict) or acc.get("role") not in ROLES:
            raise SecurityError(f"{p.accounts}: account {name!r} has no valid role")
        try:
            check_account_name(name)
            if acc["role"] in ("device", "bridge"):
                check_name(str(acc.get("fleet")), what="fleet name")
        except DeviceIdError as exc:
            raise SecurityError(f"{p.accounts}: {exc}") from None
    return doc


def write_accounts(p: SecurityPaths, doc: dict[str, Any]) -> None:
    write_private(p.accounts, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def write_private(path: Path, text: str | bytes) -> None:
    """Write atomically (temp file + rename) with mode 0600, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # the old file stays as it was: nothing half-written is ever read
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise SecurityError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_public(path: Path, data: bytes) -> None:
    write_private(path, data)
    os.chmod(path, 0o644)


@contextlib.contextmanager
def locked(p: SecurityPaths) -> Iterator[None]:
    """Serialize enrolments of one directory (two `enroll` commands at once must not lose an account)."""
    with contextlib.ExitStack() as stack:
        try:
            p.root.mkdir(parents=True, exist_ok=True)
            f = stack.enter_context(open(p.lock, "a"))
        except OSError as exc:  # e.g. a run directory below a regular file, or a read-only disk
            raise SecurityError(f"{p.root}: cannot create the broker's security files "
                                f"({exc.strerror or exc})") from None
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def opt(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def is_secured(directory: str | Path) -> bool:
    """Whether `directory` holds an initialized secure broker configuration."""
    return SecurityPaths(Path(directory)).accounts.is_file()


def uses_tls(directory: str | Path) -> bool:
    """Whether the secure configuration of `directory` serves mqtts."""
    accounts = read_accounts(SecurityPaths(Path(directory)))
    return bool(accounts and accounts["tls"])
