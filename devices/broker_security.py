"""Harden the private Mosquitto: per-account passwords, per-device ACLs, size limits, optional TLS.

Who can do what (docs/reliability.md, "Security model"):

* nobody anonymous (``allow_anonymous false``);
* a **device** account (user name == device id == MQTT client id) may write only its own
  ``td``, ``presence``, ``telemetry`` and ``result`` topics and read only its own ``task`` topic,
  in the one fleet it was enrolled in;
* a **server** account (coordinator, registry listener, CLI) reads and writes ``tinyfleet/v1/#``.

Why explicit per-user ACL lines and not ``pattern ... %u``: Mosquitto 2.0.x substitutes ``%u``
across topic levels, so a user name with a ``/`` could escape its subtree; listing each device's
topics, and refusing names with ``/ + # :``, leaves nothing to substitute. Why
``use_username_as_clientid``: ``%c`` and client ids are spoofable, and a device that connects with
another device's client id takes over (and disconnects) that device's session; forcing the client
id to the authenticated user name makes that impossible. The price: two processes that share one
account kick each other off, so every concurrently running server process needs its own server
account (`enroll_server`). Why ``max_packet_size`` and not ``message_size_limit``: with MQTT v5
clients Mosquitto 2.0.11 answers an oversize QoS 1 PUBLISH with an invalid PUBACK 0x95 and paho
enters a reconnect loop (shared notes, mqtt-security.md).

Passwords are random (`secrets`) and hashed here exactly as ``mosquitto_passwd`` 2.0 does
(``$7$`` = PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt; `hash_password`), so the secret never
reaches argv or a temp file and a thousand devices are enrolled with one file write and ONE SIGHUP
(`enroll_devices`) instead of a thousand ``mosquitto_passwd`` processes. A device's password is returned once by `enroll_device` and not
stored in clear text; a server account's password lives in ``credentials/<name>.json`` (0600)
so that server processes can read it from a file. With TLS, a private CA (``cryptography``,
imported lazily) signs the server's certificate (SAN localhost, 127.0.0.1, ::1) and one client
certificate per account; the TLS listener requires a client certificate *and* a password.

Files under ``<broker dir>/security/``: ``passwd``, ``acl``, ``accounts.json`` (names, roles,
fleets; no secrets), ``credentials/``, ``pki/``. This module needs only the standard library
(plus ``cryptography`` for TLS), never TensorFlow or Flower.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import secrets
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from devices.broker import MosquittoBroker, read_state
from devices.exceptions import DeviceIdError
from devices.mqtt_link import Credentials
from devices.protocol import DEFAULT_MAX_FRAME_BYTES
from devices.topics import DEVICE_READS, DEVICE_WRITES, ROOT, check_name
from firmware_models.exceptions import TinyFleetError

SERVER_USER = "fleet-server"
"""The server account that `SecureBrokerConfig.initialize` creates."""

SECURITY_DIR = "security"
DEFAULT_MAX_PACKET_BYTES = DEFAULT_MAX_FRAME_BYTES + 64 * 1024
"""The largest protocol frame (4 MiB) plus room for the MQTT header and properties."""

Role = Literal["device", "server"]
_ACCOUNTS_VERSION = 1
_PASSWORD_BYTES = 24  # 192 random bits, 32 URL-safe characters
PBKDF2_ITERATIONS = 101
"""mosquitto_passwd 2.0's default (``PW_DEFAULT_ITERATIONS``); the broker reads the count from each hash."""
_SALT_BYTES = 12  # mosquitto_passwd 2.0's SALT_LEN


class SecurityError(TinyFleetError):
    """Broker security files are missing, inconsistent or cannot be written, or an enrolment is refused."""


