"""The contract every use case (sine, characters, keywords, presence) fulfils.

A use case knows its data (split by device: each device is a task of its own, so the fleet is
non-IID; held-out devices never take part in pretraining or federated training), its sensors, and
how to build its model = frozen int8 backbone + small float head. Everything above
(`devices`, `federation`, the CLI, benchmarks) works through this interface only.

Data generation must not import TensorFlow (devices generate their own streams on gateways);
`build` may.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from firmware_models.exceptions import TinyFleetError

Split = Literal["train", "heldout"]
ProgressFn = Callable[[str, float], None]  # (stage description, fraction done in [0, 1])


@dataclass
class DeviceData:
    """One device's local data set (one task).

    Attributes
    ----------
    device_id : str
        Stable name, e.g. "sine-train-007" or "writer-12".
    x : np.ndarray
        Raw model inputs (what the backbone consumes), float32, shape (n, *input_shape).
    y : np.ndarray
        Targets: float32 (n, n_outputs) for regression, int64 (n,) class ids for classification.
    meta : dict
        Task parameters (amplitude/phase, writer style, speaker settings, room), for reports.
    """

    device_id: str
    x: np.ndarray
    y: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.x))


class UseCase(ABC):
    """One TinyML application.

    Attributes
    ----------
    name : str
        CLI name ("sine", "characters", "keywords", "presence").
    kind : {"regression", "classification"}
        Decides the head's loss (MSE or softmax cross-entropy) and the metric (MSE or accuracy).
    sensors : tuple of str
        Sensor kinds a device needs (e.g. ("microphone",)); used by matchmaking.
    input_shape : tuple of int
        Shape of one raw sample, without the batch axis.
    real_dataset : str or None
        Name of the public data set whose on-disk layout `with_data` accepts (None: generated only).
    data : Path or None
        Where that real data set lives; None = use the generator. Set through `with_data`, read
        by both `devices` and `build`, so simulated devices stream the same real data the
        backbone was trained on.
    """

    name: str
    kind: Literal["regression", "classification"]
    sensors: tuple[str, ...]
    input_shape: tuple[int, ...]
    description: str = ""
    real_dataset: str | None = None
    data: Path | None = None
    _real: Any = None            # the loaded, split real data (cached: loading Omniglot takes seconds)

    def with_data(self, path: str | Path | None) -> UseCase:
        """A copy of this use case that reads the real data set at `path` (None: the generator).

        Nothing is read yet; `load_real` (or the first `devices`/`build`) reads and checks it.

        Raises
        ------
        DataOptionError
            The use case has no real data set (exit code 2).
        """
        if path is not None and self.real_dataset is None:
            raise DataOptionError(f"use case {self.name!r} has no real data set (its data is generated); drop --data")
        clone = copy.copy(self)
        clone.data = Path(path) if path is not None else None
        clone._real = None
        return clone

    def load_real(self) -> Any:
        """Read and split the real data set at `data` once; later calls return the cached split.

        Call it before writing anything, so that bad data fails before an output folder exists.

        Raises
        ------
        DatasetError
            A missing or malformed folder/file; the message names it.
        """
        if self.data is None:
            raise DataOptionError(f"use case {self.name!r}: no real data set given")
        if self._real is None:
            self._real = self._load_real(self.data)
        return self._real

    def _load_real(self, path: Path) -> Any:
        """Read and split the real data at `path`; overridden by use cases that have one."""
        raise DataOptionError(f"use case {self.name!r} has no real data set")

    @abstractmethod
    def devices(self, split: Split, n_devices: int, *, samples_per_device: int, seed: int = 0) -> list[DeviceData]:
        """Generate `n_devices` devices of `split`; deterministic for a given seed."""

    def split_shots(self, data: DeviceData, shots: int) -> tuple[DeviceData, DeviceData]:
        """A held-out device's K labelled shots and the query samples it is judged on.

        Default: the first `shots` samples and the rest (held-out devices are generated so that
        any prefix is a fair shot set, e.g. labels cycling through the classes). A use case whose
        few-shot protocol needs more (presence: balanced shots from early days, queries where
        occupancy changes) overrides this.
        """
        if not 0 < shots < len(data):
            raise ValueError(f"{data.device_id}: {shots} shots leave no query samples of {len(data)}")
        return (DeviceData(data.device_id, data.x[:shots], data.y[:shots], data.meta),
                DeviceData(data.device_id, data.x[shots:], data.y[shots:], data.meta))

    @abstractmethod
    def build(self, out_dir: Path, *, seed: int = 0, quick: bool = False,
              progress: ProgressFn | None = None) -> dict[str, Any]:
        """Train, convert to full int8, measure and export into `out_dir/<name>/`; return the card."""


class DataOptionError(TinyFleetError):
    """`--data` given where it cannot be used (a generated-only use case, or several use cases)."""

    exit_code = 2


# Files written by `UseCase.build` into `out_dir/<name>/` (the contract `devices` loads from):
ARTIFACT_MODEL = "model.tflite"        # the whole network, full int8 (inference artifact; inspected, exported)
ARTIFACT_BACKBONE = "backbone.tflite"  # frozen int8 feature extractor; absent when the backbone is empty (sine)
ARTIFACT_HEAD = "head.npz"             # initial float32 head: w0 (in, h0), b0 (h0,), w1, b1, ...; ReLU between
                                       # layers, linear output (logits for classification)
ARTIFACT_CARD = "card.json"            # model card (see firmware_models.card)
ARTIFACT_BACKBONE_KERAS = "backbone.keras"  # the float backbone, kept so that a federated head can be fused
                                            # with it into a new whole int8 model (firmware_models.head_export)
