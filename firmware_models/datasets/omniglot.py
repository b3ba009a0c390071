"""Loader for the Omniglot folder layout: `<root>/<alphabet>/<character>/<id>_<drawer>.png`.

The real data set (images_background/, images_evaluation/) stores 105x105 1-bit PNGs with black
strokes on white; file names end in the drawer number (01..20). We turn them into float32 28x28
images with ink = 1 (the same convention as the font-rendered glyphs), so the characters use
case runs unchanged on real Omniglot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    """

    images: np.ndarray
    labels: np.ndarray
    drawers: np.ndarray
    class_names: list[str]
    alphabets: list[str]


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
                labels.append(label)
                m = _DRAWER.search(f.stem)
                drawers.append(int(m.group(1)) if m else -1)
    return CharacterImages(np.stack(images).astype(np.float32), np.asarray(labels, np.int64),
                           np.asarray(drawers, np.int64), names, class_alphabets)
