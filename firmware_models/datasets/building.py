"""A smart-building simulator: rooms, occupancy schedules and the sensor streams they cause.

Why a simulator: presence detection must be trained and tested per room (a device is a room),
with rooms that differ in size, ventilation, daylight and use, and with the faults real building
sensors have (noise, slow calibration drift, dropouts, rooms without a motion sensor). One-minute
steps, like the UCI Occupancy Detection data.

Physics, kept simple but causal: CO2 follows the well-mixed mass balance
dC/dt = n·G/V − λ·(C − C_out) (G = 0.31 L/min of CO2 per person, λ = air changes per minute);
moisture follows the same balance with 50 g/h per person; temperature is pulled to the HVAC set
point and pushed up by ~100 W per person; light is daylight through the window plus lamps that
occupants switch on (and sometimes forget); a PIR sensor counts movements.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

CHANNELS = ("co2", "temperature", "humidity", "light", "motion")
MINUTES_PER_DAY = 24 * 60
RoomKind = Literal["office", "meeting", "lecture", "lab", "open_space", "night_shift"]
ROOM_KINDS: tuple[RoomKind, ...] = ("office", "meeting", "lecture", "lab", "open_space")


@dataclass
class SensorLog:
    """Time series of one room.

    Attributes
    ----------
    room : str
        Room (device) name.
    minutes : np.ndarray
        float64 (n,) minutes since the start.
    values : np.ndarray
        float32 (n, 5) readings in `CHANNELS` order (ppm, °C, %RH, lux, PIR counts/min); NaN = missing.
    occupied : np.ndarray
        int64 (n,) ground truth, 1 when at least one person is in the room.
    start : float or None
        POSIX time of the first sample for recorded logs (None for simulated ones), so a
        recording can be cut into calendar days.
    """

    room: str
    minutes: np.ndarray
    values: np.ndarray
    occupied: np.ndarray
    start: float | None = None


@dataclass(frozen=True)
class RoomSpec:
    """Everything that makes one room behave differently from another."""

    name: str
    kind: RoomKind
    volume: float            # m^3
    ach: float               # air changes per hour
    capacity: int
    window_lux: float        # peak daylight at the sensor
    has_motion: bool
    co2_outdoor: float
    co2_offset: float        # sensor calibration error, ppm
    co2_drift_per_day: float
    temp_offset: float
    missing_rate: float      # probability per minute that a dropout burst starts
    start_weekday: int       # weekday (0 = Monday) of the first simulated day


def random_room(name: str, rng: np.random.Generator, kind: RoomKind | None = None) -> RoomSpec:
    """Draw a room; its kind decides size and capacity, the rest varies freely."""
    kind = kind or ROOM_KINDS[int(rng.integers(len(ROOM_KINDS)))]
    volume, capacity = {
        "office": (rng.uniform(25, 70), int(rng.integers(1, 4))),
        "meeting": (rng.uniform(40, 120), int(rng.integers(4, 13))),
        "lecture": (rng.uniform(150, 400), int(rng.integers(20, 61))),
        "lab": (rng.uniform(60, 200), int(rng.integers(2, 7))),
        "open_space": (rng.uniform(200, 500), int(rng.integers(8, 25))),
        "night_shift": (rng.uniform(40, 120), int(rng.integers(2, 6))),
    }[kind]
    return RoomSpec(
        name=name, kind=kind, volume=float(volume), ach=float(rng.uniform(0.5, 4.0)), capacity=capacity,
        window_lux=float(rng.choice([0.0, rng.uniform(50, 200), rng.uniform(200, 700)])),
        has_motion=bool(rng.random() < 0.75), co2_outdoor=float(rng.uniform(390, 450)),
        co2_offset=float(rng.normal(0, 30)), co2_drift_per_day=float(rng.normal(0, 4)),
        temp_offset=float(rng.normal(0, 0.5)), missing_rate=float(rng.uniform(0.0, 0.004)),
        start_weekday=int(rng.integers(7)),
    )


def _occupants(spec: RoomSpec, days: int, rng: np.random.Generator,
               change_day: int | None = None, new_kind: RoomKind = "night_shift") -> np.ndarray:
    """People in the room per minute (int), from the room kind's weekly schedule."""
    n = np.zeros(days * MINUTES_PER_DAY, np.int64)
    for day in range(days):
        kind = new_kind if change_day is not None and day >= change_day else spec.kind
        weekday = (spec.start_weekday + day) % 7
        base = day * MINUTES_PER_DAY
        def occupy(start_h: float, end_h: float, people: int, base: int = base) -> None:
            a = base + int(np.clip(start_h, 0, 24) * 60)
            b = base + int(np.clip(end_h, 0, 24) * 60)
            n[a:b] += max(1, people)
        workday = weekday < 5
        if kind == "office":
            if workday or rng.random() < 0.08:
                for _ in range(spec.capacity):
                    if rng.random() < 0.85:
                        arrive, leave = rng.normal(8.5, 0.6), rng.normal(17.3, 0.8)
                        lunch = rng.normal(12.3, 0.3)
                        occupy(arrive, lunch, 1)
                        occupy(lunch + rng.uniform(0.4, 1.0), leave, 1)
        elif kind == "meeting":
            if workday:
                for slot in np.arange(8.0, 18.0, 0.5):
                    if rng.random() < 0.12 and n[base + int(slot * 60)] == 0:
                        occupy(slot + rng.uniform(0, 0.1), slot + rng.choice([0.5, 1.0, 1.5]) - rng.uniform(0, 0.1),
                               int(rng.integers(2, spec.capacity + 1)))
        elif kind == "lecture":
            if workday:
                for start in (8.25, 10.0, 11.75, 14.0, 15.75):
                    if rng.random() < 0.6:
                        occupy(start - rng.uniform(0, 0.2), start + 1.5, int(spec.capacity * rng.uniform(0.3, 1.0)))
        elif kind == "lab":
            if workday or rng.random() < 0.3:
                for _ in range(int(rng.integers(1, 4))):
                    s = rng.uniform(7, 21)
                    occupy(s, s + rng.uniform(0.5, 4), int(rng.integers(1, spec.capacity + 1)))
        elif kind == "open_space":
            if workday:
                occupy(rng.normal(7.5, 0.3), rng.normal(19, 0.5), max(1, int(spec.capacity * rng.uniform(0.2, 0.5))))
                occupy(rng.normal(9, 0.3), rng.normal(17, 0.3), int(spec.capacity * rng.uniform(0.2, 0.5)))
        else:  # night_shift
            if weekday < 6:
                occupy(rng.normal(21.5, 0.3), 24, int(rng.integers(1, spec.capacity + 1)))
                occupy(0, rng.normal(6, 0.3), int(rng.integers(1, spec.capacity + 1)))
    return n


