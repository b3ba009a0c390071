"""The `tinyfleet` CLI run in-process with Typer's test runner.

The CLI's error edge lives inside the Typer app (tinyfleet/cli/main.py), so what `invoke` returns is what a user
sees: the exit code, stdout and stderr (kept apart). Exceptions other than a clean exit are not swallowed by the
runner: a bug fails the test with its traceback instead of passing as "exit 1".
A subprocess is still the right tool where the process boundary is the point (a signal, a process left behind,
the console script's own entry point, C code writing to file descriptor 1); those tests say so at the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tinyfleet.cli.main import app

# Settings the CLI reads from the environment (tinyfleet/config.py and the password variables): a test must not
# inherit them from the shell that runs pytest.
CONFIG_VARIABLES = ("TINYFLEET_CONFIG", "TINYFLEET_BROKER", "TINYFLEET_FLEET", "TINYFLEET_REGISTRY",
                    "TINYFLEET_ENDPOINT", "TINYFLEET_UPDATE_ENDPOINT", "TINYFLEET_MODELS", "TINYFLEET_USERNAME",
                    "TINYFLEET_PASSWORD", "TINYFLEET_MQTT_PASSWORD", "TINYFLEET_REGISTRY_PASSWORD")


@contextmanager
def clean_environment(cwd: Path) -> Iterator[None]:
    """No TINYFLEET_* settings from the shell and `cwd` as the working directory (so no stray tinyfleet.toml is
    read), restored afterwards; for fixtures wider than one test (the `cli` fixture does this per test)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in CONFIG_VARIABLES:
            mp.delenv(name, raising=False)
        mp.chdir(cwd)
        yield


def invoke(*args: str, input: str | None = None, env: Mapping[str, str | None] | None = None) -> Result:
    """Run `tinyfleet ARGS...` in this process; `env` adds (or, with None, removes) variables for this call only."""
    return CliRunner().invoke(app, list(args), input=input, env=env, catch_exceptions=False)


def one_line_error(result: Result, code: int, needle: str) -> None:
    """Assert the CLI failed the way a user mistake must: exit `code`, nothing on stdout, one `error:` line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
