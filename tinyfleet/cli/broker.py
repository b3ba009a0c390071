"""`tinyfleet broker`: start, stop and inspect a private Mosquitto managed by tinyfleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from platformdirs import user_data_dir

from devices.broker import BrokerError, MosquittoBroker, read_state
from tinyfleet.cli.output import JSON_HELP, err, print_json, table

app = typer.Typer(
    help="Manage a private Mosquitto broker (config, data, PID file under --dir).\n\n"
    "Example: tinyfleet broker start --dir ./mq --json",
    no_args_is_help=True,
)

DirOption = Annotated[Path, typer.Option("--dir", help="Broker directory (config, data, PID, log).",
                                         file_okay=False)]


def default_dir() -> Path:
    """The broker directory used when --dir is not given."""
    return Path(user_data_dir("tinyfleet")) / "broker"


@app.command()
def start(
    directory: DirOption = default_dir(),
    port: Annotated[int | None, typer.Option(help="TCP port; default: a free one.", min=1, max=65535)] = None,
    host: Annotated[str, typer.Option(help="Loopback address to bind.")] = "127.0.0.1",
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Start a private Mosquitto in DIR; prints host, port and pid.

    Example: tinyfleet broker start --dir ./mq --json
    """
    running = read_state(directory)
    if running is not None:
        raise BrokerError(f"a broker already runs from {directory} (pid {running.pid}, {running.url})")
    info = MosquittoBroker(directory, host=host, port=port, persistence=True).start()
    data = {"host": info.host, "port": info.port, "pid": info.pid, "url": info.url, "dir": str(directory)}
    if json_out:
        print_json(data)
    else:
        err.print(f"started Mosquitto pid {info.pid} at {info.url} (dir {directory})")
        print(info.url)


@app.command()
def stop(
    directory: DirOption = default_dir(),
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Stop the private Mosquitto of DIR (by its PID).

    Example: tinyfleet broker stop --dir ./mq
    """
    info = read_state(directory)
    if info is None:
        raise BrokerError(f"no broker runs from {directory}")
    MosquittoBroker(directory, host=info.host, port=info.port).stop()
    if json_out:
        print_json({"stopped": True, "pid": info.pid})
    else:
        err.print(f"stopped Mosquitto pid {info.pid}")


@app.command()
def status(
    directory: DirOption = default_dir(),
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Say whether the private Mosquitto of DIR runs, and where.

    Example: tinyfleet broker status --dir ./mq --json
    """
    info = read_state(directory)
    data = {"running": info is not None, "dir": str(directory)}
    if info is not None:
        data.update(host=info.host, port=info.port, pid=info.pid, url=info.url)
    if json_out:
        print_json(data)
    elif info is None:
        print(f"not running (dir {directory})")
    else:
        table("broker", ["running", "url", "pid", "dir"], [[True, info.url, info.pid, directory]])
