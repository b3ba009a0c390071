"""The `tinyfleet` command line: one module per command group (Typer's one-file-per-command style)."""
