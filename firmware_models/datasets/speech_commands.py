"""Loader for the Speech Commands layout: `<root>/<word>/<speaker>_nohash_<n>.wav`.

Speech Commands v0.02 has one folder per word, 1 s 16 kHz mono PCM16 clips named by speaker hash,
`_background_noise_/` with long noise recordings, and `validation_list.txt` / `testing_list.txt`
naming the clips of those splits (relative paths). The speaker hash is what splits the data by
device here: a device is a speaker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    files : list of Path
        Every file read: the clips in order, then the noise recordings (for provenance).
    """

    waves: np.ndarray
    words: list[str]
    speakers: list[str]
    splits: list[str]
    noise: list[np.ndarray]
    files: list[Path] = field(default_factory=list)


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
                         max_per_word: int | None = None, with_noise: bool = True) -> SpeechClips:
    """Read a Speech Commands folder (all words, or only `words`; `with_noise=False` skips the noise).

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
    paths: list[Path] = []
    for folder in folders:
        files = sorted(folder.glob("*.wav"))
        if not files:
            raise DatasetError(f"{folder}: no .wav files")
        for f in files[:max_per_word]:
            rel = f"{folder.name}/{f.name}"
            waves.append(fit_clip(_clip(f)))
            paths.append(f)
            clip_words.append(folder.name)
            speakers.append(f.stem.split("_nohash_")[0])
            splits.append("validation" if rel in split_of["validation"]
                          else "testing" if rel in split_of["testing"] else "training")
    noise_files = sorted((root / BACKGROUND_DIR).glob("*.wav")) \
        if with_noise and (root / BACKGROUND_DIR).is_dir() else []
    noise = [_clip(f) for f in noise_files]
    paths += noise_files + [root / f for f in SPLIT_FILES.values() if (root / f).is_file()]
    return SpeechClips(np.stack(waves).astype(np.float32), clip_words, speakers, splits, noise, paths)


# --- the real data set split by device -------------------------------------------------------------
@dataclass
class SpeakerSplit:
    """Speech Commands as the keywords use case needs it: 12 labels, devices = speakers.

    Attributes
    ----------
    samples : np.ndarray
        float32 (n, ...) word clips after `transform` (no silence; silence is cut from `noise`).
    labels : np.ndarray
        int64 (n,) index into `labels` of the use case (keywords, then unknown).
    speakers : np.ndarray
        str (n,) speaker hash per clip.
    train_speakers, heldout_speakers : list of str
        Disjoint; held-out speakers are those of testing_list.txt.
    noise : list of np.ndarray
        Background recordings for "silence" (empty: silence is low-level dither).
    files : list of Path
        Every file read.
    rule : str
        Which split rule was applied (for the model card).
    """

    samples: np.ndarray
    labels: np.ndarray
    speakers: np.ndarray
    train_speakers: list[str]
    heldout_speakers: list[str]
    noise: list[np.ndarray]
    files: list[Path]
    rule: str


def load_speaker_split(root: str | Path, keywords: tuple[str, ...], *, max_per_word: int | None,
                       max_per_unknown: int | None, heldout_fraction: float = 0.2,
                       transform: Callable[[np.ndarray], np.ndarray] | None = None) -> SpeakerSplit:
    """Read the keyword folders and the other word folders ("unknown") and split speakers.

    Labels are `keywords` (index 0..len-1) and "unknown" (index len(keywords)) for every other
    word folder. Held-out speakers are the speakers of testing_list.txt (the data set's own
    speaker-disjoint split); without that list, the last `heldout_fraction` of speaker hashes
    (sorted; at least one) are held out. `max_per_word` / `max_per_unknown` cap the clips read
    per folder (the first ones by file name, i.e. by speaker hash), and `transform` (e.g. the
    log-mel front end) runs folder by folder, because the full set is ~105k clips = 6.7 GB as
    float32 waves.

    Raises
    ------
    DatasetError
        Missing folder, no keyword folder, unreadable wav or split list (path named), or fewer
        than two speakers.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Speech Commands folder not found")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != BACKGROUND_DIR)
    present = [w for w in keywords if w in folders]
    if not present:
        raise DatasetError(f"{root}: none of the keyword folders {', '.join(keywords)} found")
    others = [w for w in folders if w not in keywords]
    samples: list[np.ndarray] = []
    labels: list[int] = []
    speakers: list[str] = []
    splits: list[str] = []
    files: list[Path] = []
    for word in present + others:
        part = load_speech_commands(root, words=[word], with_noise=False,
                                    max_per_word=max_per_word if word in keywords else max_per_unknown)
        samples.append(transform(part.waves) if transform is not None else part.waves)
        labels += [keywords.index(word) if word in keywords else len(keywords)] * len(part.words)
        speakers += part.speakers
        splits += part.splits
        files += part.files
    noise_part = (root / BACKGROUND_DIR)
    noise_files = sorted(noise_part.glob("*.wav")) if noise_part.is_dir() else []
    noise = [_clip(f) for f in noise_files]
    files = list(dict.fromkeys(files + noise_files))
    testing = sorted({s for s, sp in zip(speakers, splits, strict=True) if sp == "testing"})
    everyone = sorted(set(speakers))
    if len(everyone) < 2:
        raise DatasetError(f"{root}: clips of only one speaker; need two to hold one out")
    if testing and len(testing) < len(everyone):
        heldout = testing
        rule = "speakers of testing_list.txt held out (the data set's own split)"
    else:
        n_held = max(1, round(heldout_fraction * len(everyone)))
        heldout = everyone[-n_held:]
        rule = f"no usable testing_list.txt: last {n_held} of {len(everyone)} speaker hashes (sorted) held out"
    held = set(heldout)
    return SpeakerSplit(np.concatenate(samples).astype(np.float32), np.asarray(labels, np.int64),
                        np.asarray(speakers), [s for s in everyone if s not in held], heldout, noise, files, rule)
