"""Accounts of a secured broker: devices and server processes, each with its own password.

Passwords are random (`secrets`) and hashed here exactly as ``mosquitto_passwd`` 2.0 does
(``$7$`` = PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt; `hash_password`), so the secret never
reaches argv or a temp file and a thousand devices are enrolled with one file write and ONE SIGHUP
(`enroll_devices`) instead of a thousand ``mosquitto_passwd`` processes. A device's password is
returned once by `enroll_device` and not stored in clear text; a server account's password lives in
``credentials/<name>.json`` (0600) so that server processes can read it from a file.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.acl import write_acl
from broker.exceptions import SecurityError
from broker.files import (
    SERVER_USER,
    Role,
    SecurityPaths,
    check_account_name,
    is_secured,
    locked,
    opt,
    read_accounts,
    write_accounts,
    write_private,
)
from broker.pki import certificate_serial, issue_client_certificate, revoke_serials
from broker.process import reload_broker
from devices.link.address import Credentials
from devices.wire.topics import DEFAULT_FLEET, check_name

_PASSWORD_BYTES = 24  # 192 random bits, 32 URL-safe characters
PBKDF2_ITERATIONS = 101
"""mosquitto_passwd 2.0's default (``PW_DEFAULT_ITERATIONS``); the broker reads the count from each hash."""
_SALT_BYTES = 12  # mosquitto_passwd 2.0's SALT_LEN


