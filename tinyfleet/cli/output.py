"""Output conventions shared by every command.

stdout carries results only: a rich table for people, or exactly one JSON document with `--json`.
Human messages, progress bars and warnings go to stderr. Progress bars appear only on a TTY.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from firmware_models.card import json_default

out = Console()
err = Console(stderr=True)

JSON_HELP = "Print one JSON document on stdout (nothing else)."


def print_json(data: Any) -> None:
    """Write `data` as JSON to the real stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a rich table of `rows` on stdout."""
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(v) for v in r))
    out.print(t)


@contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A progress display on stderr, shown only when stderr is a terminal."""
    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=err, disable=not (enabled and err.is_terminal), transient=False)
    with p:
        yield p


def quiet_logs(verbose: bool) -> None:
    """Keep Flower's per-round INFO lines and device chatter off the terminal unless --verbose."""
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("flwr").setLevel(level)
    logging.getLogger("federation").setLevel(level)
    logging.getLogger("tinyfleet.devices").setLevel(level if verbose else logging.ERROR)


def run_until(duration: float | None) -> None:
    """Block until `duration` seconds have passed (forever when None) or Ctrl-C; background threads
    (agents, listeners) do the work meanwhile."""
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:
        err.print("stopping")
