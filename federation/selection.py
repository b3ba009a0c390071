"""Which present devices a run may sample: those whose description says they can learn its model.

A device is sampled only if its Thing Description (retained on its ``td`` topic, or as ingested by
the registry) declares the run's use case (``tinyfleet:useCase``) and enough RAM
(``tinyfleet:board`` → ``tinyfleet:ramBytes``) for *training* the model on the device: backbone arena
plus the head's weights, error vectors, activations and one buffered sample — the one formula of
`firmware_models.memory_budget`, the figure a model card states as ``ram.online_learning_bytes`` and
the registry as ``tf:learningRamRequiredBytes``. The inference arena alone is not enough: a board
that can run the model may still be unable to train its head.

Why here and not in the device: a device that cannot train answers every task with an error; a
keywords device sampled into a sine run trains on the wrong data. Both waste a sampled slot per
round, and the first one makes FedAvg's sample smaller than asked. Devices without a description
are not sampled unless the run allows undescribed devices (``--allow-undescribed``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.head_format import weight_names
from firmware_models.memory_budget import FLOAT_BYTES, account

log = logging.getLogger(__name__)

TD_USE_CASE = "tinyfleet:useCase"
TD_BOARD = "tinyfleet:board"
TD_RAM = "tinyfleet:ramBytes"


@dataclass(frozen=True)
class Description:
    """What sampling reads from a device's description (None: the description does not say)."""

    use_case: str | None
    ram_bytes: int | None
    source: str = "td"


@dataclass(frozen=True)
class Requirement:
    """What a run needs from a device: its use case and the RAM to train its model on the device."""

    use_case: str
    training_ram_bytes: int

    def verdict(self, description: Description | None) -> str | None:
        """None if a device so described may be sampled, else the one-line reason why not."""
        if description is None:
            return "no Thing Description (publish one retained on the device's td topic)"
        if description.use_case is None:
            return f"its {description.source} declares no use case ({TD_USE_CASE})"
        if description.use_case != self.use_case:
            return f"its {description.source} declares use case {description.use_case!r}, the run learns " \
                   f"{self.use_case!r}"
        if description.ram_bytes is None:
            return f"its {description.source} states no RAM ({TD_BOARD} → {TD_RAM})"
        if description.ram_bytes < self.training_ram_bytes:
            return f"{description.ram_bytes:,} B of RAM < {self.training_ram_bytes:,} B needed to train the model " \
                   "on the device"
        return None


def description_from_td(td: Any) -> Description:
    """Read use case and RAM from a TD as `devices.wire.thing_description` writes it (plain JSON, no JSON-LD).

    A value of the wrong type counts as absent (the verdict then names the missing term).
    """
    if not isinstance(td, Mapping):
        return Description(None, None)
    use_case = td.get(TD_USE_CASE)
    board = td.get(TD_BOARD)
    ram = board.get(TD_RAM) if isinstance(board, Mapping) else None
    ok_ram = isinstance(ram, int) and not isinstance(ram, bool) and ram > 0
    return Description(use_case if isinstance(use_case, str) else None, ram if ok_ram else None)


def training_ram_bytes(head: Mapping[str, np.ndarray], *, models_dir: Path | None = None) -> int:
    """RAM a device needs to train `head` (and run the model's backbone), in bytes.

    From the model card (``card.json`` in `models_dir` or ``models_dir/<task>``): its
    ``ram.online_learning_bytes``. Without a card (sine starts from a fresh head): the same
    `memory_budget.account` for a backbone-free head fed float32 inputs, training every layer.
    """
    if models_dir is not None:
        card_path = Path(models_dir) / "card.json"
        try:
            card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else None
        except (OSError, ValueError):
            card = None
        ram = (card or {}).get("ram") if isinstance(card, dict) else None
        need = ram.get("online_learning_bytes") if isinstance(ram, dict) else None
        if isinstance(need, int) and need > 0:
            return need
    weights = [np.asarray(head[k]) for k in weight_names(len(head))]
    widths = [int(weights[0].shape[0])] + [int(w.shape[1]) for w in weights[0::2]]
    return account(layer_sizes=widths, gradient_floats=sum(widths[1:]), arena=0, backbone_bytes=0,
                   sample_bytes=FLOAT_BYTES * widths[0]).ram


Describe = Callable[[str], "Description | None"]
"""The current description of one device (retained TD, or the registry's record); None if it has none."""


class DeviceSelection:
    """A `federation.grid.DeviceFilter`: True for devices whose description meets `requirement`.

    Parameters
    ----------
    requirement : Requirement
    describe : callable
        The current description of a device id; called on every check (a dict lookup: the
        transport's retained TDs, or a cached registry answer).
    allow_undescribed : bool, default=False
        Sample devices that have no description at all (a described device must still fit).
    """

    def __init__(self, requirement: Requirement, describe: Describe, *, allow_undescribed: bool = False) -> None:
        self.requirement = requirement
        self.describe = describe
        self.allow_undescribed = allow_undescribed
        self._lock = threading.Lock()
        self._logged: dict[str, str | None] = {}

    def reason(self, device_id: str) -> str | None:
        """None if `device_id` may be sampled, else why not."""
        desc = self.describe(device_id)
        if desc is None and self.allow_undescribed:
            return None
        return self.requirement.verdict(desc)

    def __call__(self, device_id: str) -> bool:
        why = self.reason(device_id)
        with self._lock:
            if self._logged.get(device_id, "") != why:  # log each device once per change of verdict
                self._logged[device_id] = why
                if why is not None:
                    log.info("not sampling %s: %s", device_id, why)
        return why is None

    def excluded(self, device_ids: list[str]) -> dict[str, str]:
        """``{device: reason}`` for those of `device_ids` that may not be sampled."""
        out = {}
        for d in device_ids:
            why = self.reason(d)
            if why is not None:
                out[d] = why
        return out


def explain_exclusions(excluded: Mapping[str, str], *, limit: int = 3) -> str:
    """One line: how many present devices were left out and why (the first `limit` with reasons)."""
    if not excluded:
        return ""
    shown = "; ".join(f"{d}: {why}" for d, why in sorted(excluded.items())[:limit])
    more = f"; and {len(excluded) - limit} more" if len(excluded) > limit else ""
    return f"{len(excluded)} present device(s) not eligible ({shown}{more})"
