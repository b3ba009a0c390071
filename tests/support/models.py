"""Model-test helpers: the real console script and the hand-counted figures of the tiny CNN fixture.

The fixtures themselves (`sine_build`, `tiny_cnn_tflite`) live in tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINYFLEET = str(Path(sys.executable).with_name("tinyfleet"))


@dataclass
class SineBuild:
    """Result of the session's `tinyfleet models build sine` run."""

    directory: Path
    stdout: str
    stderr: str
    returncode: int
    card: dict[str, Any]


def run_cli(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run the real `tinyfleet` console script in a subprocess (no TTY, so no progress bar)."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([TINYFLEET, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


# Hand-computed figures of `tiny_cnn_tflite` (see its docstring).
TINY_CNN_MACS = {"CONV_2D": 6 * 6 * 4 * (3 * 3 * 2), "DEPTHWISE_CONV_2D": 3 * 3 * 4 * (3 * 3),
                 "FULLY_CONNECTED": 5 * 36}
TINY_CNN_PARAMS = (4 * 3 * 3 * 2 + 4) + (3 * 3 * 4 + 4) + (36 * 5 + 5)
