"""Entry point of the `tinyfleet` console script: the command groups and the CLI's error edge.

User mistakes raise `TinyFleetError` subclasses anywhere below; `TinyFleetGroup.invoke` turns them
into one stderr line (`error: <what and where>`) and the error's exit code: 0 ok, 1 failure, 2 usage.
Why inside Typer (a click group) and not around `app()`: so that Typer's own test runner
(`typer.testing.CliRunner`) sees the real exit codes, and Ctrl-C is handled before click turns it
into "Aborted!". Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import click  # noqa: E402
import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from firmware_models.exceptions import TinyFleetError  # noqa: E402
from tinyfleet import config  # noqa: E402
from tinyfleet.cli import (  # noqa: E402
    broker,
    demo,
    devices,
    doctor,
    federate,
    firmware,
    models,
    registry,
    serve,
)


class TinyFleetGroup(TyperGroup):
    """The root command group: one line on stderr and the error's exit code for every user mistake."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TinyFleetError as exc:
            click.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    name="tinyfleet",
    cls=TinyFleetGroup,
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
app.add_typer(serve.app, name="serve")
app.add_typer(firmware.app, name="firmware")
app.command(name="doctor")(doctor.doctor)


def main() -> None:
    """Run the CLI (the console script's entry point)."""
    app()


if __name__ == "__main__":
    main()
