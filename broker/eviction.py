"""End a revoked account's live session on a running broker.

Why this is needed: Mosquitto 2.0.11 re-checks passwords of connected clients on SIGHUP (a client
whose account vanished from the password file is dropped at once, measured), but on a TLS
listener with ``use_identity_as_username`` it checks neither passwords nor the CRL of live
sessions: the revoked device would stay connected (with no ACL entry left, but connected). The
broker forces client id = user name, so connecting once *as* the revoked identity takes its session
over and disconnects it; the certificate used for that is minted for the purpose and revoked right
after, and the revoked device's own certificate is already in the CRL, so it cannot come back.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from broker.files import SecurityPaths
from broker.pki import issue_throwaway_certificate, revoke_serials
from broker.process import reload_broker
from devices.exceptions import DeviceLinkError
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient

log = logging.getLogger(__name__)


def evict_tls_session(directory: str | Path, name: str, address: BrokerAddress, *, timeout: float = 10.0) -> bool:
    """Take over and close `name`'s session on the TLS broker at `address`; True if the takeover connected."""
    p = SecurityPaths(Path(directory))
    with tempfile.TemporaryDirectory(prefix="tinyfleet-evict-") as tmp:
        cert, key, serial = issue_throwaway_certificate(directory, name, Path(tmp))
        try:
            client = MqttClient(address, Credentials(name, None, p.ca_cert, cert, key), client_id=name)
            client.connect(timeout=timeout)
            client.close()
            evicted = True
        except DeviceLinkError as exc:
            log.warning("could not take over %s's session on %s: %s", name, address.url, exc)
            evicted = False
        finally:
            revoke_serials(directory, {serial: f"{name} (eviction)"})
            reload_broker(directory)
    return evicted
