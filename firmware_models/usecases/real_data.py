"""What a model card says about the real data set it was trained on, and one augmentation they share.

A card built from real data must let a reader check it was *their* data: the dataset's name, the
path, how many files, and the sha256 of the file list (`firmware_models.datasets.fingerprint`),
plus the split rule that decided which devices were held out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.datasets.fingerprint import file_list_fingerprint


def real_provenance(dataset: str, path: Path, files: Iterable[str | Path], rule: str,
                    **counts: Any) -> dict[str, Any]:
    """Card provenance entries for a build on a real data set.

    Returns ``{"source", "dataset", "real_data": {path, files, bytes, file_list_sha256,
    split_rule, **counts}}``; "source" is the one line the registry records as schema:isBasedOn.
    """
    fp = file_list_fingerprint(path, files)
    return {"source": f"{dataset} (real data) at {fp['path']}", "dataset": dataset,
            "real_data": {**fp, "split_rule": rule, **counts}}


def cycle_indices(n_available: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` indices into `n_available` items: each item once (shuffled) before any repeats.

    Returns the indices and a boolean mask of the repeats, which callers augment (shift) so a
    device with few real recordings still gets `n` distinct samples. Real data sets have few
    samples per device (an Omniglot drawer drew each character once).
    """
    if n_available < 1:
        raise ValueError("nothing to sample from")
    reps = -(-n // n_available)
    idx = np.concatenate([rng.permutation(n_available) for _ in range(reps)])[:n]
    repeat = np.arange(n) >= n_available
    return idx, repeat