@dataclass(frozen=True)
class Enrollment:
    """What enrolling one account produced.

    Attributes
    ----------
    name : str
        User name (== MQTT client id; for a device also its device id).
    role : {"device", "server", "bridge"}
    fleet : str or None
        The fleet a device may use; None for server accounts (every fleet).
    password : str
        Shown once: only its hash is stored (server accounts also keep a 0600 credentials file).
    credentials : Credentials
        Ready for `MqttHub`, `FleetClient` and friends (CA and client certificate when TLS).
    credentials_file : Path or None
        The server account's 0600 JSON file; None for devices.
    """

    name: str
    role: Role
    fleet: str | None
    password: str
    credentials: Credentials
    credentials_file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (includes the password: print it once, never log it)."""
        c = self.credentials
        return {"name": self.name, "role": self.role, "fleet": self.fleet, "username": c.username,
                "password": self.password, "ca": opt(c.ca), "cert": opt(c.cert), "key": opt(c.key),
                "credentials_file": opt(self.credentials_file)}


def list_accounts(directory: str | Path) -> dict[str, dict[str, Any]]:
    """``{name: {"role", "fleet", "created"}}`` of every enrolled account (no secrets)."""
    accounts = read_accounts(SecurityPaths(Path(directory)))
    return dict(accounts["accounts"]) if accounts else {}


def enroll_device(directory: str | Path, device_id: str, *, fleet: str = DEFAULT_FLEET,
                  rotate: bool = False) -> Enrollment:
    """Create a device account (password, ACL, certificate with TLS) and reload a running broker.

    Parameters
    ----------
    directory : Path
        A broker directory initialized by `SecureBrokerConfig.initialize` (``tinyfleet broker start``).
    device_id : str
        User name, client id and topic level; 1-64 of ``A-Z a-z 0-9 . _ -`` (no ``/ + # :``).
    fleet : str, default="default"
        The only fleet whose topics the device may use.
    rotate : bool, default=False
        Replace the password (and certificate) of an existing account; without it re-enrolling
        is refused so that a typo cannot silently lock out a working device.
    """
    return _enroll(Path(directory), device_id, role="device", fleet=check_name(fleet, what="fleet name"),
                   rotate=rotate)


def enroll_devices(directory: str | Path, device_ids: Iterable[str], *, fleet: str = DEFAULT_FLEET,
                   rotate: bool = False) -> list[Enrollment]:
    """Enrol many devices at once (fleet simulator, provisioning scripts), each with its own password.

    Same rules as `enroll_device`, but all hashes are written in one go and the running broker is
    reloaded once: one ``mosquitto_passwd`` process and one SIGHUP per device would make a
    1,000-device fleet wait tens of seconds (docs/reliability.md gives the measured figure).
    With TLS each device still gets its own client certificate.
    """
    return _enroll_many(Path(directory), list(device_ids), role="device",
                        fleet=check_name(fleet, what="fleet name"), rotate=rotate)


def enroll_device_credentials(directory: str | Path, device_ids: Iterable[str], *, fleet: str = DEFAULT_FLEET,
                              rotate: bool = True) -> dict[str, Credentials]:
    """``{device id: Credentials}`` for devices about to connect to the broker of `directory`.

    Used by fleet simulators and provisioning: enrols (or, with `rotate`, re-keys) every id in
    one batch on a secured broker, and returns ``{}`` for an open one (nothing to enrol).
    """
    if not is_secured(directory):
        return {}
    return {e.name: e.credentials for e in enroll_devices(directory, device_ids, fleet=fleet, rotate=rotate)}


def ensure_server_account(directory: str | Path, name: str = SERVER_USER) -> Credentials:
    """The credentials of server account `name`, enrolling it first when it does not exist yet.

    Why one account per purpose (coordinator, registry listener, deploy client, CLI): the broker
    forces client id = user name, so two processes that share an account disconnect each other.
    """
    p = SecurityPaths(Path(directory))
    if (p.credentials_dir / f"{name}.json").is_file() and name in list_accounts(directory):
        return server_credentials(directory, name)
    return enroll_server(directory, name, rotate=name in list_accounts(directory)).credentials


def process_server_account(directory: str | Path, base: str = SERVER_USER) -> Credentials:
    """This process's own server account, ``<base>-<pid>``, enrolled on first use.

    Why per process: the broker forces client id = user name, so two server processes that share
    an account take each other's session over, and each one's reconnect throws the other out
    again. With one account per process any number of coordinators or Flower Grids can run side by
    side on one managed broker. Accounts ``<base>-<pid>`` of processes that no longer run on this
    host are removed at the same time, so the password file does not grow with every run.
    """
    name = f"{base}-{os.getpid()}"
    check_account_name(name)
    if _retire_dead_process_accounts(Path(directory), base, keep=name):
        reload_broker(directory)
    return ensure_server_account(directory, name)


def _retire_dead_process_accounts(directory: Path, base: str, *, keep: str) -> list[str]:
    """Remove server accounts ``<base>-<pid>`` whose process is gone (password, ACL, credentials, certificate)."""
    pattern = re.compile(rf"{re.escape(base)}-(\d+)")
    p = SecurityPaths(directory)
    if not p.accounts.is_file():
        return []  # not initialized: `ensure_server_account` says so in one line
    with locked(p):
        accounts = read_accounts(p)
        if accounts is None:
            return []
        dead = sorted(n for n, acc in accounts["accounts"].items()
                      if acc["role"] == "server" and n != keep and (m := pattern.fullmatch(n)) is not None
                      and not _process_alive(int(m.group(1))))
        if not dead:
            return []
        for name in dead:
            del accounts["accounts"][name]
        _set_passwords(p.passwd, {}, remove=dead)
        write_accounts(p, accounts)
        write_acl(directory)
        for name in dead:
            for f in (p.credentials_dir / f"{name}.json", p.client_cert(name), p.client_key(name)):
                f.unlink(missing_ok=True)
    return dead


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def enroll_server(directory: str | Path, name: str = SERVER_USER, *, rotate: bool = False) -> Enrollment:
    """Create a server account (read/write on every fleet) and its 0600 credentials file.

    Every server process that runs at the same time as another needs its own account: the broker
    forces client id = user name, so two connections of one account take each other's session over.
    """
    return _enroll(Path(directory), name, role="server", fleet=None, rotate=rotate)


def enroll_bridge(directory: str | Path, name: str, *, fleet: str = "default", rotate: bool = False) -> Enrollment:
    """Create a bridge account: a site broker that may publish its devices' TDs, presence and telemetry.

    The account can write ``<fleet>/+/td|presence|telemetry`` and nothing else (no tasks, no
    results, no reading), so a compromised site cannot steer another site's devices. Its
    credentials file (0600) is read when the site broker's bridge configuration is written.
    """
    return _enroll(Path(directory), name, role="bridge", fleet=check_name(fleet, what="fleet name"), rotate=rotate)


def server_credentials(directory: str | Path, name: str = SERVER_USER) -> Credentials:
    """The credentials of server account `name`, read from its 0600 file in `directory`."""
    return load_credentials(SecurityPaths(Path(directory)).credentials_dir / f"{name}.json")


def load_credentials(path: str | Path) -> Credentials:
    """Read a credentials file written by `enroll_server` (or by hand: username, password, ca, cert, key)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SecurityError(f"credentials file {path} does not exist (enroll the account first)") from None
    except (OSError, ValueError) as exc:
        raise SecurityError(f"credentials file {path} cannot be read as JSON: {exc}") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("username", "password")):
        raise SecurityError(f"credentials file {path} needs string fields 'username' and 'password'")
    files = {}
    for k in ("ca", "cert", "key"):
        v = doc.get(k)
        if v is not None and not isinstance(v, str):
            raise SecurityError(f"credentials file {path}: field {k!r} must be a path string or null")
        files[k] = Path(v) if v else None
    return Credentials(doc["username"], doc["password"], files["ca"], files["cert"], files["key"])


def _enroll(directory: Path, name: str, *, role: Role, fleet: str | None, rotate: bool) -> Enrollment:
    return _enroll_many(directory, [name], role=role, fleet=fleet, rotate=rotate)[0]


