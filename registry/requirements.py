"""Ad-hoc requirement questions: boards for given RAM/flash/sensors, models for a task or sensor.

The published knowledge graphs ask these with hand-written SPARQL ("boards with >= 116 kB RAM, >=
531 kB flash, an accelerometer and a gyroscope"; "camera models that fit 127 kB RAM and 576 kB
flash"; "yes/no keyword models by accuracy"). Here they are functions (and `registry match --ram
--flash --sensor`, `registry models`) over the registry's byte-exact `tf:` figures, so they answer
the same on published graphs of either TinyML-schema generation and on tinyfleet's own data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rdflib import Literal
from rdflib.term import Node

from registry.exceptions import RegistryOptionError
from registry.queries import load_query
from registry.store import RegistryStore

MAX_SENSOR_KINDS = 8
"""How many `--sensor` requirements one question may carry (parameters ?k1 .. ?k8 of the queries)."""

_UNITS = {"": 1, "b": 1, "kb": 1000, "k": 1000, "kib": 1024, "mb": 1_000_000, "m": 1_000_000, "mib": 1 << 20,
          "gb": 1_000_000_000, "gib": 1 << 30}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_KIND = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ORDERS = ("name", "ram", "flash", "macs")
"""Orders of `models_for_requirements` other than a metric name (a metric orders best first)."""
_MAX_LISTED = 20


def parse_bytes(text: str | int, *, what: str = "size") -> int:
    """Bytes in `text`: "127kB" -> 127000, "64KiB" -> 65536, "2MB", "4096" (bytes).

    kB/MB are decimal (1000, 1,000,000), as the published graphs' om:kilobyte; KiB/MiB binary.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise RegistryOptionError(f"{what} {text} must not be negative")
        return text
    m = _SIZE.match(str(text))
    factor = _UNITS.get(m.group(2).lower()) if m else None
    if m is None or factor is None:
        raise RegistryOptionError(f"{what} {text!r} is not a size (e.g. 127kB, 64KiB, 2MB or a number of bytes)")
    return int(round(float(m.group(1)) * factor))


def sensor_kinds(kinds: Sequence[str]) -> list[str]:
    """Checked, lower-cased, de-duplicated sensor kinds (at most `MAX_SENSOR_KINDS`)."""
    out = list(dict.fromkeys(k.strip().lower() for k in kinds))
    bad = [k for k in out if not _KIND.match(k)]
    if bad:
        raise RegistryOptionError(f"sensor kind {bad[0]!r} must be lower-case letters, digits, '-' or '_'")
    if len(out) > MAX_SENSOR_KINDS:
        raise RegistryOptionError(f"at most {MAX_SENSOR_KINDS} sensor kinds per question, got {len(out)}")
    return out


def _kinds_bindings(kinds: Sequence[str]) -> dict[str, Node]:
    return {f"k{i}": Literal(k) for i, k in enumerate(sensor_kinds(kinds), start=1)}


def _split(text: Any) -> list[str]:
    return sorted(str(text).split()) if text else []


def devices_for_requirements(store: RegistryStore, *, ram: int | str | None = None, flash: int | str | None = None,
                             sensors: Sequence[str] = (), use_index: bool = True) -> list[dict[str, Any]]:
    """Devices with at least `ram` and `flash` bytes and every sensor kind in `sensors`.

    Rows have the shape of `questions.devices_for_model` (the requirement as `*_needed_bytes`),
    ordered by name; from the capability index unless `use_index=False` (devices_for_requirements.rq).
    """
    ram_need = parse_bytes(ram, what="--ram") if ram is not None else None
    flash_need = parse_bytes(flash, what="--flash") if flash is not None else None
    kinds = sensor_kinds(sensors)
    index = store.capabilities() if use_index else None
    fast = index.devices_for_requirements(ram=ram_need, flash=flash_need, kinds=kinds) if index is not None else None
    if fast is not None:
        return fast
    b = _kinds_bindings(kinds)
    if ram_need is not None:
        b["ram_need"] = Literal(ram_need)
    if flash_need is not None:
        b["flash_need"] = Literal(flash_need)
    return [{"iri": r["device"], "name": r.get("name"), "ram_bytes": r.get("ram"), "ram_needed_bytes": ram_need,
             "flash_bytes": r.get("flash"), "flash_needed_bytes": flash_need, "sensors": _split(r.get("sensors")),
             "online": r.get("online")}
            for r in store.select_values(load_query("devices_for_requirements"), b)]


