"""`tinyfleet broker`: start, stop and inspect a private Mosquitto managed by tinyfleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from platformdirs import user_data_dir

from broker.exceptions import BrokerError, SecurityError
from broker.files import SERVER_USER, SecurityPaths
from broker.process import MosquittoBroker, read_state
from broker.secure import is_secured, secured_broker, uses_tls
from tinyfleet.cli.output import JSON_HELP, err, print_json, table

app = typer.Typer(
    help="Manage a private Mosquitto broker (config, data, PID file under --dir); secured by default.\n\n"
    "Example: tinyfleet broker start --dir ./mq --json",
    no_args_is_help=True,
)

def default_dir() -> Path:
    """The broker directory used when --dir is not given."""
    return Path(user_data_dir("tinyfleet")) / "broker"


# default_factory: the default is read when the command runs (not when the module is imported), so the environment
# of that run (XDG_DATA_HOME, HOME) decides it
DirOption = Annotated[Path, typer.Option("--dir", help="Broker directory (config, data, PID, log).",
                                         file_okay=False, default_factory=default_dir,
                                         show_default=str(default_dir()))]


@app.command()
def start(
    directory: DirOption,
    port: Annotated[int | None, typer.Option(help="TCP port; default: a free one.", min=1, max=65535)] = None,
    host: Annotated[str, typer.Option(help="Loopback address to bind.")] = "127.0.0.1",
    secure: Annotated[bool, typer.Option("--secure/--insecure", help="Secured (default): no anonymous access, "
                                         "per-device passwords and ACLs, size limits, a server account (enrol "
                                         "devices with `tinyfleet devices enroll`). --insecure starts an open "
                                         "broker for debugging; a DIR that was secured once always starts "
                                         "secured.")] = True,
    tls: Annotated[bool, typer.Option("--tls", help="Serve mqtts with a private CA; clients need the CA, a "
                                      "client certificate and a password.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Start a private Mosquitto in DIR (secured by default); prints host, port and pid.

    Example: tinyfleet broker start --dir ./mq --tls --json
    """
    running = read_state(directory)
    if running is not None:
        raise BrokerError(f"a broker already runs from {directory} (pid {running.pid}, {running.url})")
    if tls and not secure:
        raise typer.BadParameter("--tls cannot be combined with --insecure (TLS without passwords and ACLs is "
                                 "not offered)", param_hint="--tls")
    if not secure and is_secured(directory):
        raise SecurityError(f"{directory} holds a secured broker (enrolled accounts); --insecure would open it "
                            "to anyone: use another --dir for an open debugging broker")
    data: dict[str, object] = {}
    if secure:
        # the TLS choice of an already secured directory is fixed at its first start
        if tls and is_secured(directory) and not uses_tls(directory):
            raise SecurityError(f"{directory} was secured without TLS; start it the same way or use a new --dir "
                                "(switching would strand the enrolled devices)")
        broker = secured_broker(directory, tls=tls, host=host, port=port, persistence=True)
        info = broker.start()
        data.update(_security_info(directory))
    else:
        info = MosquittoBroker(directory, host=host, port=port, persistence=True).start()
        data.update(secure=False, tls=False)
    data = {"host": info.host, "port": info.port, "pid": info.pid, "url": info.url, "dir": str(directory), **data}
    if json_out:
        print_json(data)
    else:
        err.print(f"started Mosquitto pid {info.pid} at {info.url} (dir {directory})")
        if data["secure"]:
            err.print(f"secured: anonymous access refused; server account credentials in {data['server_credentials']}")
        else:
            err.print("INSECURE: anyone on this machine may connect, publish and subscribe (debugging only)")
        print(info.url)


def _security_info(directory: Path) -> dict[str, object]:
    """What `start` and `status` say about a directory's security (paths only, never secrets)."""
    if not is_secured(directory):
        return {"secure": False, "tls": False}
    paths = SecurityPaths(directory)
    tls = uses_tls(directory)
    return {"secure": True, "tls": tls, "server_credentials": str(paths.credentials_dir / f"{SERVER_USER}.json"),
            "ca": str(paths.ca_cert) if tls else None}


@app.command()
def stop(
    directory: DirOption,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Stop the private Mosquitto of DIR (by its PID).

    Example: tinyfleet broker stop --dir ./mq
    """
    info = read_state(directory)
    if info is None:
        raise BrokerError(f"no broker runs from {directory}")
    MosquittoBroker(directory, host=info.host, port=info.port, tls=info.tls).stop()
    if json_out:
        print_json({"stopped": True, "pid": info.pid})
    else:
        err.print(f"stopped Mosquitto pid {info.pid}")


@app.command()
def status(
    directory: DirOption,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Say whether the private Mosquitto of DIR runs, and where.

    Example: tinyfleet broker status --dir ./mq --json
    """
    info = read_state(directory)
    data: dict[str, object] = {"running": info is not None, "dir": str(directory), **_security_info(directory)}
    if info is not None:
        data.update(host=info.host, port=info.port, pid=info.pid, url=info.url)
    if json_out:
        print_json(data)
    elif info is None:
        print(f"not running (dir {directory}; {'secured' if data['secure'] else 'open'})")
    else:
        rows: list[list[object]] = [
            ["running", True], ["url", info.url], ["pid", info.pid], ["dir", directory],
            ["secured", "yes: anonymous access refused" if data["secure"] else "NO (started with --insecure)"]]
        if data["secure"]:
            rows += [["server credentials", data["server_credentials"]]] + ([["CA", data["ca"]]] if data["tls"] else [])
        table("broker", ["key", "value"], rows)
