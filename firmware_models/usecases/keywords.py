"""Keyword spotting: 10 keywords + "unknown" + "silence", one device per speaker.

Data: espeak-ng speakers (`firmware_models.datasets.speech`; accent x voice variant x pitch x speed
x amplitude, each with its own background noise and SNR range), or real Speech Commands
(`firmware_models.datasets.speech_commands`). Features: 49x40 log-mel from the numpy front end
(`firmware_models.features.audio`) that devices run too. Training devices are speakers 0..23,
held-out devices speakers 24..31 (more devices get new speakers, still disjoint per split).

Model: int8 CNN backbone 49x40x1 -> 64 features and a float head 64 -> 32 -> 12, pretrained
together on training speakers; the card reports float vs int8 accuracy on held-out speakers.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.datasets import speech
from firmware_models.datasets.speech_commands import SpeakerSplit, load_speaker_split
from firmware_models.features.audio import N_FRAMES, N_MELS, log_mel_batch
from firmware_models.usecases import keywords_real
from firmware_models.usecases.base import DeviceData, ProgressFn, Split, UseCase
from firmware_models.usecases.real_data import real_provenance

FEATURES = 64
HEAD_HIDDEN = 32
CACHE_ENV = "TINYFLEET_CACHE_DIR"
# Clips read per word folder of real Speech Commands (first by file name): ~13k clips, ~100 MB of
# log-mel instead of the full 105k clips (6.7 GB of waves).
REAL_MAX_PER_KEYWORD = 1000
REAL_MAX_PER_UNKNOWN_WORD = 100
_SPLIT_STREAM = {"train": 0, "heldout": 1}


def speaker_ids(split: Split, n: int) -> list[int]:
    """Speaker ids of the first `n` devices of `split`; train and held-out ids never overlap."""
    if split == "train":
        base = list(range(speech.N_TRAIN_SPEAKERS))
        extra = speech.N_SPEAKERS
    elif split == "heldout":
        base = list(range(speech.N_TRAIN_SPEAKERS, speech.N_SPEAKERS))
        extra = speech.N_SPEAKERS + 1
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return [base[i] if i < len(base) else extra + 2 * (i - len(base)) for i in range(int(n))]


def build_backbone(keras: Any, n_features: int = FEATURES) -> Any:
    """49x40x1 log-mel -> 4 strided 3x3 convs (16, 32, 48, 64) -> global average -> features."""
    layers = keras.layers
    inp = keras.Input((N_FRAMES, N_MELS, 1))
    x = inp
    for width, stride in ((16, 2), (32, 2), (48, 2), (n_features, 1)):
        x = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, x, name="keywords_backbone")


class KeywordsUseCase(UseCase):
    """Keyword spotting over espeak-ng speakers; a device is a speaker."""

    name = "keywords"
    kind = "classification"
    sensors = ("microphone",)
    input_shape = (N_FRAMES, N_MELS, 1)
    labels = speech.LABELS
    description = ("Keyword spotting: 10 keywords + unknown + silence, 1 s at 16 kHz, 49x40 log-mel; espeak-ng "
                   "speakers with background noise; int8 CNN backbone -> 64 features, float head 64-32-12.")
    real_dataset = "Speech Commands"

    def _load_real(self, path: Path) -> SpeakerSplit:
        return load_speaker_split(path, speech.KEYWORDS, max_per_word=REAL_MAX_PER_KEYWORD,
                                  max_per_unknown=REAL_MAX_PER_UNKNOWN_WORD, transform=log_mel_batch)

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        env = os.environ.get(CACHE_ENV)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else \
            (Path(env) / "espeak" if env else speech.default_cache_dir())

    def speaker_data(self, speaker_id: int, per_label: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Log-mel features (n, 49, 40, 1) and label ids of one speaker."""
        waves, labels = speech.speaker_clips(speech.speaker(speaker_id, seed), per_label, seed=seed,
                                             cache_dir=self.cache_dir)
        return log_mel_batch(waves)[..., None], labels

    def devices(self, split: Split, n_devices: int, *, samples_per_device: int, seed: int = 0) -> list[DeviceData]:
        """One speaker per device; labels cycle through all 12 so every device is balanced.

        With real data (`with_data`), device i is speaker i of the split (cycled), with the
        speaker's own clips and one sample in twelve of silence.
        """
        if self.data is not None:
            if split not in _SPLIT_STREAM:
                raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
            return keywords_real.real_devices(self.load_real(), split, n_devices, samples_per_device, seed,
                                              _SPLIT_STREAM[split], speech.LABELS.index(speech.SILENCE))
        per_label = max(1, math.ceil(int(samples_per_device) / len(speech.LABELS)))
        out = []
        for i, sid in enumerate(speaker_ids(split, n_devices)):
            x, y = self.speaker_data(sid, per_label, seed=seed)
            spk = speech.speaker(sid, seed)
            out.append(DeviceData(f"speaker-{split}-{i:03d}", x[:samples_per_device], y[:samples_per_device],
                                  {"speaker": sid, "voice": spk.voice, "pitch": spk.pitch, "speed": spk.speed,
                                   "noise": spk.noise, "snr_db": [round(spk.snr_low, 1), round(spk.snr_high, 1)]}))
        return out

    def _pool(self, split: Split, n_speakers: int, per_label: int, seed: int,
              progress: ProgressFn | None, span: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        ids = speaker_ids(split, n_speakers)
        for k, sid in enumerate(ids):
            if progress:
                progress(f"espeak-ng {split} speaker {k + 1}/{len(ids)}", span[0] + (span[1] - span[0]) * k / len(ids))
            x, y = self.speaker_data(sid, per_label, seed=seed)
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    def build(self, out_dir: Path, *, seed: int = 0, quick: bool = False,
              progress: ProgressFn | None = None) -> dict[str, Any]:
        """Synthesize (cached), pretrain on training speakers, convert, measure on held-out speakers, export."""
        from firmware_models.build import export_artifacts, head_weights_from_dense
        from firmware_models.usecases import training

        cfg: dict[str, Any] = {"train_speakers": 4 if quick else speech.N_TRAIN_SPEAKERS,
                               "heldout_speakers": 2 if quick else speech.N_SPEAKERS - speech.N_TRAIN_SPEAKERS,
                               "train_per_label": 3 if quick else 12, "heldout_per_label": 2 if quick else 5,
                               "epochs": 8 if quick else 30, "batch_size": 32, "learning_rate": 3e-3,
                               "seed": int(seed)}
        step = progress or (lambda stage, frac: None)
        t0 = time.perf_counter()
        data_prov: dict[str, Any] = {"generator": "firmware_models.datasets.speech (espeak-ng)"}
        if self.data is None:
            x, y = self._pool("train", cfg["train_speakers"], cfg["train_per_label"], seed, step, (0.0, 0.25))
            hx, hy = self._pool("heldout", cfg["heldout_speakers"], cfg["heldout_per_label"], seed, step, (0.25, 0.3))
        else:                                   # every clip read; speakers of testing_list.txt held out
            step("read Speech Commands", 0.0)
            real: SpeakerSplit = self.load_real()
            rng = np.random.default_rng([int(seed), 29])
            silence = speech.LABELS.index(speech.SILENCE)
            x, y = keywords_real.pool(real, real.train_speakers, silence, rng)
            hx, hy = keywords_real.pool(real, real.heldout_speakers, silence, rng)
            cfg.update(train_speakers=len(real.train_speakers), heldout_speakers=len(real.heldout_speakers))
            data_prov = real_provenance(
                "Speech Commands", self.data, real.files, real.rule,
                clips=int(len(real.labels)), noise_recordings=len(real.noise),
                clips_per_label={lab: int(n) for lab, n in zip(speech.LABELS, np.bincount(
                    real.labels, minlength=len(speech.LABELS)), strict=True)},
                max_clips_per_keyword=REAL_MAX_PER_KEYWORD, max_clips_per_unknown_word=REAL_MAX_PER_UNKNOWN_WORD)
        t_data = time.perf_counter() - t0

        keras = training.seed_everything(seed)
        backbone = build_backbone(keras)
        dense = [keras.layers.Dense(HEAD_HIDDEN, activation="relu"), keras.layers.Dense(len(speech.LABELS))]
        model = keras.Model(backbone.input, dense[1](dense[0](keras.layers.Dropout(0.1)(backbone.output))),
                            name="keywords")
        t_train = training.fit_classifier(model, x, y, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                          learning_rate=cfg["learning_rate"], progress=step,
                                          stage="train backbone + head", span=(0.3, 0.75))

        def on_export(stage: str, frac: float) -> None:
            step(stage, 0.75 + 0.25 * frac)

        return export_artifacts(
            out_dir, self.name, model, x, task=self.name, kind=self.kind,
            head_weights=head_weights_from_dense(dense), eval_x=hx, eval_y=hy, backbone_model=backbone,
            description=self.description, sensors=self.sensors,
            metrics={"metric": "accuracy over 12 labels on held-out speakers", "labels": list(speech.LABELS)},
            provenance={**data_prov, "seed": int(seed),
                        "quick": bool(quick), "features": "log-mel 49x40 (firmware_models.features.audio)",
                        "train_speakers": cfg["train_speakers"], "heldout_speakers": cfg["heldout_speakers"],
                        "train_samples": int(len(x)), "heldout_samples": int(len(hx)),
                        "training": {k: cfg[k] for k in ("epochs", "batch_size", "learning_rate")},
                        "data_seconds": round(t_data, 3), "train_seconds": round(t_train, 3)},
            progress=on_export)