def _saturation_ratio(temp_c: float) -> float:
    """Humidity ratio (kg/kg) of saturated air at 1 atm (Magnus formula)."""
    p_sat = 610.94 * np.exp(17.625 * temp_c / (temp_c + 243.04))
    return 0.622 * p_sat / (101_325.0 - p_sat)


def simulate_room(spec: RoomSpec, *, days: int = 7, seed: int = 0, change_day: int | None = None,
                  new_kind: RoomKind = "night_shift") -> SensorLog:
    """Simulate `days` of one-minute sensor readings for `spec`.

    Parameters
    ----------
    change_day : int, optional
        From this day on the room follows `new_kind`'s schedule (the drift demo: same room,
        different use).
    """
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])  # str hash() is salted per process
    people = _occupants(spec, days, rng, change_day, new_kind)
    steps = len(people)
    lam = spec.ach / 60.0
    co2, temp = spec.co2_outdoor + 20.0, 20.0
    w_out = 0.006 + rng.uniform(-0.002, 0.002)
    w = w_out
    lamps_on, forgot = False, 0
    cloud = 1.0
    values = np.empty((steps, 5), np.float64)
    for i in range(steps):
        minute = i % MINUTES_PER_DAY
        hour = minute / 60.0
        if minute == 0:
            cloud = rng.uniform(0.2, 1.0)
        k = people[i]
        co2 += k * 310.0 / spec.volume - lam * (co2 - spec.co2_outdoor)
        w += k * 0.00083 / (1.2 * spec.volume) - lam * (w - w_out)
        t_out = 8.0 + 6.0 * np.sin(2 * np.pi * (hour - 9) / 24)
        setpoint = 21.5 if 6 <= hour < 19 else 18.5
        temp += 0.05 * (setpoint - temp) + 0.004 * (t_out - temp) + k * 0.1 / (0.34 * spec.volume) \
            + rng.normal(0, 0.01)
        if k > 0 and not lamps_on and rng.random() < 0.9 - 0.6 * (cloud * spec.window_lux > 400):
            lamps_on, forgot = True, 0
        if k == 0 and lamps_on and forgot == 0:
            forgot = int(rng.integers(1, 90)) if rng.random() < 0.1 else 1
        if forgot > 0:
            forgot -= 1
            if forgot == 0:
                lamps_on = False
        daylight = spec.window_lux * cloud * max(0.0, np.sin(np.pi * (hour - 6.5) / 12.5))
        light = daylight + (rng.uniform(380, 480) if lamps_on else 0.0)
        rh = 100.0 * w / _saturation_ratio(temp)
        motion = rng.poisson(1.5 + 0.8 * min(k, 6)) * (rng.random() > 0.15) if k > 0 else float(rng.random() < 0.005)
        values[i] = (co2, temp, rh, light, motion)
    # sensor imperfections: offsets, drift, noise, dropouts
    days_elapsed = np.arange(steps) / MINUTES_PER_DAY
    values[:, 0] += spec.co2_offset + spec.co2_drift_per_day * days_elapsed + rng.normal(0, 12, steps)
    values[:, 1] += spec.temp_offset + rng.normal(0, 0.08, steps)
    values[:, 2] += rng.normal(0, 0.6, steps)
    values[:, 3] = np.maximum(0.0, values[:, 3] + rng.normal(0, 6, steps))
    if not spec.has_motion:
        values[:, 4] = np.nan
    for ch in range(5):
        starts = np.flatnonzero(rng.random(steps) < spec.missing_rate)
        for s in starts:
            values[s:s + int(rng.integers(1, 30)), ch] = np.nan
    return SensorLog(spec.name, np.arange(steps, dtype=np.float64), values.astype(np.float32),
                     (people > 0).astype(np.int64))
