"""Presence detection in smart buildings: present/absent from a 30-minute window of room sensors.

Data: simulated rooms (`firmware_models.datasets.building`: offices, meeting rooms, lecture halls,
labs, open spaces; CO2, temperature, humidity, light, motion with noise, drift and dropouts), or
real UCI Occupancy Detection CSVs (`firmware_models.datasets.uci_occupancy`). A device is a room;
held-out rooms are drawn from a separate seeded stream and never used in training. Features:
`firmware_models.features.sensors.window_features` (numpy, shared with devices).

Why rooms differ enough to need adaptation (issue 13: a pooled head scored 99 % on new rooms and
one threshold on light 98.4 %): every simulated device has its own sensor calibration (gains,
offsets, absent humidity/light/motion sensors; `building.random_calibration`) and its own
lighting (`building.LIGHTING`: occupants switch the lamps in 30 % of the rooms, a building timer
in 40 %, nobody in 30 %), so neither absolute levels nor light give presence away.

Few-shot protocol of a held-out room (`split_shots`): K shots per class from its first three
days (the sample layout alternates absent/present, so any even prefix is balanced), judged on
windows of days 4–7 whose 30 minutes contain a change of occupancy, as many present as absent
(so plain accuracy there is balanced accuracy).

Model: int8 1-D CNN backbone over the window (30x6 -> 32 features), float head 32 -> 16 -> 2; the
card reports float vs int8 accuracy on held-out rooms.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from firmware_models.datasets import building
from firmware_models.datasets.uci_occupancy import UciDays, load_uci_days
from firmware_models.features.sensors import N_FEATURES, WINDOW, windows_from_log
from firmware_models.usecases.base import DeviceData, ProgressFn, Split, UseCase
from firmware_models.usecases.real_data import real_provenance

FEATURES = 32
HEAD_HIDDEN = 16
DAYS = 7
SHOT_DAYS = 3
SHOT_POOL = 20
"""A held-out room's first SHOT_POOL samples are shots (alternating absent/present); queries follow."""
LIGHTING_P = (0.3, 0.4, 0.3)
_SPLIT_STREAM = {"train": 0, "heldout": 1}
_MINUTES = building.MINUTES_PER_DAY


def room_spec(split: Split, index: int, seed: int) -> building.RoomSpec:
    """Room `index` of `split` (deterministic; the two splits use separate random streams)."""
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng([int(seed), 7, _SPLIT_STREAM[split], int(index)])
    kind = building.ROOM_KINDS[int(index) % len(building.ROOM_KINDS)]
    spec = building.random_room(f"room-{split}-{index:03d}", rng, kind)
    own = np.random.default_rng([int(seed), 8, _SPLIT_STREAM[split], int(index)])
    return dataclasses.replace(spec, lighting=building.LIGHTING[int(own.choice(3, p=LIGHTING_P))])


def room_calibration(split: Split, index: int, seed: int) -> building.SensorCalibration:
    """The sensor calibration of room `index`'s device (its own random stream)."""
    return building.random_calibration(np.random.default_rng([int(seed), 9, _SPLIT_STREAM[split], int(index)]))


