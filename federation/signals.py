"""SIGTERM that unwinds: `kill <pid>` of a run stops what the run started (brokers, device groups, processes).

Python's default SIGTERM handler ends the interpreter at once, without unwinding `with` blocks:
a `federate run --simulate` killed that way left its private Mosquitto running (re-parented to
init), and a hierarchical deployment its SuperLink, SuperNodes and site brokers. Every command
that starts processes runs inside `sigterm_unwinds()` instead.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into `SystemExit(143)` while the block runs, so its `with` blocks clean up.

    Only the main thread may set a signal handler; elsewhere this does nothing. A second SIGTERM
    during the clean-up is ignored (one is enough: let the clean-up finish). Also usable as a
    decorator (`contextlib.contextmanager` objects are `ContextDecorator`s).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
