"""Loader for the UCI Occupancy Detection CSV files (datatraining.txt, datatest.txt, datatest2.txt).

The real files start with the header
`"date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"` and every data row
begins with a quoted row id that the header does not name, e.g.
`"1","2015-02-04 17:51:00",23.18,27.272,426,721.25,0.00479298817650529,1`. Rows without the id are
accepted too. There is no motion sensor in that data set: the motion channel comes back as NaN
(missing), which the presence model is trained to tolerate.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from firmware_models.datasets.building import CHANNELS, SensorLog
from firmware_models.exceptions import DatasetError

HEADER = ["date", "Temperature", "Humidity", "Light", "CO2", "HumidityRatio", "Occupancy"]


def _float(path: Path, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}:{line}: column {name!r} is not a number: {text!r}") from None
    return value


def load_uci_occupancy(path: str | Path) -> SensorLog:
    """Read one UCI Occupancy CSV into a `SensorLog` (1-minute samples of one room).

    Raises
    ------
    DatasetError
        Missing file, wrong header, wrong column count, unparsable number/date or an occupancy
        label other than 0/1; the message names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: UCI occupancy CSV not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({type(exc).__name__})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [h.strip() for h in rows[0]] != HEADER:
        got = rows[0] if rows else []
        raise DatasetError(f"{path}:1: expected header {','.join(HEADER)}, got {','.join(got)!s}")
    times: list[float] = []
    values: list[list[float]] = []
    labels: list[int] = []
    for line, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) == len(HEADER) + 1:
            row = row[1:]                 # drop the unnamed row id of the real files
        if len(row) != len(HEADER):
            raise DatasetError(f"{path}:{line}: expected {len(HEADER)} columns (+ optional row id), got {len(row)}")
        try:
            stamp = datetime.strptime(row[0].strip(), "%Y-%m-%d %H:%M:%S").timestamp()
        except ValueError:
            raise DatasetError(f"{path}:{line}: bad date {row[0]!r} (expected YYYY-MM-DD HH:MM:SS)") from None
        t, rh, light, co2 = (_float(path, line, HEADER[i], row[i]) for i in (1, 2, 3, 4))
        occ = row[6].strip()
        if occ not in ("0", "1"):
            raise DatasetError(f"{path}:{line}: column 'Occupancy' must be 0 or 1, got {occ!r}")
        times.append(stamp)
        values.append([co2, t, rh, light, np.nan])
        labels.append(int(occ))
    if not values:
        raise DatasetError(f"{path}: no data rows")
    assert CHANNELS == ("co2", "temperature", "humidity", "light", "motion")
    return SensorLog(room=path.stem, minutes=(np.asarray(times) - times[0]) / 60.0,
                     values=np.asarray(values, np.float32), occupied=np.asarray(labels, np.int64), start=times[0])


# --- the real data set split by device -------------------------------------------------------------
STANDARD_FILES = ("datatraining.txt", "datatest.txt", "datatest2.txt")
HELDOUT_PREFIX = "datatest"
MAX_GAP_MINUTES = 10.0     # a longer gap between two rows starts a new segment
MIN_SEGMENT_ROWS = 60      # shorter segments (e.g. the last minutes of a file) make no device


@dataclass
class UciDays:
    """The UCI Occupancy recording cut into devices: one device = one contiguous calendar day.

    Why days: the three files record the same office, so rooms cannot be the devices. Days differ
    in who came when, in daylight and in weather, which makes each day a task of its own; cutting
    at midnight (and at gaps) keeps every window inside one device, so no window of a held-out
    day overlaps a training day.

    Attributes
    ----------
    train, heldout : list of SensorLog
        One log per day; `room` is `<file stem>-<YYYY-MM-DD>`.
    files : list of Path
        The CSV files read.
    rule : str
        Which split rule was applied (for the model card).
    """

    train: list[SensorLog]
    heldout: list[SensorLog]
    files: list[Path]
    rule: str


def day_segments(log: SensorLog) -> list[SensorLog]:
    """Cut a recorded log at local midnight and at gaps > `MAX_GAP_MINUTES`; drop short pieces."""
    if log.start is None:
        raise ValueError("day_segments needs a recorded log (start time)")
    stamps = log.start + 60.0 * log.minutes
    days = np.asarray([datetime.fromtimestamp(t).strftime("%Y-%m-%d") for t in stamps])
    cut = np.flatnonzero((days[1:] != days[:-1]) | (np.diff(log.minutes) > MAX_GAP_MINUTES)) + 1
    out: list[SensorLog] = []
    for a, b in zip(np.r_[0, cut], np.r_[cut, len(days)], strict=True):
        if b - a < MIN_SEGMENT_ROWS:
            continue
        name = f"{log.room}-{days[a]}"
        if any(s.room == name for s in out):          # same day after a gap
            name = f"{name}-{len(out)}"
        out.append(SensorLog(room=name, minutes=log.minutes[a:b] - log.minutes[a], values=log.values[a:b],
                             occupied=log.occupied[a:b], start=float(stamps[a])))
    return out


def _csv_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: UCI occupancy CSV or folder not found")
    files = [path / name for name in STANDARD_FILES if (path / name).is_file()]
    if not files:
        raise DatasetError(f"{path}: none of {', '.join(STANDARD_FILES)} found (or pass one CSV file)")
    return files


def load_uci_days(path: str | Path, *, heldout_fraction: float = 0.25) -> UciDays:
    """Read the UCI files (a folder with the standard names, or one CSV) and split their days.

    Rule: in a folder, days of `datatest*.txt` are held out and days of the other files train,
    which is the published train/test split of the data set. One CSV alone is cut the same way
    and its last `heldout_fraction` of days (at least one) are held out, chronologically, so
    that the model is tested on days after the ones it learned from.

    Raises
    ------
    DatasetError
        Missing path, malformed CSV (file and line named), or too few day segments to hold out one.
    """
    path = Path(path)
    files = _csv_files(path)
    per_file = {f: day_segments(load_uci_occupancy(f)) for f in files}
    for f, days in per_file.items():
        if not days:
            raise DatasetError(f"{f}: no stretch of {MIN_SEGMENT_ROWS} consecutive minutes within one day")
    held = [f for f in files if f.stem.startswith(HELDOUT_PREFIX)]
    if held and len(held) < len(files):
        train = [d for f in files if f not in held for d in per_file[f]]
        heldout = [d for f in held for d in per_file[f]]
        rule = "days of datatest*.txt held out, days of the other files train (the data set's own split)"
    else:
        days = sorted((d for f in files for d in per_file[f]), key=lambda d: float(d.start or 0.0))
        if len(days) < 2:
            raise DatasetError(f"{files[0]}: only one day segment of >= {MIN_SEGMENT_ROWS} minutes; "
                               "need at least two to hold one out")
        n_held = max(1, round(heldout_fraction * len(days)))
        train, heldout = days[:-n_held], days[-n_held:]
        rule = f"chronological: last {n_held} of {len(days)} day segments held out"
    return UciDays(train, heldout, files, rule)