def fewshot_windows(log: building.SensorLog, queries: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """SHOT_POOL shots from the first days (absent, present, absent, ...), then balanced change windows.

    The shot days are the first SHOT_DAYS days, extended day by day (up to DAYS − 1) until both
    classes occur in them. Queries: windows ending after the shot days whose 30 minutes contain an
    occupancy change, ``queries // 2`` ending absent and as many ending present (fewer, equally
    many, if the room has fewer such windows).
    """
    occ = log.occupied
    ends = np.arange(WINDOW - 1, len(occ))
    days = SHOT_DAYS
    while days < DAYS - 1 and len(np.unique(occ[ends[ends < days * _MINUTES]])) < 2:
        days += 1
    early = ends[ends < days * _MINUTES]
    shot_ends = []
    for label in range(SHOT_POOL):
        pool = early[occ[early] == label % 2]
        shot_ends.append(int(rng.choice(pool if len(pool) else early)))
    late = ends[ends >= days * _MINUTES]
    csum = np.concatenate([[0], np.cumsum(np.abs(np.diff(occ)))])
    changing = late[csum[late] - csum[late - WINDOW + 1] > 0]
    per_class = min(queries // 2, *(int(np.sum(occ[changing] == c)) for c in (0, 1)))
    query_ends: list[int] = []
    for c in (0, 1):
        pool = changing[occ[changing] == c]
        query_ends += [int(e) for e in rng.choice(pool, size=per_class, replace=False)] if per_class else []
    all_ends = np.asarray(shot_ends + sorted(query_ends), np.int64)
    return windows_from_log(log.values, all_ends), occ[all_ends]


def log_windows(log: building.SensorLog, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` random windows of a room's log: features (n, WINDOW, 6) and presence at each window's end."""
    ends = np.sort(rng.choice(np.arange(WINDOW - 1, len(log.occupied)), size=min(n, len(log.occupied) - WINDOW + 1),
                              replace=False))
    return windows_from_log(log.values, ends), log.occupied[ends]


def build_backbone(keras: Any, n_features: int = FEATURES) -> Any:
    """30x6 window -> three temporal convs (16, 32, 32; kernels 5, 5, 3) -> global average -> features."""
    layers = keras.layers
    inp = keras.Input((WINDOW, N_FEATURES))
    x = layers.Reshape((WINDOW, 1, N_FEATURES))(inp)   # temporal convs as Conv2D: TFLM runs it natively
    for width, kernel, stride in ((16, 5, 1), (32, 5, 2), (n_features, 3, 2)):
        x = layers.Conv2D(width, (kernel, 1), strides=(stride, 1), padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, x, name="presence_backbone")


class PresenceUseCase(UseCase):
    """Room presence from CO2/temperature/humidity/light/motion windows; a device is a room."""

    name = "presence"
    kind = "classification"
    sensors = ("co2", "temperature", "humidity", "light", "motion")  # the names boards declare
    input_shape = (WINDOW, N_FEATURES)
    labels = ("absent", "present")
    real_dataset = "UCI Occupancy Detection"
    description = ("Smart-building presence detection from 30-minute windows of CO2, temperature, humidity, "
                   "light and motion; int8 temporal CNN backbone -> 32 features, float head 32-16-2.")

    def devices(self, split: Split, n_devices: int, *, samples_per_device: int, seed: int = 0) -> list[DeviceData]:
        """One simulated room (7 days, 1-minute steps) per device; windows sampled at random times.

        With real data (`with_data`), device i is day segment i of the split (cycled when more
        devices are asked for than there are days, with fresh random windows).
        """
        if self.data is not None:
            return self._real_devices(split, n_devices, samples_per_device, seed)
        out = []
        for i in range(int(n_devices)):
            spec = room_spec(split, i, seed)
            cal = room_calibration(split, i, seed)
            log = building.calibrate(building.simulate_room(spec, days=DAYS, seed=seed), cal)
            rng = np.random.default_rng([int(seed), 11, i])
            if split == "heldout":
                x, y = fewshot_windows(log, max(2, int(samples_per_device) - SHOT_POOL), rng)
            else:
                x, y = log_windows(log, int(samples_per_device), rng)
            out.append(DeviceData(spec.name, x, y, {"kind": spec.kind, "volume_m3": round(spec.volume, 1),
                                                    "ach": round(spec.ach, 2), "capacity": spec.capacity,
                                                    "has_motion": spec.has_motion and "motion" not in cal.missing,
                                                    "lighting": spec.lighting, "missing": list(cal.missing),
                                                    "occupied_fraction": round(float(log.occupied.mean()), 3)}))
        return out

    def split_shots(self, data: DeviceData, shots: int) -> tuple[DeviceData, DeviceData]:
        """Simulated held-out rooms: the first `shots` of the shot pool (balanced for even K) and the queries."""
        if self.data is not None or not data.device_id.startswith("room-heldout"):
            return super().split_shots(data, shots)
        if not 0 < shots <= SHOT_POOL or len(data) <= SHOT_POOL:
            raise ValueError(f"{data.device_id}: {shots} shots must be in 1..{SHOT_POOL} and leave query windows")
        return (DeviceData(data.device_id, data.x[:shots], data.y[:shots], data.meta),
                DeviceData(data.device_id, data.x[SHOT_POOL:], data.y[SHOT_POOL:], data.meta))

    def _load_real(self, path: Path) -> UciDays:
        return load_uci_days(path)

    def _real_devices(self, split: Split, n_devices: int, samples: int, seed: int) -> list[DeviceData]:
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        real: UciDays = self.load_real()
        logs = real.train if split == "train" else real.heldout
        out = []
        for i in range(int(n_devices)):
            log = logs[i % len(logs)]
            x, y = log_windows(log, int(samples), np.random.default_rng([int(seed), 11, _SPLIT_STREAM[split], i]))
            name = f"uci-{log.room}" + (f"-r{i // len(logs)}" if i >= len(logs) else "")
            out.append(DeviceData(name, x, y, {"source": "UCI Occupancy Detection", "day": log.room,
                                               "minutes": int(len(log.occupied)), "has_motion": False,
                                               "occupied_fraction": round(float(log.occupied.mean()), 3)}))
        return out

    def build(self, out_dir: Path, *, seed: int = 0, quick: bool = False,
              progress: ProgressFn | None = None) -> dict[str, Any]:
        """Simulate rooms, pretrain on training rooms, convert, measure on held-out rooms, export."""
        from firmware_models.build import export_artifacts, head_weights_from_dense
        from firmware_models.usecases import training

        cfg: dict[str, Any] = {"train_rooms": 12 if quick else 60, "heldout_rooms": 4 if quick else 20,
                               "windows_per_room": 200 if quick else 600, "epochs": 8 if quick else 25,
                               "batch_size": 64, "learning_rate": 3e-3, "seed": int(seed)}
        step = progress or (lambda stage, frac: None)
        step("simulate rooms" if self.data is None else "read UCI Occupancy", 0.0)
        t0 = time.perf_counter()
        data_prov: dict[str, Any] = {"generator": "firmware_models.datasets.building"}
        if self.data is not None:           # every real day segment is a device; none is left out
            real: UciDays = self.load_real()
            cfg.update(train_rooms=len(real.train), heldout_rooms=len(real.heldout))
            data_prov = real_provenance(self.real_dataset or "", self.data, real.files, real.rule,
                                        train_days=[d.room for d in real.train],
                                        heldout_days=[d.room for d in real.heldout],
                                        minutes=int(sum(len(d.occupied) for d in real.train + real.heldout)))
        train = self.devices("train", cfg["train_rooms"], samples_per_device=cfg["windows_per_room"], seed=seed)
        heldout = self.devices("heldout", cfg["heldout_rooms"], samples_per_device=cfg["windows_per_room"], seed=seed)
        x, y = np.concatenate([d.x for d in train]), np.concatenate([d.y for d in train])
        hx, hy = np.concatenate([d.x for d in heldout]), np.concatenate([d.y for d in heldout])
        t_data = time.perf_counter() - t0

        keras = training.seed_everything(seed)
        backbone = build_backbone(keras)
        dense = [keras.layers.Dense(HEAD_HIDDEN, activation="relu"), keras.layers.Dense(2)]
        model = keras.Model(backbone.input, dense[1](dense[0](backbone.output)), name="presence")
        t_train = training.fit_classifier(model, x, y, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                                          learning_rate=cfg["learning_rate"], progress=step,
                                          stage="train backbone + head", span=(0.1, 0.7))

        def on_export(stage: str, frac: float) -> None:
            step(stage, 0.7 + 0.3 * frac)

        return export_artifacts(
            out_dir, self.name, model, x, task=self.name, kind=self.kind,
            head_weights=head_weights_from_dense(dense), eval_x=hx, eval_y=hy, backbone_model=backbone,
            description=self.description, sensors=self.sensors,
            metrics={"metric": ("balanced present/absent accuracy on held-out rooms' windows where occupancy "
                                "changes (and their shot windows)") if self.data is None else
                     "present/absent accuracy on held-out days",
                     "heldout_present_fraction": float(hy.mean())},
            provenance={**data_prov, "seed": int(seed), "quick": bool(quick),
                        **({"days_per_room": DAYS} if self.data is None else {}), "window_minutes": WINDOW,
                        "train_rooms": cfg["train_rooms"], "heldout_rooms": cfg["heldout_rooms"],
                        "train_samples": int(len(x)), "heldout_samples": int(len(hx)),
                        "training": {k: cfg[k] for k in ("epochs", "batch_size", "learning_rate")},
                        "data_seconds": round(t_data, 3), "train_seconds": round(t_train, 3)},
            progress=on_export)