def _enroll_many(directory: Path, names: list[str], *, role: Role, fleet: str | None, rotate: bool,
                 reload: bool = True) -> list[Enrollment]:
    """Enrol `names` under one lock: one password-file write, one accounts write, one ACL write, one SIGHUP."""
    for name in names:
        check_account_name(name)
    if len(set(names)) != len(names):
        raise SecurityError("an enrolment batch names the same account twice")
    p = SecurityPaths(directory)
    out: list[Enrollment] = []
    with locked(p):
        accounts = read_accounts(p)
        if accounts is None:
            raise SecurityError(f"{p.root} is not initialized: start the broker with "
                                f"`tinyfleet broker start --dir {directory}` first")
        for name in names:
            known = accounts["accounts"].get(name)
            if known is not None:
                if known["role"] != role:
                    raise SecurityError(f"{name!r} is already a {known['role']} account in {p.root}; "
                                        "pick another name")
                if not rotate:
                    raise SecurityError(f"{name!r} is already enrolled in {p.root}; pass --rotate to replace its "
                                        "password (the old one stops working)")
        passwords = {name: secrets.token_urlsafe(_PASSWORD_BYTES) for name in names}
        _set_passwords(p.passwd, passwords)
        if accounts["tls"]:  # a rotated account's old certificate must stop working with its old password
            old = {serial: name for name in names if name in accounts["accounts"]
                   and (serial := certificate_serial(p.client_cert(name))) is not None}
            if old:
                revoke_serials(directory, old)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for name in names:
            ca = cert = key = None
            if accounts["tls"]:
                cert, key = issue_client_certificate(directory, name)
                ca = p.ca_cert
            accounts["accounts"][name] = {"role": role, "fleet": fleet, "created": created}
            creds = Credentials(name, passwords[name], ca, cert, key)
            cred_file = None
            if role in ("server", "bridge"):
                p.credentials_dir.mkdir(mode=0o700, exist_ok=True)
                cred_file = p.credentials_dir / f"{name}.json"
                write_private(cred_file, json.dumps({"username": name, "password": passwords[name], "ca": opt(ca),
                                                      "cert": opt(cert), "key": opt(key)}, indent=2) + "\n")
            out.append(Enrollment(name, role, fleet, passwords[name], creds, cred_file))
        write_accounts(p, accounts)
        write_acl(directory)
    if reload:
        reload_broker(directory)
    return out


@dataclass(frozen=True)
class Revocation:
    """What `revoke_account` did: the account is gone, its certificate (TLS) listed in the CRL."""

    name: str
    role: Role
    fleet: str | None
    certificate_serial: int | None
    reloaded: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "fleet": self.fleet,
                "certificate_serial": None if self.certificate_serial is None else f"{self.certificate_serial:x}",
                "reloaded": self.reloaded}


def revoke_account(directory: str | Path, name: str) -> Revocation:
    """Remove an account for good: password hash, ACL entry, certificate (into the CRL), credentials file.

    The running broker is reloaded (SIGHUP): measured on Mosquitto 2.0.11, a connected client whose
    account vanished from the password file is disconnected at once, and with TLS its certificate's
    next handshake fails against the CRL. Enrol the name again to give it a fresh identity.
    """
    check_account_name(name)
    directory = Path(directory)
    p = SecurityPaths(directory)
    with locked(p):
        accounts = read_accounts(p)
        if accounts is None:
            raise SecurityError(f"{p.root} is not initialized: start the broker with "
                                f"`tinyfleet broker start --dir {directory}` first")
        known = accounts["accounts"].get(name)
        if known is None:
            raise SecurityError(f"{name!r} is not enrolled in {p.root} (nothing to revoke)")
        serial = certificate_serial(p.client_cert(name)) if accounts["tls"] else None
        if serial is not None:
            revoke_serials(directory, {serial: name})
        _set_passwords(p.passwd, {}, remove=(name,))
        del accounts["accounts"][name]
        write_accounts(p, accounts)
        write_acl(directory)
        for path in (p.client_key(name), p.client_cert(name), p.credentials_dir / f"{name}.json"):
            path.unlink(missing_ok=True)
    return Revocation(name, known["role"], known.get("fleet"), serial, reload_broker(directory))


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The ``$7$`` hash Mosquitto 2.0 expects in its password file (what ``mosquitto_passwd`` writes).

    Format ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt)>`` with a
    12-byte random salt; tests check it against ``mosquitto_passwd`` output and a real broker login.
    """
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _set_passwords(passwd: Path, passwords: dict[str, str], *, remove: Iterable[str] = ()) -> None:
    """Add, replace (or `remove`) accounts in the password file in one atomic write (order kept, 0600)."""
    entries: dict[str, str] = {}
    try:
        text = passwd.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise SecurityError(f"{passwd} cannot be read: {exc.strerror or exc}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        user, sep, digest = line.partition(":")
        if not sep or not digest:
            raise SecurityError(f"{passwd}:{lineno}: not a 'user:hash' line")
        entries[user] = digest
    for name in remove:
        entries.pop(name, None)
    for name, password in passwords.items():
        entries[name] = hash_password(password)
    write_private(passwd, "".join(f"{u}:{h}\n" for u, h in entries.items()))
