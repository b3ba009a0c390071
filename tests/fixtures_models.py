"""Session fixtures for the model tests: one real sine build and one tiny purpose-built CNN.

The sine model is built once per session through the real console script (`tinyfleet models
build sine --quick --json`), so the CLI test and the artifact tests share one ~15 s build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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


@pytest.fixture(scope="session")
def sine_build(tmp_path_factory: pytest.TempPathFactory) -> SineBuild:
    """`tinyfleet models build sine --out DIR --quick --json`, once per session."""
    out = tmp_path_factory.mktemp("models")
    proc = run_cli("models", "build", "sine", "--out", str(out), "--quick", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads(proc.stdout)
    return SineBuild(out / "sine", proc.stdout, proc.stderr, proc.returncode, card)


# Hand-computed figures of `tiny_cnn_tflite` (see its docstring).
TINY_CNN_MACS = {"CONV_2D": 6 * 6 * 4 * (3 * 3 * 2), "DEPTHWISE_CONV_2D": 3 * 3 * 4 * (3 * 3),
                 "FULLY_CONNECTED": 5 * 36}
TINY_CNN_PARAMS = (4 * 3 * 3 * 2 + 4) + (3 * 3 * 4 + 4) + (36 * 5 + 5)


@pytest.fixture(scope="session")
def tiny_cnn_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A purpose-built int8 model with one CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED.

    Input 8x8x2 -> Conv2D(4, 3x3, valid) -> 6x6x4: 6*6*4 outputs x 3*3*2 = 2,592 MACs
    -> DepthwiseConv2D(3x3, stride 2, same) -> 3x3x4: 3*3*4 outputs x 3*3 = 324 MACs
    -> Flatten 36 -> Dense(5): 5 outputs x 36 = 180 MACs. Total 3,096 MACs, 301 parameters.
    """
    from firmware_models.convert import to_full_int8
    from firmware_models.quiet import quiet_tensorflow_env

    quiet_tensorflow_env()
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, padding="valid", activation="relu", bias_initializer="random_normal"),
        keras.layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu",
                                     bias_initializer="random_normal"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, bias_initializer="random_normal"),  # a zero bias would be dropped by the converter
    ])
    x = np.random.default_rng(1).normal(size=(64, 8, 8, 2)).astype(np.float32)
    path = tmp_path_factory.mktemp("tinycnn") / "tiny_cnn.tflite"
    path.write_bytes(to_full_int8(model, x, n_calibration=64))
    return path
