"""The capability index: matchmaking answered with numpy, kept equal to the graph on every write.

Why: a match at fleet scale returns thousands of rows, and the store spends most of the time on the
joins (devices_for_model took 448 ms p95 at 10,000 devices x 1,000 models on the embedded store).
The graph stays the source of truth; this index holds only what matchmaking compares - RAM, flash
and sensor-kind bit sets per device and per model - plus the columns of the answer rows.

How it stays equal to the graph:

- It is built by the queries `capability_*.rq`, which are the model-independent (device-independent)
  halves of devices_for_model.rq (models_for_device.rq) with the same patterns, so the index holds
  exactly the rows SPARQL would join, duplicates included. The filters applied here (numeric `>=`,
  flash need 0 or bound flash, every required kind present as the same RDF term) are the queries'
  own FILTERs; answers are ordered by (name, IRI) as their ORDER BY.
- Every write (`RegistryStore.write`) changes a stamp in the meta graph in the same SPARQL update;
  after it, the entities the write touched are re-read with the same queries (`VALUES ?device {...}`)
  and replaced here. An index whose stamp differs from the store's (another process wrote, a write
  bypassed the index, a crash before the index was saved) is rebuilt from the graph before use.
- Anything the index cannot answer exactly as SPARQL would (a model with two RAM figures, a figure
  that is not a number) returns None, and the caller runs the SPARQL query instead.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rdflib import URIRef
from rdflib.term import Node

from registry.queries import load_query


class RowSource(Protocol):
    """What the index reads from a store (`registry.store.RegistryStore` is one)."""

    def select_values(self, query: str) -> list[dict[str, Any]]: ...

    def select_values_in(self, query: str, var: str, terms: Sequence[Node]) -> list[dict[str, Any]]: ...

    def read_stamp(self) -> str | None: ...

FORMAT_VERSION = 1
_STRING_DT = "http://www.w3.org/2001/XMLSchema#string"


def kind_key(kind: str) -> str:
    """The index key of a plain sensor-kind literal (as the capability queries compute it)."""
    return f"{kind}|{_STRING_DT}|"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _row_key(entry: tuple[str, list[Any]]) -> tuple[str, str]:
    """Sort key of an index row: the queries' ORDER BY ?name ?iri."""
    return str(entry[1][0]), entry[0]


@dataclass
class _Compiled:
    """Arrays of one side (devices or models), rows sorted by (name, IRI).

    `rows` holds each row's answer dict with the columns that depend on the question left None (a
    match copies it and fills those in: half the time of building the dict, which dominates a match);
    `inexact` counts rows whose figures are not numbers (then SPARQL answers instead).
    """

    order: list[tuple[str, list[Any]]]
    keys: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    ram: np.ndarray
    flash: np.ndarray
    bits: np.ndarray
    inexact: int


