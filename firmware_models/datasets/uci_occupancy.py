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
                     values=np.asarray(values, np.float32), occupied=np.asarray(labels, np.int64))
