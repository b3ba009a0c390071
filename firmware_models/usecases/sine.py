"""Sine regression: the smallest use case that exercises the whole pipeline.

Each device is one task y = A sin(x + phi) with A ~ U(0.1, 5) and phi ~ U(0, pi) drawn per device,
and x ~ U(-5, 5) per sample. The model is an MLP 1 -> 32 -> 32 -> 1 (ReLU, linear output); the
backbone is empty, so the whole network is the head that devices train online and that federated
meta-learning initializes.

Pretraining pools many training devices. With the task unknown, the best any pooled model can do
is the mean function E[y | x] = E[A] * E_phi[sin(x + phi)] = 2.55 * (2 / pi) * cos(x); the card
therefore reports MSE on held-out devices (dominated by the task spread) and MSE to that mean
function (how well the network itself was trained), each for float32 and int8.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.quiet import quiet_tensorflow_env
from firmware_models.usecases.base import DeviceData, ProgressFn, Split, UseCase

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)
HIDDEN = (32, 32)
_SPLIT_STREAM = {"train": 0, "heldout": 1}


def sine_task(amplitude: float, phase: float, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n samples (x, y) of one task, float32, shapes (n, 1)."""
    x = rng.uniform(*X_RANGE, size=(n, 1)).astype(np.float32)
    return x, (amplitude * np.sin(x + phase)).astype(np.float32)


def mean_function(x: np.ndarray) -> np.ndarray:
    """E[y | x] over the task distribution: the best a model that does not know the task can do."""
    mean_amplitude = sum(AMPLITUDE_RANGE) / 2
    return (mean_amplitude * 2.0 / math.pi * np.cos(np.asarray(x, np.float64))).astype(np.float32)


class SineUseCase(UseCase):
    """y = A sin(x + phi), one (A, phi) per device; MLP 1-32-32-1, all head."""

    name = "sine"
    kind = "regression"
    sensors = ("scalar-signal",)
    input_shape = (1,)
    description = "Sine regression y = A sin(x + phi), one (A, phi) per device; MLP 1-32-32-1 (all head)."

    def devices(self, split: Split, n_devices: int, *, samples_per_device: int, seed: int = 0) -> list[DeviceData]:
        """Devices of `split`; train and held-out draw from separate seeded streams, so they never overlap."""
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        rng = np.random.default_rng([int(seed), _SPLIT_STREAM[split]])
        out = []
        for i in range(int(n_devices)):
            amplitude = float(rng.uniform(*AMPLITUDE_RANGE))
            phase = float(rng.uniform(*PHASE_RANGE))
            x, y = sine_task(amplitude, phase, int(samples_per_device), rng)
            out.append(DeviceData(f"sine-{split}-{i:03d}", x, y, {"amplitude": amplitude, "phase": phase}))
        return out

    def build(self, out_dir: Path, *, seed: int = 0, quick: bool = False,
              progress: ProgressFn | None = None) -> dict[str, Any]:
        """Pretrain on pooled training devices, convert to full int8, measure, export; return the card."""
        from firmware_models.build import export_artifacts, head_weights_from_dense, regression_metrics

        cfg: dict[str, Any] = {"train_devices": 150 if quick else 250, "samples_per_device": 20,
                               "heldout_devices": 40, "heldout_samples_per_device": 50,
                               "epochs": 20 if quick else 30, "batch_size": 64, "learning_rate": 3e-3,
                               "seed": int(seed)}
        if progress:
            progress("generate data", 0.0)
        train = self.devices("train", cfg["train_devices"], samples_per_device=cfg["samples_per_device"], seed=seed)
        heldout = self.devices("heldout", cfg["heldout_devices"],
                               samples_per_device=cfg["heldout_samples_per_device"], seed=seed)
        x = np.concatenate([d.x for d in train])
        y = np.concatenate([d.y for d in train])
        hx = np.concatenate([d.x for d in heldout])
        hy = np.concatenate([d.y for d in heldout])

        if progress:
            progress("train float32 MLP", 0.05)
        quiet_tensorflow_env()
        import keras

        keras.utils.set_random_seed(int(seed))
        dense = [keras.layers.Dense(HIDDEN[0], activation="relu"), keras.layers.Dense(HIDDEN[1], activation="relu"),
                 keras.layers.Dense(1)]
        model = keras.Sequential([keras.Input(self.input_shape), *dense], name="sine")
        model.compile(keras.optimizers.Adam(cfg["learning_rate"]), "mse")
        t0 = time.perf_counter()
        model.fit(x, y, epochs=cfg["epochs"], batch_size=cfg["batch_size"], verbose=0, shuffle=True)
        t_train = time.perf_counter() - t0

        # The fixed reference: the mean function on an even grid (float and int8 alike).
        grid = np.linspace(*X_RANGE, 201, dtype=np.float32)[:, None]

        def on_progress(stage: str, frac: float) -> None:
            if progress:
                progress(stage, 0.3 + 0.7 * frac)

        card = export_artifacts(
            out_dir, self.name, model, x, task=self.name, kind=self.kind,
            head_weights=head_weights_from_dense(dense),
            eval_x=hx, eval_y=hy, description=self.description, sensors=self.sensors,
            provenance={"generator": "firmware_models.usecases.sine", "seed": int(seed),
                        "amplitude_range": list(AMPLITUDE_RANGE), "phase_range": list(PHASE_RANGE),
                        "x_range": list(X_RANGE), "train_devices": cfg["train_devices"],
                        "train_samples": int(len(x)), "heldout_devices": cfg["heldout_devices"],
                        "heldout_samples": int(len(hx)), "training": {k: cfg[k] for k in
                                                                      ("epochs", "batch_size", "learning_rate")},
                        "train_seconds": round(t_train, 3)},
            progress=on_progress,
        )
        # Mean-function reference, measured on the written artifact through LiteRT.
        from firmware_models.interpreters import TFLiteModel

        target = mean_function(grid)
        int8 = TFLiteModel.from_file(Path(out_dir) / self.name / "model.tflite", backend="litert").predict(grid)
        card["metrics"]["mean_function"] = {
            "float": regression_metrics(model.predict(grid, verbose=0), target),
            "int8": regression_metrics(int8, target),
            "samples": int(len(grid)),
        }
        from firmware_models.card import write_card

        write_card(card, Path(out_dir) / self.name / "card.json")
        return card
