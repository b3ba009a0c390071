"""Entry point of the `tinyfleet` console script.

User mistakes raise `TinyFleetError` subclasses anywhere below; here they become one stderr line
(`error: <what and where>`) and the error's exit code: 0 ok, 1 failure, 2 usage. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

from firmware_models.exceptions import TinyFleetError  # noqa: E402
from tinyfleet import config  # noqa: E402
from tinyfleet.cli import (
    broker,  # noqa: E402
    demo,  # noqa: E402
    devices,  # noqa: E402
    doctor,  # noqa: E402
    federate,  # noqa: E402
    firmware,  # noqa: E402
    models,  # noqa: E402
    registry,  # noqa: E402
)

app = typer.Typer(
    name="tinyfleet",
    help="Manage TinyML fleets that learn on the device: int8 models, MQTT devices, "
    "federated meta-learning and a semantic registry.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,
)


@app.callback()
def _root(
    config_file: Annotated[Path | None, typer.Option(
        "--config", help="TOML configuration file (default: ./tinyfleet.toml if present).",
        dir_okay=False)] = None,
) -> None:
    """Settings come from tinyfleet.toml < TINYFLEET_* environment variables < flags."""
    config.set_config_path(config_file)


app.add_typer(models.app, name="models")
app.add_typer(broker.app, name="broker")
app.command(name="demo")(demo.demo)
app.add_typer(registry.app, name="registry")
app.add_typer(federate.app, name="federate")
app.add_typer(devices.app, name="devices")
app.add_typer(firmware.app, name="firmware")
app.command(name="doctor")(doctor.doctor)


def main() -> None:
    """Run the CLI, turning user errors into one line on stderr and an exit code."""
    try:
        app()
    except TinyFleetError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
