"""Loader for the Speech Commands layout: `<root>/<word>/<speaker>_nohash_<n>.wav`.

Speech Commands v0.02 has one folder per word, 1 s 16 kHz mono PCM16 clips named by speaker hash,
`_background_noise_/` with long noise recordings, and `validation_list.txt` / `testing_list.txt`
naming the clips of those splits (relative paths). The speaker hash is what splits the data by
device here: a device is a speaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_models.exceptions import DatasetError
from firmware_models.features.audio import SAMPLE_RATE, fit_clip
from firmware_models.features.resample import resample
from firmware_models.features.wav import read_wav

BACKGROUND_DIR = "_background_noise_"
SPLIT_FILES = {"validation": "validation_list.txt", "testing": "testing_list.txt"}


@dataclass
class SpeechClips:
    """Clips of a Speech Commands folder.

    Attributes
    ----------
    waves : np.ndarray
        float32 (n, 16000), every clip fitted to 1 s at 16 kHz.
    words : list of str
        The folder (word) of each clip.
    speakers : list of str
        Speaker hash of each clip (file name before `_nohash_`).
    splits : list of str
        "training", "validation" or "testing" per clip, from the list files.
    noise : list of np.ndarray
        Background noise recordings (16 kHz float32), possibly empty.
    """

    waves: np.ndarray
    words: list[str]
    speakers: list[str]
    splits: list[str]
    noise: list[np.ndarray]


def _read_split_list(root: Path, name: str) -> set[str]:
    path = root / name
    if not path.exists():
        return set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable split list ({type(exc).__name__})") from None
    out: set[str] = set()
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.count("/") != 1 or not line.endswith(".wav"):
            raise DatasetError(f"{path}:{i}: expected '<word>/<file>.wav', got {line!r}")
        out.add(line)
    return out


def _clip(path: Path) -> np.ndarray:
    x, sr = read_wav(path)
    if sr != SAMPLE_RATE:
        x = resample(x, sr, SAMPLE_RATE)
    return x


def load_speech_commands(root: str | Path, *, words: list[str] | None = None,
                         max_per_word: int | None = None) -> SpeechClips:
    """Read a Speech Commands folder (all words, or only `words`).

    Raises
    ------
    DatasetError
        Missing folder, no word folders, a listed word without clips, a malformed split list or
        an unreadable wav; the message names the path.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Speech Commands folder not found")
    split_of = {name: _read_split_list(root, f) for name, f in SPLIT_FILES.items()}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != BACKGROUND_DIR)
    if words is not None:
        missing = [w for w in words if not (root / w).is_dir()]
        if missing:
            raise DatasetError(f"{root / missing[0]}: word folder not found")
        folders = [root / w for w in words]
    if not folders:
        raise DatasetError(f"{root}: no word folders (expected <word>/*.wav)")
    waves: list[np.ndarray] = []
    clip_words: list[str] = []
    speakers: list[str] = []
    splits: list[str] = []
    for folder in folders:
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise DatasetError(f"{folder}: no .wav files")
        for f in files[:max_per_word]:
            rel = f"{folder.name}/{f.name}"
            waves.append(fit_clip(_clip(f)))
            clip_words.append(folder.name)
            speakers.append(f.stem.split("_nohash_")[0])
            splits.append("validation" if rel in split_of["validation"]
                          else "testing" if rel in split_of["testing"] else "training")
    noise = [_clip(f) for f in sorted((root / BACKGROUND_DIR).glob("*.wav"))] \
        if (root / BACKGROUND_DIR).is_dir() else []
    return SpeechClips(np.stack(waves).astype(np.float32), clip_words, speakers, splits, noise)
