"""Site brokers joined to a central broker by Mosquitto bridges: descriptions go up, tasks never cross.

Each site broker forwards, one way (``out``), what the registry needs to see every device:
``td`` and ``presence`` (retained, QoS 1) and ``telemetry`` (QoS 0) of its fleet. Nothing comes
back down, and nothing else goes up: tasks and results stay on the site, where the gateway is the
only server; between sites the model moves only through Flower (gateway → SuperLink → gateway).
The central broker enforces the same from its side: the bridge logs in with a ``bridge`` account
that may write those three kinds and nothing else (`broker.accounts.enroll_bridge`).

The bridge is plain Mosquitto configuration, appended to the site broker's own
(https://mosquitto.org/man/mosquitto-conf-5.html, "Configuring Bridges"); with TLS on the central
broker it presents the bridge account's client certificate.
"""

from __future__ import annotations

from pathlib import Path

from broker.files import SecurityPaths, is_secured
from devices.link.address import BrokerAddress
from devices.wire.topics import BRIDGED_KINDS, ROOT, check_name

QOS = {"td": 1, "presence": 1, "telemetry": 0}


def bridge_account(site: str) -> str:
    """The central broker's account name for the bridge of `site`."""
    return check_name(f"bridge-{site}", what="bridge account")


def central_bridge(central: BrokerAddress, central_dir: Path | None, *, site: str, fleet: str) -> str:
    """Mosquitto configuration lines that bridge one site broker up to `central`.

    Enrols (or re-keys) the site's bridge account on the central broker when `central_dir` is a
    secured tinyfleet broker directory; an open central broker needs no account.
    """
    check_name(fleet, what="fleet name")
    name = bridge_account(site)
    lines = [f"connection {name}", f"address {central.host}:{central.port}", f"remote_clientid {name}",
             "cleansession false", "bridge_protocol_version mqttv311", "try_private false",
             "notifications false", "restart_timeout 1 10", "start_type automatic"]
    if central_dir is not None and is_secured(central_dir):
        from broker.accounts import enroll_bridge, list_accounts, load_credentials

        enroll_bridge(central_dir, name, fleet=fleet, rotate=name in list_accounts(central_dir))
        creds = load_credentials(SecurityPaths(Path(central_dir)).credentials_dir / f"{name}.json")
        lines += [f"remote_username {creds.username}", f"remote_password {creds.password}"]
        if creds.ca is not None:
            lines += [f"bridge_cafile {creds.ca}", "bridge_insecure false"]
            if creds.cert is not None and creds.key is not None:
                lines += [f"bridge_certfile {creds.cert}", f"bridge_keyfile {creds.key}"]
    lines += [f"topic {ROOT}/{fleet}/+/{kind} out {QOS[kind]}" for kind in sorted(BRIDGED_KINDS)]
    return "\n".join(lines) + "\n"
