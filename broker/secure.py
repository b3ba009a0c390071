"""Harden the private Mosquitto: per-account passwords, per-device ACLs, size limits, optional TLS.

Who can do what (docs/reliability.md, "Security model"):

* nobody anonymous (``allow_anonymous false``);
* a **device** account (user name == device id == MQTT client id) may write only its own
  ``td``, ``presence``, ``telemetry`` and ``result`` topics and read only its own ``task`` topic,
  in the one fleet it was enrolled in;
* a **server** account (coordinator, registry listener, CLI) reads and writes ``tinyfleet/v1/#``.

Why ``use_username_as_clientid``: ``%c`` and client ids are spoofable, and a device that connects
with another device's client id takes over (and disconnects) that device's session; forcing the
client id to the authenticated user name makes that impossible. The price: two processes that share
one account kick each other off, so every concurrently running server process needs its own server
account (`broker.accounts.enroll_server`). Why ``max_packet_size`` and not ``message_size_limit``:
with MQTT v5 clients Mosquitto 2.0.11 answers an oversize QoS 1 PUBLISH with an invalid PUBACK 0x95
and paho enters a reconnect loop (shared notes, mqtt-security.md).

Accounts and passwords: `broker.accounts`; the ACL file: `broker.acl`; the TLS CA: `broker.pki`;
where the files live: `broker.files`.

With TLS the client certificate *is* the account: ``use_identity_as_username`` makes the
certificate's CN (= the account name, `broker.pki`) the MQTT user name, so device A's certificate
with device B's user name and password logs in as A (it was B before). Mosquitto then no longer
checks the password on that listener; a certificate is revoked through the CRL (``crlfile``,
`broker.pki.revoke_serials`) when its account is rotated or revoked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from broker.accounts import Enrollment, enroll_server
from broker.acl import write_acl
from broker.exceptions import SecurityError
from broker.files import (
    ACCOUNTS_VERSION,
    SERVER_USER,
    SecurityPaths,
    is_secured,
    locked,
    read_accounts,
    uses_tls,
    write_accounts,
    write_private,
)
from broker.pki import make_pki, write_crl
from broker.process import MosquittoBroker
from devices.wire.protocol import DEFAULT_MAX_FRAME_BYTES

DEFAULT_MAX_PACKET_BYTES = DEFAULT_MAX_FRAME_BYTES + 64 * 1024
"""The largest protocol frame (4 MiB) plus room for the MQTT header and properties."""


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
        with locked(p):
            accounts = read_accounts(p)
            if accounts is not None:
                if bool(accounts["tls"]) != self.tls:
                    was = "with" if accounts["tls"] else "without"
                    raise SecurityError(f"{p.root} was initialized {was} TLS; start it the same way or use a new "
                                        "--dir (switching would strand the enrolled devices)")
                return None
            p.root.mkdir(parents=True, exist_ok=True)
            os.chmod(p.root, 0o700)
            write_private(p.passwd, "")
            if self.tls:
                make_pki(self.directory)
                write_crl(self.directory)
            write_accounts(p, {"version": ACCOUNTS_VERSION, "tls": self.tls, "accounts": {}})
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
                      f"crlfile {p.crl}", "tls_version tlsv1.2", "require_certificate true",
                      "use_identity_as_username true"]
        return "\n".join(lines)

    def broker(self, *, host: str = "127.0.0.1", port: int | None = None, persistence: bool = False) -> MosquittoBroker:
        """Initialize if needed and return a `MosquittoBroker` that runs with this configuration."""
        self.initialize()
        write_acl(self.directory)
        if self.tls and not self.paths.crl.is_file():  # directories secured before CRLs existed get an empty one
            write_crl(self.directory)
        return MosquittoBroker(self.directory, host=host, port=port, extra_config=self.extra_config(),
                               persistence=persistence, allow_anonymous=False, tls=self.tls)


def secured_broker(directory: str | Path, *, tls: bool = False, persistence: bool = False,
                   host: str = "127.0.0.1", port: int | None = None) -> MosquittoBroker:
    """A `MosquittoBroker` for `directory` with the hardened configuration (tinyfleet's default).

    The TLS choice of an already secured directory wins (switching would strand enrolled devices).
    """
    if is_secured(directory):
        tls = uses_tls(directory)
    return SecureBrokerConfig(Path(directory), tls=tls).broker(host=host, port=port, persistence=persistence)
