"""Shared fixtures: a real Mosquitto, a real Oxigraph SPARQL server, one real sine build, a tiny CNN.

Also the Hypothesis settings of the whole suite, the same on every machine: the "tinyfleet"
profile is derandomized (each property runs the same examples every time, so a red run is a
reproducible run), keeps no example database and has no deadline (a busy 2-core machine must not
turn slowness into a failure). `make fuzz` selects the "fuzz" profile instead: random, ten times
the examples, a local example database and deadlines, to look for new bugs (tests/support/fuzzing.py).
Helpers that are not fixtures live in tests/support/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from broker.process import BrokerInfo, MosquittoBroker, find_mosquitto  # noqa: E402
from tests.support.cli import CONFIG_VARIABLES, invoke  # noqa: E402
from tests.support.models import SineBuild, run_cli  # noqa: E402
from tests.support.registry import OxigraphServer, oxigraph_binary  # noqa: E402

settings.register_profile("tinyfleet", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", derandomize=False, max_examples=1000, deadline=10_000, print_blob=True,
                          database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tinyfleet")  # `pytest --hypothesis-profile=fuzz` (make fuzz) replaces it afterwards


def _require_mosquitto() -> None:
    """Fail without Mosquitto, on every machine alike: `make test` installs it (`make system-deps`)."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: `make system-deps` (or apt-get install mosquitto) installs it")


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Result]:
    """`tests.support.cli.invoke` in a clean configuration: no TINYFLEET_* settings from the shell, and an empty
    working directory of its own (no tinyfleet.toml is found there, and nothing is written into the test's tmp_path
    by accident)."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    return invoke


def _on_path(program: str) -> Callable[[], bool]:
    return lambda: shutil.which(program) is not None


C_TOOLS: dict[str, tuple[str, Callable[[], bool]]] = {
    # name a test asks for: (the Debian package(s) `make system-deps` installs, how to tell it is there)
    "gcc": ("gcc", _on_path("gcc")),
    "libmosquitto": ("libmosquitto-dev", lambda: Path("/usr/include/mosquitto.h").is_file()),
    "make": ("make", _on_path("make")),
    "clang": ("clang + libclang-rt-dev (libFuzzer)", lambda: shutil.which("clang") is not None and any(
        Path("/usr/lib").glob("llvm-*/lib/clang/*/lib/*/libclang_rt.fuzzer*.a"))),
    "arm": ("gcc-arm-none-eabi + libnewlib-arm-none-eabi", lambda: shutil.which("arm-none-eabi-gcc") is not None
            and Path("/usr/lib/arm-none-eabi/newlib").is_dir()),
    "qemu": ("qemu-system-arm", _on_path("qemu-system-arm")),
}


def require_c_tools(*names: str) -> None:
    """Fail, the same way on every machine, when a tool the C device tests need is missing.

    The C tests are part of `make test`, and `make system-deps` installs every tool they use, so a
    missing one is a broken set-up to fix, not a reason to skip (a skip would hide the C device
    from a developer's run while CI still fails on it).
    """
    missing = [C_TOOLS[n][0] for n in names if not C_TOOLS[n][1]()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: the C device tests need it; run `make system-deps` "
                    "(it installs every tool the tests use)", pytrace=False)


@pytest.fixture(scope="session")
def c_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every C build of the session (devices.c.build caches by content hash)."""
    return tmp_path_factory.mktemp("c-build")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A private Mosquitto for the test session, stopped by PID afterwards."""
    _require_mosquitto()
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    info = broker.start()
    try:
        yield info
    finally:
        broker.stop()


@pytest.fixture()
def fresh_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of a test's own (for tests that restart or reconfigure it)."""
    _require_mosquitto()
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture()
def secured(tmp_path: Path) -> Iterator[tuple[Path, MosquittoBroker]]:
    """A secured broker of a test's own (the default: accounts, ACL) in `tmp_path/mq`: (its directory, it)."""
    from broker.secure import secured_broker

    _require_mosquitto()
    d = tmp_path / "mq"
    broker = secured_broker(d)
    broker.start()
    try:
        yield d, broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def sine_build(tmp_path_factory: pytest.TempPathFactory) -> SineBuild:
    """`tinyfleet models build sine --out DIR --quick --json`, once per session."""
    out = tmp_path_factory.mktemp("models")
    # the console script in its own process: TensorFlow's converter writes to file descriptor 1 from C++, and only
    # a real process shows that `--json` stdout stays one JSON document anyway
    proc = run_cli("models", "build", "sine", "--out", str(out), "--quick", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads(proc.stdout)
    return SineBuild(out / "sine", proc.stdout, proc.stderr, proc.returncode, card)


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


@pytest.fixture(scope="session")
def oxigraph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OxigraphServer]:
    """`oxigraph serve` on a free loopback port for the session, stopped by PID."""
    binary = oxigraph_binary()
    if binary is None:
        pytest.skip("oxigraph server not installed (pip install oxigraph)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path_factory.mktemp("oxigraph")
    proc = subprocess.Popen([binary, "serve", "--location", str(data), "--bind", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/query?query=ASK%7B%7D", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                said = proc.stderr.read().decode()[-500:] if proc.stderr else ""
                pytest.fail(f"oxigraph serve did not start: {said}")
            time.sleep(0.05)
    try:
        yield OxigraphServer(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
