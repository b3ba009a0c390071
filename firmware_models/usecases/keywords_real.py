"""Real Speech Commands for the keywords use case: a device is a speaker, plus "silence" from noise.

Clips go through the same numpy log-mel front end devices run (49x40). "_silence_" examples are
1 s cuts of the `_background_noise_` recordings at a random level (10^U(-2, 0) of full scale),
the way the data set's own training script makes them; without that folder they are low-level
white dither. One label in twelve is silence, matching the generator. Real speakers have few
clips, so a device asked for more samples cycles through its clips, shifting each repeat in time
by 1-5 frames (20-100 ms), as a word can start anywhere in a 1 s window.
"""

from __future__ import annotations

import numpy as np

from firmware_models.datasets.speech_commands import SpeakerSplit
from firmware_models.features.audio import CLIP_SAMPLES, log_mel_batch
from firmware_models.usecases.base import DeviceData
from firmware_models.usecases.real_data import cycle_indices

SILENCE_EVERY = 12          # every 12th sample of a device is silence (1 of 12 labels)
MAX_SHIFT_FRAMES = 5


def silence_features(noise: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` log-mel (n, 49, 40, 1) of 1 s background-noise cuts (or dither when there is no noise)."""
    waves = np.empty((n, CLIP_SAMPLES), np.float32)
    for i in range(n):
        if noise:
            rec = noise[int(rng.integers(len(noise)))]
            rec = np.pad(rec, (0, max(0, CLIP_SAMPLES - len(rec))))
            start = int(rng.integers(len(rec) - CLIP_SAMPLES + 1))
            waves[i] = rec[start:start + CLIP_SAMPLES] * 10 ** rng.uniform(-2, 0)
        else:
            waves[i] = rng.normal(0.0, 10 ** rng.uniform(-4, -2.5), CLIP_SAMPLES)
    return log_mel_batch(np.clip(waves, -1, 1))[..., None]


def time_shifted(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One (49, 40, 1) log-mel shifted by ±1..MAX_SHIFT_FRAMES frames; vacated frames = its quietest frame."""
    shift = int(rng.integers(1, MAX_SHIFT_FRAMES + 1)) * (1 if rng.random() < 0.5 else -1)
    floor = features[np.argmin(features.sum(axis=(1, 2)))]
    out = np.roll(features, shift, axis=0)
    if shift > 0:
        out[:shift] = floor
    else:
        out[shift:] = floor
    return out


def pool(real: SpeakerSplit, speakers: list[str], silence_label: int,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every clip of `speakers` plus silence (1 of 12 of the total): x (n, 49, 40, 1), labels."""
    rows = np.flatnonzero(np.isin(real.speakers, speakers))
    n_silence = max(1, len(rows) // (SILENCE_EVERY - 1))
    x = np.concatenate([real.samples[rows][..., None], silence_features(real.noise, n_silence, rng)])
    y = np.concatenate([real.labels[rows], np.full(n_silence, silence_label, np.int64)])
    return x, y


def real_devices(real: SpeakerSplit, split: str, n_devices: int, samples: int, seed: int, stream: int,
                 silence_label: int) -> list[DeviceData]:
    """Device i = speaker i (cycled) of `split`: its own clips (shifted on repeats) and silence."""
    speakers = real.train_speakers if split == "train" else real.heldout_speakers
    out = []
    for i in range(int(n_devices)):
        rng = np.random.default_rng([int(seed), 23, stream, i])
        spk = speakers[i % len(speakers)]
        rows = np.flatnonzero(real.speakers == spk)
        is_silence = np.arange(int(samples)) % SILENCE_EVERY == SILENCE_EVERY - 1
        idx, repeat = cycle_indices(len(rows), int((~is_silence).sum()), rng)
        words = [real.samples[rows[k]][..., None] if not r else time_shifted(real.samples[rows[k]][..., None], rng)
                 for k, r in zip(idx, repeat, strict=True)]
        silence = silence_features(real.noise, int(is_silence.sum()), rng)
        x = np.empty((int(samples), *real.samples.shape[1:], 1), np.float32)
        y = np.empty(int(samples), np.int64)
        x[~is_silence] = np.stack(words) if words else x[~is_silence]
        y[~is_silence] = real.labels[rows[idx]]
        x[is_silence] = silence
        y[is_silence] = silence_label
        out.append(DeviceData(f"speaker-{split}-{i:03d}", x, y,
                              {"source": "Speech Commands", "speaker": spk, "clips": int(len(rows))}))
    return out
