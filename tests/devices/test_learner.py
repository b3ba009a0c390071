"""OnlineLearner on a real full-int8 backbone (LiteRT and TFLite Micro), memory accounting, fit checks.

TensorFlow is used here only to BUILD the fixture backbone; the learner itself never imports it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from devices.exceptions import HeadWeightsError, LearnerInputError, ModelDoesNotFitError
from devices.learning.head import MLPHead
from devices.learning.learner import OnlineLearner
from firmware_models.interpreters import TFLiteModel

N_CLASSES = 3
N_FEATURES = 8


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """6x6 grey images: class c lights up row band c (plus noise), a pattern a conv backbone sees."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = rng.uniform(0, 0.3, (n, 6, 6, 1)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 * c:2 * c + 2, :, 0] += 0.7
    return x, y.astype(np.int64)


@pytest.fixture(scope="module")
def backbone_bytes() -> bytes:
    """A tiny conv feature extractor 6x6x1 -> 8, converted to full int8 (built once per module)."""
    import keras

    from firmware_models.convert import to_full_int8

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(N_FEATURES, activation="relu"),
    ])
    x, _ = _images(200, seed=1)
    return to_full_int8(model, x)


@pytest.fixture()
def model_dir(tmp_path: Path, backbone_bytes: bytes) -> Path:
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "backbone.tflite").write_bytes(backbone_bytes)
    MLPHead.init([N_FEATURES, 16, N_CLASSES], kind="classification", seed=0).to_npz(d / "head.npz")
    (d / "card.json").write_text(json.dumps({"arena_bytes": 999_999, "backbone": {"arena_bytes": 1234}}))
    return d


def test_features_are_the_dequantized_int8_backbone_outputs(model_dir: Path) -> None:
    learner = OnlineLearner.from_artifacts(model_dir, kind="classification")
    assert learner.backbone is not None and learner.backbone.backend == "litert"
    x, _ = _images(5, seed=2)
    feats = learner.features(x)
    bb = learner.backbone
    manual = np.stack([bb.output.dequantize(bb.invoke(bb.input.quantize(xi[None]))).reshape(-1) for xi in x])
    assert feats.shape == (5, N_FEATURES) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, manual)
    assert learner.features(x) is feats  # frozen backbone: the second call is served from the cache


def test_tflm_backend_gives_the_same_features(model_dir: Path, backbone_bytes: bytes) -> None:
    head = MLPHead.from_npz(model_dir / "head.npz", kind="classification")
    litert = OnlineLearner(head, TFLiteModel.from_bytes(backbone_bytes, backend="litert"))
    tflm = OnlineLearner(head.copy(), TFLiteModel.from_bytes(backbone_bytes, backend="tflm"))
    x, _ = _images(20, seed=3)
    scale = litert.backbone.output.scale  # type: ignore[union-attr]
    assert np.abs(litert.features(x) - tflm.features(x)).max() <= 3 * scale + 1e-7


def test_train_adapt_evaluate_on_backbone_features(model_dir: Path) -> None:
    learner = OnlineLearner.from_artifacts(model_dir, kind="classification", lr=0.05)
    x, y = _images(60, seed=4)
    x_test, y_test = _images(60, seed=5)
    before = learner.evaluate(x_test, y_test)
    backbone_before = learner.backbone.model_bytes  # type: ignore[union-attr]
    out = learner.train(x, y, 300)
    after = learner.evaluate(x_test, y_test)
    assert out["num-examples"] == 300 and out["train-loss-last"] < out["train-loss"]
    assert after["loss"] < 0.7 * before["loss"], (before, after)
    assert after["accuracy"] >= 0.9
    assert after["num-examples"] == 60
    assert learner.backbone.model_bytes == backbone_before  # type: ignore[union-attr]
    assert learner.samples_seen_ == 300

    fresh = OnlineLearner.from_artifacts(model_dir, kind="classification", lr=0.05)
    shots = fresh.adapt(x[:9], y[:9], 45)
    assert shots["shots"] == shots["num-examples"] == 9 and shots["loss-after"] < shots["loss-before"]


def test_train_only_some_layers(model_dir: Path) -> None:
    learner = OnlineLearner.from_artifacts(model_dir, kind="classification")
    w0 = learner.head.get_weights()
    x, y = _images(10, seed=6)
    learner.train(x, y, 20, layers={1})
    np.testing.assert_array_equal(learner.head.weights_[0], w0[0])
    assert not np.array_equal(learner.head.weights_[2], w0[2])


