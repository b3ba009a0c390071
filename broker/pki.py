"""A private CA for the broker's TLS listener: server and per-account client certificates (EC P-256).

Why a private CA: the broker only listens on loopback, so no public CA could vouch for it; the
devices get ``ca.crt`` at enrolment and trust nothing else for this broker. ``cryptography`` is
imported lazily, so brokers without TLS never need it.

Revocation: a rotated or revoked account's certificate serial goes to ``revoked.json`` and into a
CRL (``crl.pem``, signed by the CA) that Mosquitto reads through ``crlfile`` and re-reads on SIGHUP
(measured on 2.0.11: a revoked certificate's next handshake fails with "certificate verify failed").
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

from broker.exceptions import SecurityError
from broker.files import SecurityPaths, check_account_name, write_private, write_public

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
    now = dt.datetime.now(dt.UTC)
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
    write_private(p.ca_key, _key_pem(ca_key, serialization))
    write_public(p.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _issue(p, "localhost", p.server_cert, p.server_key, server_hosts=hosts)
    return p


def issue_client_certificate(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Sign a client certificate with CN=`name` by the broker's CA; returns (cert, key) paths."""
    p = SecurityPaths(Path(directory))
    if not p.ca_key.is_file():
        raise SecurityError(f"{p.ca_key} is missing: the broker directory was not initialized with TLS")
    check_account_name(name)
    _issue(p, name, p.client_cert(name), p.client_key(name), server_hosts=())
    return p.client_cert(name), p.client_key(name)


def issue_throwaway_certificate(directory: str | Path, name: str, dest: Path) -> tuple[Path, Path, int]:
    """A client certificate for CN=`name` written to `dest` (not the account's files); returns (cert, key, serial).

    Used once, to take over and so end a revoked device's live TLS session (`broker.eviction`); its
    serial is revoked right after.
    """
    p = SecurityPaths(Path(directory))
    check_account_name(name)
    cert, key = dest / f"{name}.crt", dest / f"{name}.key"
    _issue(p, name, cert, key, server_hosts=())
    serial = certificate_serial(cert)
    assert serial is not None
    return cert, key, serial


def _issue(p: SecurityPaths, cn: str, cert_path: Path, key_path: Path, *, server_hosts: tuple[str, ...]) -> None:
    import ipaddress

    x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID = _crypto()
    try:
        ca_key = serialization.load_pem_private_key(p.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise SecurityError(f"the CA in {p.pki} cannot be loaded: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
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
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(key_path, _key_pem(key, serialization))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _key_pem(key: Any, serialization: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


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


def certificate_serial(cert_path: str | Path) -> int | None:
    """The serial number of a PEM certificate, or None when the file is missing or unreadable."""
    x509 = _crypto()[0]
    try:
        return int(x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).serial_number)
    except (OSError, ValueError):
        return None


def revoke_serials(directory: str | Path, serials: dict[int, str]) -> Path:
    """Add ``{serial: account name}`` to the revoked list and re-sign the CRL; returns the CRL path.

    The caller reloads the broker (SIGHUP) so that Mosquitto reads the new CRL.
    """
    p = SecurityPaths(Path(directory))
    known = _revoked(p)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for serial, name in serials.items():
        known.setdefault(str(serial), {"name": name, "revoked": now})
    write_private(p.revoked, json.dumps(known, indent=2, sort_keys=True) + "\n")
    return write_crl(directory)


def write_crl(directory: str | Path) -> Path:
    """(Re)write ``crl.pem`` listing every revoked serial (an empty CRL when none): Mosquitto needs the file."""
    x509, hashes, serialization, *_ = _crypto()
    p = SecurityPaths(Path(directory))
    try:
        ca_key = serialization.load_pem_private_key(p.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise SecurityError(f"the CA in {p.pki} cannot be loaded: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=_VALID_DAYS)))
    for serial, entry in sorted(_revoked(p).items()):
        when = dt.datetime.fromisoformat(entry["revoked"]) if isinstance(entry, dict) else now
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(int(serial))
                                                  .revocation_date(when).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    write_public(p.crl, crl.public_bytes(serialization.Encoding.PEM))
    return p.crl


def _revoked(p: SecurityPaths) -> dict[str, dict[str, str]]:
    try:
        doc = json.loads(p.revoked.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{p.revoked} cannot be read as JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SecurityError(f"{p.revoked} is not a list of revoked serials")
    return doc
