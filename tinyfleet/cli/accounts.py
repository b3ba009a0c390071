"""`tinyfleet devices enroll|revoke`: the broker accounts of devices and server processes.

Registered on the `devices` command group (tinyfleet/cli/devices.py). `revoke` is the one place an
account ends: password hash, ACL entry and key files go, the certificate goes into the CRL the
broker reads, the live session is ended, the device's retained TD and presence are cleared and its
registry record is marked revoked (docs/reliability.md, "Revocation").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from broker.process import read_state
from devices.link.address import BrokerAddress, Credentials
from devices.wire.topics import check_name
from tinyfleet import config
from tinyfleet.cli.broker import default_dir
from tinyfleet.cli.output import JSON_HELP, err, print_json, table

CLI_ACCOUNT = "fleet-cli"
"""Server account `devices list/show` (and `revoke`) enrol on the default managed broker (one per purpose)."""

FleetOption = Annotated[str | None, typer.Option(help="Fleet name (topic level; default: config/env `fleet`, else "
                                                      "'default').")]


def managed_server_credentials(broker_dir: Path | None, account: str) -> Credentials | None:
    """A server account on a secured tinyfleet-managed broker, enrolled on first use; None when open."""
    from broker.accounts import ensure_server_account
    from broker.secure import is_secured

    if broker_dir is None or not is_secured(broker_dir):
        return None
    return ensure_server_account(broker_dir, account)


def enroll(
    device_id: Annotated[str, typer.Argument(help="Device id = MQTT user name and client id: 1-64 of A-Z a-z 0-9 . _ - "
                                                        "(no / + # : or spaces).")],
    directory: Annotated[Path | None, typer.Option(
        "--dir", file_okay=False, help="Directory of a broker started by `tinyfleet broker start` (default: its "
        "default directory).")] = None,
    fleet: FleetOption = None,
    tls: Annotated[bool, typer.Option("--tls", help="Require the broker directory to use TLS (the device gets "
                                      "a client certificate signed by the broker's CA).")] = False,
    server: Annotated[bool, typer.Option("--server", help="Enrol a server account (reads/writes every fleet; "
                                         "one per concurrently running server process).")] = False,
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace the password of an enrolled account.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Create a device's broker credentials (password shown once; certificate with TLS).

    The running broker of DIR reloads its password and ACL files (SIGHUP).
    Example: tinyfleet devices enroll dev-001 --dir ./mq --fleet lab --json
    """
    from broker.accounts import enroll_device, enroll_server
    from broker.exceptions import SecurityError
    from broker.secure import is_secured, uses_tls

    directory = directory if directory is not None else default_dir()
    if not is_secured(directory):
        raise SecurityError(f"{directory} has no secured broker: run `tinyfleet broker start --dir "
                            f"{directory}` first")
    if tls and not uses_tls(directory):
        raise SecurityError(f"the broker of {directory} was secured without TLS; restart a new --dir with "
                            "`tinyfleet broker start --tls`")
    e = enroll_server(directory, device_id, rotate=rotate) if server else enroll_device(
        directory, device_id, fleet=str(config.setting("fleet", fleet)), rotate=rotate)
    running = read_state(directory)
    doc = {**e.to_json(), "broker": running.url if running else None, "reloaded": running is not None}
    if json_out:
        print_json(doc)
        return
    err.print("the password is shown once: only its hash is stored" if not server
              else f"server credentials also stored in {e.credentials_file} (mode 0600)")
    table(f"{e.role} {e.name}", ["key", "value"], [(k, v) for k, v in doc.items() if v is not None])


def revoke(
    device_id: Annotated[str, typer.Argument(help="The account to remove (device id, or a server account name).")],
    directory: Annotated[Path | None, typer.Option(
        "--dir", file_okay=False, help="Directory of a broker started by `tinyfleet broker start` (default: its "
        "default directory).")] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", file_okay=False, help="Registry store in which to mark the device revoked (default: config/env "
        "`registry`, else the default store if it exists).")] = None,
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="SPARQL endpoint of a remote registry instead (default: config/env `endpoint`).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Revoke an account for good: password and ACL entry removed, certificate added to the CRL, the connected
    device disconnected, its retained TD/presence cleared and its registry record marked revoked.

    Example: tinyfleet devices revoke dev-001 --dir ./mq --json
    """
    from broker.accounts import revoke_account

    check_name(device_id)
    directory = directory if directory is not None else default_dir()
    done = revoke_account(directory, device_id)
    doc: dict[str, Any] = {**done.to_json(), "retained_cleared": False, "registry": "not registered"}
    running = read_state(directory)
    if running is not None:
        address = BrokerAddress(running.host, running.port, running.tls)
        if running.tls:  # Mosquitto re-checks live TLS sessions against neither passwords nor the CRL
            from broker.eviction import evict_tls_session

            evict_tls_session(directory, device_id, address)
        if done.role == "device" and done.fleet:
            doc["retained_cleared"] = _clear_retained(address, directory, str(done.fleet), device_id)
    doc["registry"] = _mark_revoked_in_registry(device_id, store, endpoint)
    if json_out:
        print_json(doc)
        return
    table(f"revoked {done.role} {device_id}", ["key", "value"], [(k, v) for k, v in doc.items() if v is not None])


def _clear_retained(address: BrokerAddress, directory: Path, fleet: str, device_id: str) -> bool:
    """Clear the revoked device's retained TD and presence, so listeners stop seeing a device that is gone."""
    from devices.link.client import MqttClient
    from devices.wire.topics import device_topic

    creds = managed_server_credentials(directory, CLI_ACCOUNT)
    with MqttClient(address, creds, client_id=creds.username if creds and creds.username else CLI_ACCOUNT) as mq:
        for topic in (device_topic(fleet, device_id, "td"), device_topic(fleet, device_id, "presence")):
            mq.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    return True


def _mark_revoked_in_registry(device_id: str, store: Path | None, endpoint: str | None) -> str:
    """"revoked" / "not registered" / "no registry": an absent default store is not created for this."""
    from registry.ingest_device import mark_device_revoked
    from registry.store import default_store_path, open_store

    endpoint = config.setting("endpoint", endpoint)
    path = config.path_setting("registry", store)
    if endpoint is None and path is None:
        path = default_store_path()
        if not path.exists():
            return "no registry"
    with open_store(path, endpoint=endpoint, update_endpoint=config.setting("update_endpoint")) as st:
        return "revoked" if mark_device_revoked(st, device_id) else "not registered"
