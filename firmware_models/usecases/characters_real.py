"""Real Omniglot for the characters use case: drawers as devices, held-out alphabets as new characters.

Omniglot's drawers each drew every character once, so a drawer's 5-way task has one real drawing
per class. A device asked for more samples cycles through its drawings, each repeat shifted by up
to 2 pixels (the kind of offset a touch screen or camera adds), so no device sees an exact copy.
Few-shot evaluation needs several drawings of one character, so its episodes draw support and
query from different drawers of the held-out alphabets (characters never seen in pretraining).
"""

from __future__ import annotations

import numpy as np

from firmware_models.datasets.omniglot import CharacterImages, OmniglotSplit
from firmware_models.exceptions import DatasetError
from firmware_models.usecases.base import DeviceData

MAX_SHIFT = 2


def shifted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image` moved by a random (dy, dx) in [-MAX_SHIFT, MAX_SHIFT], never (0, 0); paper fills in."""
    while True:
        dy, dx = (int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2))
        if dy or dx:
            break
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def real_devices(real: OmniglotSplit, split: str, n_devices: int, samples: int, seed: int, stream: int,
                 n_way: int, where: str) -> list[DeviceData]:
    """Device i = drawer i (cycled) of `split`, doing its own `n_way` task over the split's characters."""
    part = real.train if split == "train" else real.heldout
    drawers = real.train_drawers if split == "train" else real.heldout_drawers
    out = []
    for i in range(int(n_devices)):
        rng = np.random.default_rng([int(seed), stream, i])
        drawer = drawers[i % len(drawers)]
        mine = np.flatnonzero(part.drawers == drawer)
        classes = np.unique(part.labels[mine])
        if len(classes) < n_way:
            raise DatasetError(f"{where}: drawer {drawer} drew {len(classes)} characters of the {split} alphabets; "
                               f"a {n_way}-way task needs {n_way}")
        chosen = rng.choice(classes, size=n_way, replace=False)
        x, y = [], []
        for j in range(int(samples)):
            label, rep = j % n_way, j // n_way
            rows = mine[part.labels[mine] == chosen[label]]
            img = part.images[rows[rep % len(rows)]]
            x.append(img if rep < len(rows) else shifted(img, rng))
            y.append(label)
        out.append(DeviceData(f"drawer-{split}-{i:03d}", np.stack(x)[..., None].astype(np.float32),
                              np.asarray(y, np.int64),
                              {"source": "Omniglot", "drawer": int(drawer),
                               "classes": [part.class_names[int(c)] for c in chosen],
                               "unique_drawings": int(min(samples, n_way))}))
    return out


def pretrain_set(real: OmniglotSplit, max_classes: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Training alphabets' drawings by training drawers: x (n, 28, 28, 1), labels 0..C-1, class names.

    `max_classes` keeps every k-th class (quick builds); held-out drawers are never used.
    """
    part: CharacterImages = real.train
    classes = np.arange(len(part.class_names))
    if max_classes is not None and len(classes) > max_classes:
        classes = classes[:: -(-len(classes) // max_classes)]
    rows = np.flatnonzero(np.isin(part.labels, classes) & np.isin(part.drawers, real.train_drawers))
    remap = np.full(len(part.class_names), -1, np.int64)
    remap[classes] = np.arange(len(classes))
    return part.images[rows][..., None], remap[part.labels[rows]], [part.class_names[int(c)] for c in classes]


def drawings_per_heldout_class(real: OmniglotSplit) -> int:
    """The fewest drawings any held-out character has (bounds shots + queries of an episode)."""
    return int(np.bincount(real.heldout.labels, minlength=len(real.heldout.class_names)).min())


def heldout_episodes(real: OmniglotSplit, n_way: int, k_shot: int, n_query: int, episodes: int,
                     rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`episodes` N-way K-shot episodes over held-out characters; support and query by different drawers."""
    part = real.heldout
    out = []
    for _ in range(int(episodes)):
        chosen = rng.choice(len(part.class_names), size=n_way, replace=False)
        sx, sy, qx, qy = [], [], [], []
        for label, c in enumerate(chosen):
            rows = rng.permutation(np.flatnonzero(part.labels == c))[:k_shot + n_query]
            sx += [part.images[r] for r in rows[:k_shot]]
            qx += [part.images[r] for r in rows[k_shot:]]
            sy += [label] * k_shot
            qy += [label] * (len(rows) - k_shot)
        out.append((np.stack(sx)[..., None], np.asarray(sy, np.int64), np.stack(qx)[..., None],
                    np.asarray(qy, np.int64)))
    return out