def _check_metric_name(store: RegistryStore, metric: str) -> None:
    """Refuse an order that is neither a figure nor a metric any model in the store has (a typo).

    Why: an unknown metric would order nothing and print an empty column, silently.
    """
    known = [str(r["name"]) for r in store.select_values(load_query("metric_names"))]
    if metric in known:
        return
    shown = ", ".join(known[:_MAX_LISTED]) + (", ..." if len(known) > _MAX_LISTED else "")
    raise RegistryOptionError(f"--order-by {metric!r} is not one of {', '.join(ORDERS)} nor a metric in the "
                              f"registry ({shown or 'none'})")


def models_for_requirements(store: RegistryStore, *, task: str | None = None, sensors: Sequence[str] = (),
                            ram: int | str | None = None, flash: int | str | None = None, text: str | None = None,
                            order_by: str = "name", ascending: bool | None = None) -> list[dict[str, Any]]:
    """Models for a task and/or sensor kinds that fit `ram`/`flash`, ordered by a metric or a figure.

    Parameters
    ----------
    task : str, optional
        The model's `tf:task` (e.g. "keywords"; published graphs give their category, e.g. "classification").
    sensors : sequence of str
        Sensor kinds the model must consume (e.g. ["camera"]).
    ram, flash : int or str, optional
        The most RAM / flash the model may need ("127kB", "576kB", bytes).
    text : str, optional
        Case-insensitive text its name, alias or description must contain (e.g. "yes/no").
    order_by : str, default="name"
        "name", "ram", "flash", "macs" (smallest first), or a metric name such as "accuracy" (best
        first: highest, models without the metric last; the int8 figure when a model has one).
    ascending : bool, optional
        Override the direction (e.g. True for a loss such as "mse").
    """
    order_by = order_by.strip()
    if not order_by:
        raise RegistryOptionError("--order-by must be 'name', 'ram', 'flash', 'macs' or a metric name")
    b = _kinds_bindings(sensors)
    if task:
        b["task"] = Literal(task)
    if ram is not None:
        b["ram_max"] = Literal(parse_bytes(ram, what="--ram"))
    if flash is not None:
        b["flash_max"] = Literal(parse_bytes(flash, what="--flash"))
    if text is not None and text.strip():
        b["q"] = Literal(text.strip().lower())
    metric = order_by if order_by not in ORDERS else None
    if metric:
        b["metric"] = Literal(metric)
    rows = [{"iri": r["model"], "name": r.get("name"), "task": r.get("task_name"),
             "ram_needed_bytes": r.get("ram_need"), "flash_needed_bytes": r.get("flash_need"), "macs": r.get("macs"),
             "sensors": _split(r.get("sensors")), "metric": metric, "value": r.get("value")}
            for r in store.select_values(load_query("models_for_requirements"), b)]
    if metric and all(r["value"] is None for r in rows):
        _check_metric_name(store, metric)
    keys = {"name": None, "ram": "ram_needed_bytes", "flash": "flash_needed_bytes", "macs": "macs"}
    key = keys.get(order_by, "value")
    if key is None:
        return rows[::-1] if ascending is False else rows
    up = ascending if ascending is not None else metric is None
    present = [r for r in rows if isinstance(r[key], (int, float))]
    absent = [r for r in rows if not isinstance(r[key], (int, float))]
    present.sort(key=lambda r: (r[key] if up else -r[key], r["name"] or "", r["iri"]))
    return present + absent


__all__ = ["MAX_SENSOR_KINDS", "ORDERS", "devices_for_requirements", "models_for_requirements", "parse_bytes",
           "sensor_kinds"]
