"""`devices` imports and runs with TensorFlow, Keras, Flower and `cryptography` unavailable (a gateway's install)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent("""
    import sys
    for name in ("tensorflow", "keras", "flwr", "tf_keras", "cryptography"):
        sys.modules[name] = None  # any `import name` now raises ImportError
""")


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in which TensorFlow, Keras, Flower and cryptography cannot be imported."""
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_blocking_works() -> None:
    proc = run_blocked("import tensorflow")
    assert proc.returncode != 0 and "import of tensorflow halted" in proc.stderr


def test_learner_modules_import_and_run_without_tensorflow_keras_flower() -> None:
    proc = run_blocked("""
        import numpy as np
        import devices.learning.drift, devices.exceptions, devices.learning.head, devices.learning.learner
        import devices.learning.fit, devices.wire.sparse
        from devices.learning.head import MLPHead
        from devices.learning.learner import OnlineLearner
        from devices.wire.sparse import top_p_decode, top_p_encode

        learner = OnlineLearner(MLPHead.init([1, 8, 1], kind="regression", seed=0))
        x = np.linspace(-3, 3, 20, dtype=np.float32)[:, None]
        old = learner.head.get_weights()
        print(learner.train(x, np.sin(x), 40)["num-examples"])
        i, v = top_p_encode(learner.head.weights_[0] - old[0], 0.5)
        print(top_p_decode(i, v, old[0].shape).shape)
        loaded = sorted(m for m, mod in sys.modules.items()
                        if mod is not None and m.split(".")[0] in ("tensorflow", "keras", "flwr"))
        print("heavy:", loaded)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["40", "(1, 8)", "heavy: []"]


def test_every_devices_module_imports_without_them() -> None:
    proc = run_blocked("""
        import importlib, pkgutil
        import devices
        names = sorted(m.name for m in pkgutil.walk_packages(devices.__path__, "devices."))
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m, mod in sys.modules.items() if mod is not None
                        and m.split(".")[0] in ("tensorflow", "keras", "flwr", "cryptography", "broker"))
        print(len(names), "heavy:", loaded)
    """)
    assert proc.returncode == 0, proc.stderr
    count, rest = proc.stdout.strip().split(" ", 1)
    assert int(count) >= 20 and rest == "heavy: []"