def test_train_is_reproducible_for_a_seed(model_dir: Path) -> None:
    x, y = _images(10, seed=7)
    runs = []
    for _ in range(2):
        learner = OnlineLearner.from_artifacts(model_dir, kind="classification", seed=11)
        learner.train(x, y, 25)
        runs.append(learner.head.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stream_is_prequential(model_dir: Path) -> None:
    learner = OnlineLearner.from_artifacts(model_dir, kind="classification")
    x, y = _images(8, seed=8)
    first = learner.head.losses(learner.features(x[:1]), y[:1])[0]
    losses = list(learner.stream(zip(x, y, strict=True)))
    assert len(losses) == 8 and losses[0] == pytest.approx(first, rel=1e-6)
    assert learner.samples_seen_ == 8 and learner.last_loss_ == losses[-1]


def test_memory_report_adds_up(model_dir: Path, backbone_bytes: bytes) -> None:
    learner = OnlineLearner.from_artifacts(model_dir, kind="classification")
    rep = learner.memory_report(buffer_samples=10)
    n_params = N_FEATURES * 16 + 16 + 16 * N_CLASSES + N_CLASSES
    assert rep["arena"] == 1234  # the backbone's arena from card.json, not the whole model's
    assert rep["head_weights"] == 4 * n_params
    assert rep["gradients"] == 4 * (16 + N_CLASSES)
    assert rep["activations"] == 4 * (N_FEATURES + 16 + N_CLASSES)
    assert rep["buffer"] == 10 * 36  # int8 6x6x1 samples
    assert rep["total"] == sum(rep[k] for k in ("arena", "head_weights", "gradients", "activations", "buffer"))
    assert rep["flash"] == len(backbone_bytes) + 4 * n_params
    assert learner.memory_report(layers={1})["gradients"] == 4 * N_CLASSES


def test_sine_memory_report_without_backbone() -> None:
    learner = OnlineLearner(MLPHead.init([1, 32, 32, 1], kind="regression", seed=0))
    rep = learner.memory_report()
    assert rep == {"arena": 0, "head_weights": 4612, "gradients": 4 * 65, "activations": 4 * 66, "buffer": 4,
                   "total": 4612 + 260 + 264 + 4, "flash": 4612, "flash_backbone": 0, "flash_head": 4612}
    assert rep["total"] <= 8 * 1024


def test_arena_is_measured_with_tflm_when_no_card_says(tmp_path: Path, backbone_bytes: bytes) -> None:
    d = tmp_path / "nocard"
    d.mkdir()
    (d / "backbone.tflite").write_bytes(backbone_bytes)
    MLPHead.init([N_FEATURES, N_CLASSES], kind="classification", seed=0).to_npz(d / "head.npz")
    learner = OnlineLearner.from_artifacts(d, kind="classification")
    arena = learner.memory_report()["arena"]
    assert arena > 0 and arena % 16 == 0
    # The measured arena really is enough for TFLite Micro to run the backbone.
    tflm = TFLiteModel.from_bytes(backbone_bytes, backend="tflm", arena_size=arena)
    x, _ = _images(2, seed=9)
    assert np.all(np.isfinite(tflm.predict(x)))


def test_check_fits_refuses_a_too_small_board(model_dir: Path) -> None:
    learner = OnlineLearner.from_artifacts(model_dir, kind="classification")
    rep = learner.memory_report()
    learner.check_fits(rep["total"], rep["flash"])  # exactly enough is enough
    old = learner.head.get_weights()
    with pytest.raises(ModelDoesNotFitError, match=rf"needs {rep['total']:,} B RAM \(arena 1,234 .* but the "
                                                   rf"device has {rep['total'] - 1:,} B"):
        learner.check_fits(rep["total"] - 1, rep["flash"])
    with pytest.raises(ModelDoesNotFitError, match=r"backbone\.tflite\) does not fit: needs .* B flash"):
        learner.check_fits(10**6, 1000)
    for a, b in zip(learner.head.get_weights(), old, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_inputs_give_clear_errors(model_dir: Path, tmp_path: Path) -> None:
    learner = OnlineLearner.from_artifacts(model_dir, kind="classification")
    with pytest.raises(LearnerInputError, match=r"samples must have shape \(n, 6, 6, 1\); got \(2, 5\)"):
        learner.features(np.zeros((2, 5)))
    x, y = _images(4, seed=10)
    with pytest.raises(LearnerInputError, match="4 samples but 3 targets"):
        learner.train(x, y[:3], 5)
    with pytest.raises(LearnerInputError, match=r"class labels must be in 0\.\.2"):
        learner.train(x, y + 5, 5)
    with pytest.raises(LearnerInputError, match="steps must be a positive integer"):
        learner.train(x, y, 0)
    with pytest.raises(LearnerInputError, match="learning rate must be a positive number"):
        learner.train(x, y, 3, lr=math.nan)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "backbone.tflite").write_bytes((model_dir / "backbone.tflite").read_bytes())
    MLPHead.init([5, 3], kind="classification", seed=0).to_npz(bad / "head.npz")
    with pytest.raises(HeadWeightsError, match=r"head takes 5 inputs but the backbone .* outputs 8 features"):
        OnlineLearner.from_artifacts(bad, kind="classification")
    (bad / "head.npz").unlink()
    with pytest.raises(HeadWeightsError, match=r"head\.npz: head file not found"):
        OnlineLearner.from_artifacts(bad, kind="classification")


def test_learner_runs_a_real_backbone_without_tensorflow(model_dir: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        for name in ("tensorflow", "keras", "flwr"):
            sys.modules[name] = None
        import numpy as np
        from devices.learning.learner import OnlineLearner
        learner = OnlineLearner.from_artifacts({str(model_dir)!r}, kind="classification")
        x = np.random.default_rng(0).uniform(0, 1, (6, 6, 6, 1)).astype(np.float32)
        out = learner.train(x, np.array([0, 1, 2, 0, 1, 2]), 12)
        print(learner.backbone.backend, out["num-examples"], learner.memory_report()["arena"])
        print(sorted(m for m, mod in sys.modules.items()
                     if mod is not None and m.split(".")[0] in ("tensorflow", "keras")))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["litert 12 1234", "[]"]


def test_memory_table_of_a_models_folder(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.memory_report import main

    (model_dir / "card.json").write_text(json.dumps({"kind": "classification", "backbone": {"arena_bytes": 1234}}))
    assert main([str(model_dir.parent), "--json", "--buffer", "2"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert list(table) == ["tiny"]
    assert table["tiny"]["buffer"] == 72 and table["tiny"]["arena"] == 1234
    assert table["tiny"]["head_params"] == N_FEATURES * 16 + 16 + 16 * N_CLASSES + N_CLASSES
    (model_dir / "card.json").write_text("{not json")
    assert main([str(model_dir.parent)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "card.json: cannot read the model kind" in err and err.count("\n") == 1
