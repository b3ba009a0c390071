"""Where a broker is and who we are to it: the one description of a broker address and credentials.

Every MQTT connection in tinyfleet (device agents, the fleet client, the coordinator's transport,
the registry's presence listener) is described by a `BrokerAddress` plus `Credentials`, parsed
from one URL form (``mqtt://host:port`` or ``mqtts://host:port``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devices.exceptions import BrokerUrlError


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker listens; `tls` means ``mqtts://``."""

    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://host[:port]`` (default 1883) or ``mqtts://host[:port]`` (default 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        raise BrokerUrlError(f"broker URL {url!r} must look like mqtt://host:port or mqtts://host:port "
                             "(no topic in the URL)")
    try:
        port = parts.port
    except ValueError:
        raise BrokerUrlError(f"broker URL {url!r} has an invalid port") from None
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class Credentials:
    """User name/password and TLS files. The user name defaults to the client id (ACLs use ``%u``)."""

    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