@dataclass
class CapabilityIndex:
    """Per-entity rows and kind sets; compiled to numpy arrays on first use after a change."""

    stamp: str | None = None
    devices: dict[str, list[list[Any]]] = field(default_factory=dict)
    device_kinds: dict[str, list[str]] = field(default_factory=dict)
    needs: dict[str, list[list[Any]]] = field(default_factory=dict)
    model_kinds: dict[str, list[str]] = field(default_factory=dict)
    models: dict[str, list[list[Any]]] = field(default_factory=dict)
    dirty: bool = False
    _compiled: dict[str, _Compiled] = field(default_factory=dict, repr=False)
    _compiled_vocab: dict[str, int] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ building and refreshing
    @classmethod
    def build(cls, store: RowSource) -> CapabilityIndex:
        """Read the whole index from the graph (stamp read first: a later write makes it stale)."""
        idx = cls(stamp=store.read_stamp())
        idx._load(store, None)
        idx.dirty = True
        return idx

    def refresh(self, store: RowSource, entities: Iterable[URIRef], *, stamp: str | None) -> None:
        """Re-read `entities` from the graph after a write and replace their entries."""
        touched = {str(e) for e in entities}
        prefixes = tuple(t + "/" for t in touched)
        for table in (self.devices, self.device_kinds, self.needs, self.model_kinds, self.models):
            touched.update(k for k in table if k.startswith(prefixes))
        for table in (self.devices, self.device_kinds, self.needs, self.model_kinds, self.models):
            for key in touched:
                table.pop(key, None)
        if touched:
            self._load(store, sorted(touched), keep_compiled=True)
            self._patch(touched)
        self.stamp = stamp
        self.dirty = True

    def _load(self, store: RowSource, only: Sequence[str] | None, *, keep_compiled: bool = False) -> None:
        def rows(name: str, var: str) -> list[dict[str, Any]]:
            text = load_query(name)
            if only is None:
                return store.select_values(text)
            out: list[dict[str, Any]] = []
            for k in range(0, len(only), 500):  # bounded VALUES blocks
                out += store.select_values_in(text, var, [URIRef(i) for i in only[k:k + 500]])
            return out

        for r in rows("capability_devices", "device"):
            self.devices.setdefault(r["device"], []).append(
                [r.get("name"), r.get("ram"), r.get("flash"), r.get("online"), r.get("sensors")])
        for r in rows("capability_device_kinds", "device"):
            self.device_kinds.setdefault(r["device"], []).append(r["key"])
        for r in rows("capability_model_needs", "model"):
            self.needs.setdefault(r["model"], []).append([r.get("ram_need"), r.get("flash_need")])
        for r in rows("capability_model_kinds", "model"):
            self.model_kinds.setdefault(r["model"], []).append(r["key"])
        for r in rows("capability_models", "model"):
            self.models.setdefault(r["model"], []).append(
                [r.get("name"), r.get("task"), r.get("ram_need"), r.get("flash_need"), r.get("sensors")])
        if not keep_compiled:
            self._forget_compiled()

    def _forget_compiled(self) -> None:
        self._compiled.clear()
        self._compiled_vocab = None

    # ------------------------------------------------------------------ persistence (embedded store)
    def save(self, path: Path) -> None:
        """Write the index next to an embedded store (atomically: temp file + rename)."""
        data = {"version": FORMAT_VERSION, "stamp": self.stamp, "devices": self.devices,
                "device_kinds": self.device_kinds, "needs": self.needs, "model_kinds": self.model_kinds,
                "models": self.models}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        tmp.replace(path)
        self.dirty = False

    @classmethod
    def load(cls, path: Path) -> CapabilityIndex | None:
        """The index saved at `path`, or None when absent or unreadable (it is then rebuilt)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != FORMAT_VERSION:
                return None
            return cls(stamp=data["stamp"], devices=data["devices"], device_kinds=data["device_kinds"],
                       needs=data["needs"], model_kinds=data["model_kinds"], models=data["models"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------ compiled arrays
    def _vocabulary(self) -> dict[str, int]:
        vocab = self._compiled_vocab
        if vocab is None:
            keys = sorted({k for ks in self.device_kinds.values() for k in ks}
                          | {k for ks in self.model_kinds.values() for k in ks})
            vocab = self._compiled_vocab = {k: i for i, k in enumerate(keys)}
        return vocab

    def _bits(self, keys: Iterable[str], words: int) -> np.ndarray | None:
        """Bit set of kind keys; None when a key is in no device's or model's kinds at all."""
        vocab = self._vocabulary()
        out = np.zeros(words, dtype=np.uint64)
        for k in keys:
            i = vocab.get(k)
            if i is None:
                return None
            out[i // 64] |= np.uint64(1) << np.uint64(i % 64)
        return out

    def _columns(self, side: str) -> tuple[dict[str, list[list[Any]]], dict[str, list[str]], int, int]:
        if side == "devices":
            return self.devices, self.device_kinds, 1, 2
        return self.models, self.model_kinds, 2, 3

    def _arrays(self, side: str, entries: list[tuple[str, list[Any]]],
                words: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]], int]:
        """Numeric columns, kind bits, answer dicts and the count of inexact rows of `entries`."""
        _, kinds, ram_col, flash_col = self._columns(side)
        ram = np.array([_number(r[ram_col]) for _, r in entries], dtype=float).reshape(-1)  # None -> nan
        flash = np.array([_number(r[flash_col]) for _, r in entries], dtype=float).reshape(-1)
        inexact = self._inexact(side, entries)
        bits = np.zeros((len(entries), words), dtype=np.uint64)
        cache: dict[str, np.ndarray] = {}
        for n, (iri, _) in enumerate(entries):
            if iri not in cache:
                cache[iri] = self._bits(kinds.get(iri, ()), words)  # type: ignore[assignment]  # all known
            bits[n] = cache[iri]
        if side == "devices":
            rows = [{"iri": iri, "name": r[0], "ram_bytes": r[1], "ram_needed_bytes": None, "flash_bytes": r[2],
                     "flash_needed_bytes": None, "sensors": _split(r[4]), "online": r[3]} for iri, r in entries]
        else:
            rows = [{"iri": iri, "name": r[0], "task": r[1], "ram_bytes": None, "ram_needed_bytes": r[2],
                     "flash_bytes": None, "flash_needed_bytes": r[3], "sensors": _split(r[4])} for iri, r in entries]
        return ram, flash, bits, rows, inexact

    def _inexact(self, side: str, entries: Iterable[tuple[str, list[Any]]]) -> int:
        """How many rows have a figure that is not a number (SPARQL would compare it otherwise)."""
        _, _, ram_col, flash_col = self._columns(side)
        return sum(1 for _, r in entries if _number(r[ram_col]) is None
                   or (r[flash_col] is not None and _number(r[flash_col]) is None))

    def _compile(self, side: str) -> _Compiled:
        found = self._compiled.get(side)
        if found is not None:
            return found
        words = max(1, math.ceil(len(self._vocabulary()) / 64))
        table = self._columns(side)[0]
        order = sorted(((iri, row) for iri, rows in table.items() for row in rows), key=_row_key)
        ram, flash, bits, rows, inexact = self._arrays(side, order, words)
        compiled = _Compiled(order, [_row_key(e) for e in order], rows, ram, flash, bits, inexact)
        self._compiled[side] = compiled
        return compiled

    def _patch(self, touched: set[str]) -> None:
        """Replace the compiled rows of `touched` entities in place (O(rows) copies, no re-sort).

        Why: after a write the next match would otherwise rebuild and sort every row (tens of ms at
        10,000 devices); a write touches a few entities. Falls back to a full rebuild when the write
        brought a sensor kind the compiled bit sets have no bit for.
        """
        vocab = self._compiled_vocab
        if vocab is None:
            return
        for side in ("devices", "models"):
            _, kinds, _, _ = self._columns(side)
            if any(k not in vocab for iri in touched for k in kinds.get(iri, ())):
                self._forget_compiled()
                return
        for side in ("devices", "models"):
            c = self._compiled.get(side)
            if c is None:
                continue
            table = self._columns(side)[0]
            keep = [i for i, (iri, _) in enumerate(c.order) if iri not in touched]
            new = sorted(((iri, row) for iri in touched for row in table.get(iri, [])), key=_row_key)
            if len(keep) == len(c.order) and not new:
                continue
            removed_inexact = self._inexact(side, (e for e in c.order if e[0] in touched))
            idx = np.asarray(keep, dtype=np.intp)
            keys = [c.keys[i] for i in keep]
            at = [bisect.bisect_left(keys, _row_key(e)) for e in new]
            ram, flash, bits, rows, inexact = self._arrays(side, new, c.bits.shape[1])
            self._compiled[side] = _Compiled(
                _merge([c.order[i] for i in keep], at, new), _merge(keys, at, [_row_key(e) for e in new]),
                _merge([c.rows[i] for i in keep], at, rows), np.insert(c.ram[idx], at, ram),
                np.insert(c.flash[idx], at, flash), np.insert(c.bits[idx], at, bits, axis=0),
                c.inexact - removed_inexact + inexact)

    # ------------------------------------------------------------------ answers
    def devices_for(self, *, ram_need: float | None, flash_need: float | None, kinds: Sequence[str],
                    flash_zero_means_none: bool, fill: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Answer rows of the devices passing the RAM, flash and sensor-kind filters, in (name, IRI) order.

        `fill` gives the question's own columns (the needs compared against).

        `flash_zero_means_none` is devices_for_model.rq's `?flash_need = 0 ||` rule; without it
        a flash need requires a bound flash figure (devices_for_requirements.rq).
        """
        c = self._compile("devices")
        if c.inexact:
            return None
        mask = np.ones(len(c.order), dtype=bool)
        if ram_need is not None:
            mask &= c.ram >= ram_need
        if flash_need is not None and not (flash_zero_means_none and flash_need == 0):
            with np.errstate(invalid="ignore"):
                mask &= ~np.isnan(c.flash) & (c.flash >= flash_need)
        if kinds:
            need = self._bits(kinds, c.bits.shape[1])
            if need is None:
                return []  # a kind no device has
            mask &= np.all((c.bits & need) == need, axis=1)
        return _answer(c, mask, fill)

    def models_for(self, *, ram: float, flash: float | None, kinds: Sequence[str],
                   fill: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Answer rows of the models that fit a device with `ram`, `flash` and `kinds`, in (name, IRI) order."""
        c = self._compile("models")
        if c.inexact:
            return None
        mask = c.ram <= ram
        flash_ok = c.flash == 0
        if flash is not None:
            flash_ok |= c.flash <= flash
        mask &= flash_ok
        have = self._bits(kinds, c.bits.shape[1])  # a device's kinds are all in the vocabulary
        if have is None:
            return None
        mask &= np.all((c.bits & ~have) == 0, axis=1)
        return _answer(c, mask, fill)

    def devices_for_model(self, model: str) -> list[dict[str, Any]] | None:
        """`questions.devices_for_model` rows, or None when only SPARQL can answer exactly."""
        needs = self.needs.get(model, [])
        if not needs:
            return []  # no tf:ramRequiredBytes: the query has no rows either
        if len(needs) != 1 or _number(needs[0][0]) is None or _number(needs[0][1]) is None:
            return None
        ram_need, flash_need = needs[0]
        return self.devices_for(ram_need=float(ram_need), flash_need=float(flash_need),
                                kinds=self.model_kinds.get(model, []), flash_zero_means_none=True,
                                fill={"ram_needed_bytes": ram_need, "flash_needed_bytes": flash_need})

    def devices_for_requirements(self, *, ram: int | None, flash: int | None,
                                 kinds: Sequence[str]) -> list[dict[str, Any]] | None:
        """`requirements.devices_for_requirements` rows for plain sensor-kind strings, or None."""
        return self.devices_for(ram_need=ram, flash_need=flash, kinds=[kind_key(k) for k in kinds],
                                flash_zero_means_none=False,
                                fill={"ram_needed_bytes": ram, "flash_needed_bytes": flash})

    def models_for_device(self, device: str) -> list[dict[str, Any]] | None:
        """`questions.models_for_device` rows, or None when only SPARQL can answer exactly."""
        pairs = {(r[1], r[2]) for r in self.devices.get(device, [])}
        if not pairs:
            return []  # no tf:ramBytes: the query has no rows either
        if len(pairs) != 1:
            return None
        ram, flash = next(iter(pairs))
        if _number(ram) is None or (flash is not None and _number(flash) is None):
            return None
        return self.models_for(ram=float(ram), flash=None if flash is None else float(flash),
                               kinds=self.device_kinds.get(device, []), fill={"ram_bytes": ram, "flash_bytes": flash})


def _split(text: Any) -> list[str]:
    return sorted(str(text).split()) if text else []


def _answer(c: _Compiled, mask: np.ndarray, fill: dict[str, Any]) -> list[dict[str, Any]]:
    """Copies of the answer dicts of the rows in `mask`, with the question's columns filled in."""
    out = []
    for i in np.flatnonzero(mask).tolist():
        row = c.rows[i].copy()
        row.update(fill)
        row["sensors"] = row["sensors"][:]  # the caller's own list
        out.append(row)
    return out


def _merge(items: list[Any], at: list[int], new: list[Any]) -> list[Any]:
    """`items` with `new[k]` inserted before position `at[k]` (positions ascending, in `items`)."""
    out: list[Any] = []
    prev = 0
    for pos, value in zip(at, new, strict=True):
        out.extend(items[prev:pos])
        out.append(value)
        prev = pos
    out.extend(items[prev:])
    return out


__all__ = ["CapabilityIndex", "kind_key"]