@dataclass(frozen=True)
class Enrollment:
    """What enrolling one account produced.

    Attributes
    ----------
    name : str
        User name (== MQTT client id; for a device also its device id).
    role : {"device", "server"}
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
                "password": self.password, "ca": _opt(c.ca), "cert": _opt(c.cert), "key": _opt(c.key),
                "credentials_file": _opt(self.credentials_file)}


@dataclass
class SecureBrokerConfig:
    """The hardened configuration of the private broker in `directory`.

    Parameters
    ----------
    directory : Path
        The broker directory (`MosquittoBroker`'s); security files go to ``security/`` inside it.
    tls : bool, default=False
        Serve mqtts (TLS 1.2+, client certificate required) instead of plain MQTT. Fixed when the
        directory is first initialized: switching later would strand enrolled devices.
    max_packet_size : int, default=4 MiB + 64 KiB
        Larger MQTT packets make Mosquitto disconnect the sender (advertised in the v5 CONNACK).
    max_inflight : int, default=20
        QoS 1 messages in flight per client (advertised as Receive Maximum).
    """

    directory: Path
    tls: bool = False
    max_packet_size: int = DEFAULT_MAX_PACKET_BYTES
    max_inflight: int = 20
    paths: SecurityPaths = field(init=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.paths = SecurityPaths(self.directory)
        if self.max_packet_size < 1024:
            raise SecurityError(f"max_packet_size {self.max_packet_size} is too small (at least 1024 bytes)")

    def initialize(self) -> Enrollment | None:
        """Create the security files once; return the new server account, or None if it existed.

        Raises SecurityError when the directory was initialized with a different TLS setting.
        """
        p = self.paths
        with _locked(p):
            accounts = _read_accounts(p)
            if accounts is not None:
                if bool(accounts["tls"]) != self.tls:
                    was = "with" if accounts["tls"] else "without"
                    raise SecurityError(f"{p.root} was initialized {was} TLS; start it the same way or use a new "
                                        "--dir (switching would strand the enrolled devices)")
                return None
            p.root.mkdir(parents=True, exist_ok=True)
            os.chmod(p.root, 0o700)
            _write_private(p.passwd, "")
            if self.tls:
                make_pki(self.directory)
            _write_accounts(p, {"version": _ACCOUNTS_VERSION, "tls": self.tls, "accounts": {}})
        return enroll_server(self.directory, SERVER_USER)

    def extra_config(self) -> str:
        """Mosquitto config lines appended after the generated listener line (so TLS applies to it)."""
        p = self.paths
        lines = [
            f"password_file {p.passwd}",
            f"acl_file {p.acl}",
            "use_username_as_clientid true",
            f"max_packet_size {self.max_packet_size}",
            f"max_inflight_messages {self.max_inflight}",
            "max_keepalive 300",
        ]
        if self.tls:
            lines += [f"cafile {p.ca_cert}", f"certfile {p.server_cert}", f"keyfile {p.server_key}",
                      "tls_version tlsv1.2", "require_certificate true", "use_identity_as_username false"]
        return "\n".join(lines)

    def broker(self, *, host: str = "127.0.0.1", port: int | None = None, persistence: bool = False) -> MosquittoBroker:
        """Initialize if needed and return a `MosquittoBroker` that runs with this configuration."""
        self.initialize()
        write_acl(self.directory)
        return MosquittoBroker(self.directory, host=host, port=port, extra_config=self.extra_config(),
                               persistence=persistence, allow_anonymous=False, tls=self.tls)


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

    def client_cert(self, name: str) -> Path:
        return self.pki / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.pki / "clients" / f"{name}.key"


# ---------------------------------------------------------------------------------- accounts
def is_secured(directory: str | Path) -> bool:
    """Whether `directory` holds an initialized secure broker configuration."""
    return SecurityPaths(Path(directory)).accounts.is_file()


def uses_tls(directory: str | Path) -> bool:
    """Whether the secure configuration of `directory` serves mqtts."""
    accounts = _read_accounts(SecurityPaths(Path(directory)))
    return bool(accounts and accounts["tls"])


def list_accounts(directory: str | Path) -> dict[str, dict[str, Any]]:
    """``{name: {"role", "fleet", "created"}}`` of every enrolled account (no secrets)."""
    accounts = _read_accounts(SecurityPaths(Path(directory)))
    return dict(accounts["accounts"]) if accounts else {}


def enroll_device(directory: str | Path, device_id: str, *, fleet: str = "default",
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


def enroll_devices(directory: str | Path, device_ids: Iterable[str], *, fleet: str = "default",
                   rotate: bool = False) -> list[Enrollment]:
    """Enrol many devices at once (fleet simulator, provisioning scripts), each with its own password.

    Same rules as `enroll_device`, but all hashes are written in one go and the running broker is
    reloaded once: one ``mosquitto_passwd`` process and one SIGHUP per device would make a
    1,000-device fleet wait tens of seconds (docs/reliability.md gives the measured figure).
    With TLS each device still gets its own client certificate.
    """
    return _enroll_many(Path(directory), list(device_ids), role="device",
                        fleet=check_name(fleet, what="fleet name"), rotate=rotate)


def ensure_server_account(directory: str | Path, name: str = SERVER_USER) -> Credentials:
    """The credentials of server account `name`, enrolling it first when it does not exist yet.

    Why one account per purpose (coordinator, registry listener, deploy client, CLI): the broker
    forces client id = user name, so two processes that share an account disconnect each other.
    """
    p = SecurityPaths(Path(directory))
    if (p.credentials_dir / f"{name}.json").is_file() and name in list_accounts(directory):
        return server_credentials(directory, name)
    return enroll_server(directory, name, rotate=name in list_accounts(directory)).credentials


def secured_broker(directory: str | Path, *, tls: bool = False, persistence: bool = False,
                   host: str = "127.0.0.1", port: int | None = None) -> MosquittoBroker:
    """A `MosquittoBroker` for `directory` with the hardened configuration (tinyfleet's default).

    The TLS choice of an already secured directory wins (switching would strand enrolled devices).
    """
    if is_secured(directory):
        tls = uses_tls(directory)
    return SecureBrokerConfig(Path(directory), tls=tls).broker(host=host, port=port, persistence=persistence)


def enroll_server(directory: str | Path, name: str = SERVER_USER, *, rotate: bool = False) -> Enrollment:
    """Create a server account (read/write on every fleet) and its 0600 credentials file.

    Every server process that runs at the same time as another needs its own account: the broker
    forces client id = user name, so two connections of one account take each other's session over.
    """
    return _enroll(Path(directory), name, role="server", fleet=None, rotate=rotate)


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
    if not isinstance(doc, dict) or not isinstance(doc.get("username"), str) or not isinstance(doc.get("password"), str):
        raise SecurityError(f"credentials file {path} needs string fields 'username' and 'password'")
    files = {}
    for k in ("ca", "cert", "key"):
        v = doc.get(k)
        if v is not None and not isinstance(v, str):
            raise SecurityError(f"credentials file {path}: field {k!r} must be a path string or null")
        files[k] = Path(v) if v else None
    return Credentials(doc["username"], doc["password"], files["ca"], files["cert"], files["key"])


def write_acl(directory: str | Path) -> Path:
    """Regenerate the ACL file from ``accounts.json`` (explicit topics per user, no ``%u``)."""
    p = SecurityPaths(Path(directory))
    accounts = _read_accounts(p)
    if accounts is None:
        raise SecurityError(f"{p.root} is not initialized (run `tinyfleet broker start --dir {directory}`)")
    lines = ["# generated by tinyfleet (devices/broker_security.py); rewritten on every enrolment", ""]
    for name, acc in sorted(accounts["accounts"].items()):
        lines.append(f"user {name}")
        if acc["role"] == "server":
            lines.append(f"topic readwrite {ROOT}/#")
        else:
            base = f"{ROOT}/{acc['fleet']}/{name}"
            lines += [f"topic write {base}/{k}" for k in sorted(DEVICE_WRITES)]
            lines += [f"topic read {base}/{k}" for k in sorted(DEVICE_READS)]
        lines.append("")
    _write_private(p.acl, "\n".join(lines))
    return p.acl


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


def _check_account_name(name: str) -> str:
    check_name(name, what="account name")
    if ":" in name:  # the password file is "user:hash"
        raise DeviceIdError(f"invalid account name {name!r}: ':' is not allowed in MQTT user names here")
    return name


def _enroll(directory: Path, name: str, *, role: Role, fleet: str | None, rotate: bool) -> Enrollment:
    return _enroll_many(directory, [name], role=role, fleet=fleet, rotate=rotate)[0]


def _enroll_many(directory: Path, names: list[str], *, role: Role, fleet: str | None, rotate: bool,
                 reload: bool = True) -> list[Enrollment]:
    """Enrol `names` under one lock: one password-file write, one accounts write, one ACL write, one SIGHUP."""
    for name in names:
        _check_account_name(name)
    if len(set(names)) != len(names):
        raise SecurityError("an enrolment batch names the same account twice")
    p = SecurityPaths(directory)
    out: list[Enrollment] = []
    with _locked(p):
        accounts = _read_accounts(p)
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
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for name in names:
            ca = cert = key = None
            if accounts["tls"]:
                cert, key = issue_client_certificate(directory, name)
                ca = p.ca_cert
            accounts["accounts"][name] = {"role": role, "fleet": fleet, "created": created}
            creds = Credentials(name, passwords[name], ca, cert, key)
            cred_file = None
            if role == "server":
                p.credentials_dir.mkdir(mode=0o700, exist_ok=True)
                cred_file = p.credentials_dir / f"{name}.json"
                _write_private(cred_file, json.dumps({"username": name, "password": passwords[name], "ca": _opt(ca),
                                                      "cert": _opt(cert), "key": _opt(key)}, indent=2) + "\n")
            out.append(Enrollment(name, role, fleet, passwords[name], creds, cred_file))
        _write_accounts(p, accounts)
        write_acl(directory)
    if reload:
        reload_broker(directory)
    return out


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The ``$7$`` hash Mosquitto 2.0 expects in its password file (what ``mosquitto_passwd`` writes).

    Format ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt)>`` with a
    12-byte random salt; tests check it against ``mosquitto_passwd`` output and a real broker login.
    """
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _set_passwords(passwd: Path, passwords: dict[str, str]) -> None:
    """Add or replace accounts in the password file in one atomic write (order kept, 0600)."""
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
    for name, password in passwords.items():
        entries[name] = hash_password(password)
    _write_private(passwd, "".join(f"{u}:{h}\n" for u, h in entries.items()))


def _read_accounts(p: SecurityPaths) -> dict[str, Any] | None:
    try:
        doc = json.loads(p.accounts.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{p.accounts} cannot be read as JSON: {exc}") from None
    if (not isinstance(doc, dict) or doc.get("version") != _ACCOUNTS_VERSION or not isinstance(doc.get("accounts"), dict)
            or not isinstance(doc.get("tls"), bool)):
        raise SecurityError(f"{p.accounts} is not a tinyfleet accounts file (version {_ACCOUNTS_VERSION})")
    for name, acc in doc["accounts"].items():
        if not isinstance(acc, dict) or acc.get("role") not in ("device", "server"):
            raise SecurityError(f"{p.accounts}: account {name!r} has no valid role")
        try:
            _check_account_name(name)
            if acc["role"] == "device":
                check_name(str(acc.get("fleet")), what="fleet name")
        except DeviceIdError as exc:
            raise SecurityError(f"{p.accounts}: {exc}") from None
    return doc


def _write_accounts(p: SecurityPaths, doc: dict[str, Any]) -> None:
    _write_private(p.accounts, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _write_private(path: Path, text: str | bytes) -> None:
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


@contextlib.contextmanager
def _locked(p: SecurityPaths) -> Iterator[None]:
    """Serialize enrolments of one directory (two `enroll` commands at once must not lose an account)."""
    try:
        p.root.mkdir(parents=True, exist_ok=True)
        lock = open(p.lock, "a")
    except OSError as exc:  # e.g. a run directory below a regular file, or a read-only disk
        raise SecurityError(f"{p.root}: cannot create the broker's security files ({exc.strerror or exc})") from None
    with lock as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _opt(path: Path | None) -> str | None:
    return str(path) if path is not None else None


# ---------------------------------------------------------------------------------- PKI
_VALID_DAYS = 825  # the longest lifetime common TLS clients accept for leaf certificates


def make_pki(directory: str | Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> SecurityPaths:
    """Create a private CA and the broker's server certificate (EC P-256) unless they exist.

    Why a private CA: the broker only listens on loopback, so no public CA could vouch for it; the
    devices get ``ca.crt`` at enrolment and trust nothing else for this broker.
    """
    p = SecurityPaths(Path(directory))
    if p.ca_cert.is_file() and p.ca_key.is_file() and p.server_cert.is_file() and p.server_key.is_file():
        return p
    x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID = _crypto()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tinyfleet broker CA {secrets.token_hex(4)}")])
    now = dt.datetime.now(dt.timezone.utc)
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    _write_private(p.ca_key, _key_pem(ca_key, serialization))
    _write_public(p.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _issue(p, "localhost", p.server_cert, p.server_key, server_hosts=hosts)
    return p


def issue_client_certificate(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Sign a client certificate with CN=`name` by the broker's CA; returns (cert, key) paths."""
    p = SecurityPaths(Path(directory))
    if not p.ca_key.is_file():
        raise SecurityError(f"{p.ca_key} is missing: the broker directory was not initialized with TLS")
    _check_account_name(name)
    _issue(p, name, p.client_cert(name), p.client_key(name), server_hosts=())
    return p.client_cert(name), p.client_key(name)


def _issue(p: SecurityPaths, cn: str, cert_path: Path, key_path: Path, *, server_hosts: tuple[str, ...]) -> None:
    import ipaddress

    x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID = _crypto()
    try:
        ca_key = serialization.load_pem_private_key(p.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise SecurityError(f"the CA in {p.pki} cannot be loaded: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                              critical=False))
    if server_hosts:
        sans: list[Any] = []
        for h in server_hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = (builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    _write_private(key_path, _key_pem(key, serialization))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _key_pem(key: Any, serialization: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_public(path: Path, data: bytes) -> None:
    _write_private(path, data)
    os.chmod(path, 0o644)


def _crypto() -> tuple[Any, ...]:
    """Import `cryptography` only when TLS is used (devices without TLS never need it)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise SecurityError("TLS needs the 'cryptography' package (pip install cryptography)") from None
    return x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID

