"""The C learner and codec against their Python references, built with ASan + UBSan.

The golden vectors come from the real references: `MLPHead.sgd_steps` (numpy, float32) for the
learner, numpy's float64 solve for the ridge readout and `devices.wire.frames.decode_frame` for
every codec case; the C side (devices/c/tests/host_test.c) must reproduce them. Tolerance: max
|weight difference| <= 1e-5 after 1,000 batch-1 SGD steps, as the issue asks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices.c.build import build_host_test, run_host_test
from devices.c.files import codec_cases, frame_file_bytes, golden_codec, golden_learner, head_tensors
from devices.exceptions import HeadWeightsError
from devices.learning.head import MLPHead
from firmware_models.usecases import get_use_case
from tests.conftest import require_c_tools
from tests.support.models import SineBuild

STEPS, LR, CLIP = 1000, 0.005, 10.0


@pytest.fixture(scope="module")
def host_test(c_build_dir: Path) -> Path:
    """One ASan + UBSan build of host_test.c with room for every head below (built once)."""
    require_c_tools("gcc")
    return build_host_test(out_dir=c_build_dir, sanitize=True)


def _check(golden: bytes, exe: Path, tmp_path: Path, *, n_cases: int = 40) -> dict[str, object]:
    (tmp_path / "learner.tfb").write_bytes(golden)
    (tmp_path / "codec.bin").write_bytes(golden_codec(codec_cases(n_mutations=n_cases)))
    out = run_host_test(exe, tmp_path)
    assert "runtime error" not in str(out["stderr"]) and "AddressSanitizer" not in str(out["stderr"]), out["stderr"]
    return out


def test_sine_head_matches_numpy_after_1000_steps(sine_build: SineBuild, host_test: Path, tmp_path: Path) -> None:
    head = MLPHead.from_npz(sine_build.directory / "head.npz", kind="regression")
    data = get_use_case("sine").devices("train", 1, samples_per_device=64, seed=3)[0]
    out = _check(golden_learner(head, data.x, data.y, steps=STEPS, lr=LR, clip=CLIP, seed=3), host_test, tmp_path)
    assert out["exit"] == 0 and out["learner_ok"] is True, out
    assert out["steps"] == STEPS
    assert 0 <= float(out["max_abs_weight_diff"]) <= 1e-5  # type: ignore[arg-type]
    assert float(out["ridge_max_abs"]) <= 1e-4  # type: ignore[arg-type]


@pytest.mark.parametrize("mu,layers", [(0.5, None), (2.0, {1, 2})])
def test_fedprox_steps_match_numpy_s_proximal_sgd(sine_build: SineBuild, host_test: Path, tmp_path: Path,
                                                  mu: float, layers: set[int] | None) -> None:
    """FedProx's proximal term (a task's ``proximal-mu``) on the C learner = `MLPHead.sgd_steps(proximal_mu=...)`."""
    head = MLPHead.from_npz(sine_build.directory / "head.npz", kind="regression")
    data = get_use_case("sine").devices("train", 1, samples_per_device=64, seed=4)[0]
    golden = golden_learner(head, data.x, data.y, steps=STEPS, lr=LR, clip=CLIP, seed=4, proximal_mu=mu,
                            layers=layers, ridge_lambda=None)
    out = _check(golden, host_test, tmp_path)
    assert out["exit"] == 0 and out["learner_ok"] is True, out
    assert 0 <= float(out["max_abs_weight_diff"]) <= 1e-5  # type: ignore[arg-type]
    plain = MLPHead.from_npz(sine_build.directory / "head.npz", kind="regression")  # the term really acted
    order = np.random.default_rng(4).integers(0, len(data.x), size=STEPS)
    prox = head.copy()
    plain.sgd_steps(data.x, data.y, order, LR, clip_norm=CLIP, trainable=layers)
    prox.sgd_steps(data.x, data.y, order, LR, clip_norm=CLIP, trainable=layers, proximal_mu=mu)
    assert max(np.abs(a - b).max() for a, b in zip(plain.get_weights(), prox.get_weights(), strict=True)) > 1e-3


def test_classification_head_matches_numpy(host_test: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    head = MLPHead.init([64, 32, 5], kind="classification", seed=5)
    feats = rng.uniform(0, 1, size=(80, 64)).astype(np.float32)
    labels = rng.integers(0, 5, size=80)
    out = _check(golden_learner(head, feats, labels, steps=STEPS, lr=LR, clip=CLIP, seed=5), host_test, tmp_path)
    assert out["exit"] == 0, out
    assert float(out["max_abs_weight_diff"]) <= 1e-5  # type: ignore[arg-type]
    assert float(out["ridge_max_abs"]) <= 1e-4  # type: ignore[arg-type]


def _tanh_reference(ws: list[np.ndarray], x: np.ndarray, y: np.ndarray, order: np.ndarray) -> tuple[list, list]:
    """MLPHead._step with tanh hidden layers (d_below = (W d) * (1 - a^2)), float32, no clip."""
    ws = [w.copy() for w in ws]
    losses = []
    for i in order:
        acts = [x[i]]
        for k in range(len(ws) // 2):
            z = acts[-1] @ ws[2 * k] + ws[2 * k + 1]
            acts.append(np.tanh(z) if k < len(ws) // 2 - 1 else z)
        d = acts[-1] - y[i]
        losses.append(float(d @ d) / d.size)
        d = d * np.float32(2.0 / d.size)
        for k in range(len(ws) // 2 - 1, -1, -1):
            a = acts[k]
            below = (ws[2 * k] @ d) * (np.float32(1) - a * a) if k > 0 else None
            sd = d * np.float32(LR)
            ws[2 * k] -= a[:, None] * sd
            ws[2 * k + 1] -= sd
            d = below if below is not None else d
    return ws, losses


def test_tanh_hidden_layers_match_a_numpy_reference(host_test: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    head = MLPHead.init([3, 16, 2], kind="regression", seed=2)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    y = rng.normal(size=(50, 2)).astype(np.float32)
    order = rng.integers(0, 50, size=STEPS)
    ws, losses = _tanh_reference(head.get_weights(), x, y, order)
    tensors = head_tensors(head.get_weights()) + [("x", x), ("y", y), ("order", order.astype(np.int32)),
                                                  ("expect_losses", np.asarray(losses))]
    tensors += [(f"expect_{n}", w) for n, w in head_tensors(ws)]
    golden = frame_file_bytes(tensors, config={"lr": LR, "clip": 0.0, "kind": "regression", "activation": "tanh",
                                               "tol": 1e-5}, what="golden-tanh")
    out = _check(golden, host_test, tmp_path)
    assert out["exit"] == 0 and float(out["max_abs_weight_diff"]) <= 1e-5, out  # type: ignore[arg-type]


def test_the_c_decoder_gives_python_s_verdict_on_every_case(host_test: Path, tmp_path: Path) -> None:
    head = MLPHead.init([2, 4, 1], kind="regression", seed=0)
    x = np.zeros((4, 2), np.float32)
    out = _check(golden_learner(head, x, np.zeros((4, 1), np.float32), steps=10, lr=LR, clip=CLIP), host_test,
                 tmp_path, n_cases=1500)
    assert out["codec_ok"] is True and out["codec_mismatches"] == 0, out["stderr"]
    assert int(out["codec_cases"]) > 1500  # type: ignore[call-overload]
    assert out["roundtrip_ok"] is True


def test_golden_vectors_refuse_a_chaotic_learning_rate(sine_build: SineBuild) -> None:
    head = MLPHead.from_npz(sine_build.directory / "head.npz", kind="regression")
    data = get_use_case("sine").devices("train", 1, samples_per_device=64, seed=0)[0]
    with pytest.raises(HeadWeightsError, match="chaotic"):
        golden_learner(head, data.x, data.y, steps=STEPS, lr=0.02, clip=CLIP)


def test_c_error_names_are_the_protocols_error_codes_in_order() -> None:
    """The golden codec vectors index error codes by position: the C table must list ErrorCode's values in order."""
    import re
    from pathlib import Path

    from devices.wire.protocol import ERROR_CODES

    src = (Path(__file__).resolve().parents[2] / "devices" / "c" / "src" / "tf_codec.c").read_text()
    table = re.search(r"tf_err_names\[TF_E_COUNT\] = \{(.*?)\};", src, re.S)
    assert table is not None
    names = re.findall(r'"([^"]*)"', table.group(1))
    assert names == ["", *ERROR_CODES]
