"""Loader for the Omniglot folder layout: `<root>/<alphabet>/<character>/<id>_<drawer>.png`.

The real data set (images_background/, images_evaluation/) stores 105x105 1-bit PNGs with black
strokes on white; file names end in the drawer number (01..20). We turn them into float32 28x28
images with ink = 1 (the same convention as the font-rendered glyphs), so the characters use
case runs unchanged on real Omniglot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_models.datasets.glyphs import IMAGE_SIZE
from firmware_models.exceptions import DatasetError

_DRAWER = re.compile(r"_(\d+)$")


@dataclass
class CharacterImages:
    """Images of many character classes by many drawers.

    Attributes
    ----------
    images : np.ndarray
        float32 (n, 28, 28), ink = 1.
    labels : np.ndarray
        int64 (n,) index into `class_names`.
    drawers : np.ndarray
        int64 (n,) drawer (writer) number parsed from the file name, -1 when absent.
    class_names : list of str
        "alphabet/character" per class.
    alphabets : list of str
        The alphabet of each class (Omniglot splits meta-train/meta-test by alphabet).
    files : list of Path
        The PNG of each image (for provenance and for errors that name a file).
    """

    images: np.ndarray
    labels: np.ndarray
    drawers: np.ndarray
    class_names: list[str]
    alphabets: list[str]
    files: list[Path] = field(default_factory=list)


def _load_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            gray = img.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
            return 1.0 - np.asarray(gray, np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({type(exc).__name__})") from None


def load_omniglot(root: str | Path) -> CharacterImages:
    """Read every `<alphabet>/<character>/*.png` under `root` (one of Omniglot's image folders).

    Raises
    ------
    DatasetError
        The folder is missing, holds no alphabet/character/png structure, a character folder is
        empty, or a PNG is unreadable; the message names the path.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: Omniglot folder not found")
    alphabets = sorted(p for p in root.iterdir() if p.is_dir())
    if not alphabets:
        raise DatasetError(f"{root}: no alphabet folders (expected <alphabet>/<character>/*.png)")
    images: list[np.ndarray] = []
    labels: list[int] = []
    drawers: list[int] = []
    names: list[str] = []
    class_alphabets: list[str] = []
    paths: list[Path] = []
    for alphabet in alphabets:
        characters = sorted(p for p in alphabet.iterdir() if p.is_dir())
        if not characters:
            raise DatasetError(f"{alphabet}: no character folders (expected {alphabet.name}/<character>/*.png)")
        for character in characters:
            files = sorted(character.glob("*.png"))
            if not files:
                raise DatasetError(f"{character}: no .png files")
            label = len(names)
            names.append(f"{alphabet.name}/{character.name}")
            class_alphabets.append(alphabet.name)
            for f in files:
                images.append(_load_png(f))
                paths.append(f)
                labels.append(label)
                m = _DRAWER.search(f.stem)
                drawers.append(int(m.group(1)) if m else -1)
    return CharacterImages(np.stack(images).astype(np.float32), np.asarray(labels, np.int64),
                           np.asarray(drawers, np.int64), names, class_alphabets, paths)


# --- the real data set split by device -------------------------------------------------------------
BACKGROUND, EVALUATION = "images_background", "images_evaluation"


@dataclass
class OmniglotSplit:
    """Omniglot split the way the use case needs it: classes by alphabet, devices by drawer.

    Attributes
    ----------
    train, heldout : CharacterImages
        Training alphabets' and held-out alphabets' characters (all drawers).
    train_drawers, heldout_drawers : list of int
        Drawers (writers) that are training devices / held-out devices; disjoint.
    rule : str
        Which split rule was applied (for the model card).
    """

    train: CharacterImages
    heldout: CharacterImages
    train_drawers: list[int]
    heldout_drawers: list[int]
    rule: str

    @property
    def files(self) -> list[Path]:
        return self.train.files + self.heldout.files


def _subset(data: CharacterImages, alphabets: set[str]) -> CharacterImages:
    keep_classes = [i for i, a in enumerate(data.alphabets) if a in alphabets]
    remap = {old: new for new, old in enumerate(keep_classes)}
    rows = np.flatnonzero(np.isin(data.labels, keep_classes))
    return CharacterImages(data.images[rows], np.asarray([remap[int(c)] for c in data.labels[rows]], np.int64),
                           data.drawers[rows], [data.class_names[i] for i in keep_classes],
                           [data.alphabets[i] for i in keep_classes], [data.files[i] for i in rows])


def load_omniglot_split(root: str | Path, *, min_classes: int = 5, heldout_alphabets: float = 0.4,
                        heldout_drawers: float = 0.25) -> OmniglotSplit:
    """Read Omniglot and split it: held-out alphabets (new characters) and held-out drawers (new devices).

    `root` is either the folder holding `images_background/` and `images_evaluation/` (the
    data set's own split: background alphabets train, evaluation alphabets are held out), or one
    image folder of `<alphabet>/<character>/*.png`, whose last `heldout_alphabets` of alphabets
    (sorted by name; at least one) are held out. Drawers come from the file names
    (`<id>_<drawer>.png`); the highest `heldout_drawers` of them (at least one; Omniglot's 20 ->
    16..20) are held-out devices.

    Raises
    ------
    DatasetError
        Missing/malformed folders or PNGs (path named), a file name without a drawer number, fewer
        than two drawers or two alphabets, or fewer than `min_classes` characters in a split.
    """
    root = Path(root)
    if (root / BACKGROUND).is_dir() and (root / EVALUATION).is_dir():
        train, heldout = load_omniglot(root / BACKGROUND), load_omniglot(root / EVALUATION)
        rule = f"{BACKGROUND}/ alphabets train, {EVALUATION}/ alphabets held out (the data set's own split)"
    else:
        data = load_omniglot(root)
        names = sorted(set(data.alphabets))
        if len(names) < 2:
            raise DatasetError(f"{root}: only one alphabet ({names[0]}); need two to hold one out")
        n_held = max(1, round(heldout_alphabets * len(names)))
        train, heldout = _subset(data, set(names[:-n_held])), _subset(data, set(names[-n_held:]))
        rule = f"last {n_held} of {len(names)} alphabets (by name) held out"
    for part in (train, heldout):
        missing = np.flatnonzero(part.drawers < 0)
        if len(missing):
            raise DatasetError(f"{part.files[int(missing[0])]}: file name has no drawer number "
                               "(expected <id>_<drawer>.png)")
    drawers = sorted(set(train.drawers.tolist()) | set(heldout.drawers.tolist()))
    if len(drawers) < 2:
        raise DatasetError(f"{root}: only one drawer ({drawers[0]}); need two to hold one out")
    n_held_d = max(1, round(heldout_drawers * len(drawers)))
    for what, part in (("training", train), ("held-out", heldout)):
        if len(part.class_names) < min_classes:
            raise DatasetError(f"{root}: {what} alphabets hold {len(part.class_names)} characters; "
                               f"a {min_classes}-way task needs at least {min_classes}")
    counts = np.bincount(heldout.labels, minlength=len(heldout.class_names))
    if counts.min() < 2:    # few-shot evaluation needs a support and a query drawing of each character
        raise DatasetError(f"{root}: held-out character {heldout.class_names[int(counts.argmin())]} has "
                           f"{int(counts.min())} drawing; need at least 2 (support + query)")
    return OmniglotSplit(train, heldout, drawers[:-n_held_d], drawers[-n_held_d:],
                         f"{rule}; drawers {drawers[-n_held_d:]} held out")
