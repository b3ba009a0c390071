"""Keyword clips spoken by espeak-ng with one voice per synthetic speaker, plus background noise.

Why espeak-ng: no recordings may be downloaded, yet keyword spotting must be learned per speaker
(a device is a speaker) and tested on speakers never heard in training. espeak-ng (a Debian
package) speaks any word with a chosen accent, voice variant, pitch, speed and amplitude; each
speaker draws those once, each repetition varies them a little, and every clip gets a random time
shift and background noise (white, pink, brown, mains hum, fan) at a random SNR.

Synthesis is cached on disk (16 kHz PCM16 wav, keyed by the full espeak command line) because a
full data set is a few thousand espeak calls. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_models.exceptions import DatasetError
from firmware_models.features.audio import CLIP_SAMPLES, SAMPLE_RATE, fit_clip
from firmware_models.features.resample import resample
from firmware_models.features.wav import read_wav, write_wav

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
LABELS = (*KEYWORDS, UNKNOWN, SILENCE)
# Speech Commands' auxiliary words: the "unknown" class
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "zero",
                 "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "learn", "follow",
                 "forward", "visual", "backward")
_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp")
_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
             "klatt3", "croak", "Andy", "Annie", "Michael", "Steph")
NOISE_KINDS = ("white", "pink", "brown", "hum", "fan")
N_SPEAKERS = 32          # speakers 0..23 train, 24..31 held out
N_TRAIN_SPEAKERS = 24


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice and the room it speaks in."""

    speaker: int
    voice: str           # "<accent>+<variant>"
    pitch: int           # 0..99
    speed: int           # words per minute
    amplitude: int       # 0..200
    noise: str           # background noise kind
    snr_low: float       # dB range of this speaker's background noise
    snr_high: float


def speaker(speaker_id: int, seed: int = 0) -> Speaker:
    """Speaker `speaker_id` (deterministic); ids cycle through distinct accent x variant pairs."""
    rng = np.random.default_rng([seed, 104729, speaker_id])
    accent = _ACCENTS[(speaker_id + speaker_id // len(_VARIANTS)) % len(_ACCENTS)]  # distinct (accent, variant) pairs
    variant = _VARIANTS[(speaker_id * 7 + seed) % len(_VARIANTS)]
    low = float(rng.uniform(3.0, 15.0))
    return Speaker(speaker_id, f"{accent}+{variant}", int(rng.integers(20, 80)), int(rng.integers(120, 200)),
                   int(rng.integers(70, 160)), NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))], low, low + 15.0)


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DatasetError("espeak-ng not found on PATH (Debian package espeak-ng; `make setup` installs it)")
    return exe


def _command(word: str, spk: Speaker, rep: int) -> list[str]:
    """espeak-ng arguments of repetition `rep`: the speaker's voice, slightly varied per take."""
    rng = np.random.default_rng([spk.speaker, rep, int.from_bytes(word.encode()[:8], "little")])
    pitch = int(np.clip(spk.pitch + rng.integers(-6, 7), 0, 99))
    speed = int(np.clip(spk.speed * rng.uniform(0.9, 1.1), 80, 260))
    return ["-v", spk.voice, "-p", str(pitch), "-s", str(speed), "-a", str(spk.amplitude), "--stdout", word]


def _synthesize(args: list[str], cache_dir: Path) -> np.ndarray:
    key = hashlib.sha1("\0".join(args).encode()).hexdigest()[:20]
    path = cache_dir / f"{key}.wav"
    if path.exists():
        try:
            return read_wav(path)[0]
        except DatasetError:
            path.unlink(missing_ok=True)      # a torn write from an interrupted run: make it again
    proc = subprocess.run([_espeak(), *args], capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise DatasetError(f"espeak-ng {' '.join(args)}: failed ({proc.stderr.decode(errors='replace').strip()})")
    tmp = cache_dir / f"{key}.tmp"
    tmp.write_bytes(proc.stdout)
    try:
        wave_in, rate = read_wav(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    out = resample(wave_in, rate, SAMPLE_RATE)
    part = cache_dir / f"{key}.part"
    write_wav(part, out, SAMPLE_RATE)
    part.replace(path)                        # atomic: concurrent builds never see half a file
    return read_wav(path)[0]


def default_cache_dir() -> Path:
    """Where synthesized speech is kept between runs (platformdirs user cache)."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tinyfleet")) / "espeak"


def background_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of unit-RMS noise of `kind` at 16 kHz."""
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        base = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3))
                for h in (1, 2, 3, 5))
        x = x + 0.1 * rng.normal(size=n)
    else:
        white = rng.normal(size=n)
        if kind == "white":
            x = white
        else:
            spec = np.fft.rfft(white)
            f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
            f[0] = f[1]
            if kind == "pink":
                spec /= np.sqrt(f)
            elif kind == "brown":
                spec /= f
            else:  # fan: band around a blade-pass frequency plus low rumble
                centre = rng.uniform(150, 600)
                spec *= np.exp(-0.5 * ((f - centre) / (0.3 * centre)) ** 2) + 0.3 / np.sqrt(f)
            x = np.fft.irfft(spec, n)
    x = np.asarray(x, dtype=np.float64)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def _place(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fit speech into 1 s with a random shift of up to +-100 ms (clips are never perfectly centred)."""
    clip = fit_clip(speech)
    return np.roll(clip, int(rng.integers(-1600, 1601)))


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add `noise` to `speech` so that speech power / noise power = `snr_db`; clipped to [-1, 1]."""
    p_s = float(np.mean(speech.astype(np.float64) ** 2)) + 1e-12
    p_n = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-12
    return np.clip(speech + noise * np.sqrt(p_s / (p_n * 10 ** (snr_db / 10.0))), -1.0, 1.0).astype(np.float32)


def speaker_clips(spk: Speaker, per_label: int, *, seed: int = 0, cache_dir: Path | None = None,
                  labels: tuple[str, ...] = LABELS) -> tuple[np.ndarray, np.ndarray]:
    """`per_label` 1 s clips of every label by `spk`: waves (n, 16000) float32, label ids (n,) int64.

    Label ids index `LABELS`. "_unknown_" clips say a random auxiliary word; "_silence_" clips are
    the speaker's background noise alone (sometimes near-digital silence).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 15485863, spk.speaker])
    jobs: list[tuple[int, list[str] | None]] = []
    for rep in range(per_label):
        for name in labels:
            label = LABELS.index(name)
            if name == SILENCE:
                jobs.append((label, None))
            elif name == UNKNOWN:
                jobs.append((label, _command(UNKNOWN_WORDS[int(rng.integers(len(UNKNOWN_WORDS)))], spk, rep)))
            else:
                jobs.append((label, _command(name, spk, rep)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        speech = list(pool.map(lambda job: None if job[1] is None else _synthesize(job[1], cache), jobs))
    waves = np.empty((len(jobs), CLIP_SAMPLES), np.float32)
    for i, ((_, _args), sp) in enumerate(zip(jobs, speech, strict=True)):
        noise = background_noise(spk.noise, CLIP_SAMPLES, rng)
        if sp is None:
            level = 10 ** rng.uniform(-3.5, -1.3)
            waves[i] = np.clip(noise * level, -1, 1)
        else:
            clip = _place(sp, rng) * rng.uniform(0.5, 1.0)
            waves[i] = mix(clip, noise, rng.uniform(spk.snr_low, spk.snr_high))
    return waves, np.asarray([label for label, _ in jobs], np.int64)
