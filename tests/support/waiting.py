"""Waiting for a condition, never for a fixed time (tests must hold on a busy machine)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(pred: Callable[[], object], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll `pred` until it is truthy or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
