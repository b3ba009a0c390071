"""`tinyfleet models`: build, inspect and export int8 models."""

import typer

app = typer.Typer(help="Build, inspect and export full-int8 TFLite models.", no_args_is_help=True)
