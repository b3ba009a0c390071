"""A strategy's server-side state, saved with every checkpoint so that `resume` continues it exactly.

Flower strategies keep state between rounds in plain attributes: FedAdam, FedYogi and FedAdagrad
their moments ``m_t``/``v_t`` (dicts of arrays), FedAvgM its ``momentum_vector`` (a list of
arrays), the adaptive differential-privacy wrappers their evolving ``clipping_norm``. Re-creating
the strategy from ``run.json`` alone resets them, so a resumed FedAdam run would silently differ
from an uninterrupted one. A hand-written list per class would miss a user's own strategy, so every
attribute of a supported type is captured instead: arrays, lists and str-keyed dicts of arrays,
`ArrayRecord`s, and JSON scalars (int, float, str, bool, None), recursing into a wrapped strategy
(the DP wrappers' ``strategy``). Callables and other objects are left as the constructor made them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

Kinds = dict[str, dict[str, Any]]


def capture(strategy: Strategy) -> tuple[dict[str, np.ndarray], Kinds]:
    """``(arrays, description)`` of `strategy`'s state; the description is JSON-able."""
    arrays: dict[str, np.ndarray] = {}
    kinds: Kinds = {}
    _capture(strategy, "", arrays, kinds)
    return arrays, kinds


def restore(strategy: Strategy, arrays: dict[str, np.ndarray], kinds: Kinds) -> None:
    """Set the attributes `capture` described back on a freshly built `strategy` of the same spec."""
    for path, desc in kinds.items():
        owner, name = _owner(strategy, path)
        kind = desc["kind"]
        if kind == "value":
            value: Any = desc["value"]
        elif kind == "array":
            value = arrays[path]
        elif kind == "list":
            value = [arrays[f"{path}[{i}]"] for i in range(desc["length"])]
        elif kind == "dict":
            value = {k: arrays[f"{path}{{{k}}}"] for k in desc["keys"]}
        else:  # "record"
            value = ArrayRecord({k: Array(np.ascontiguousarray(arrays[f"{path}{{{k}}}"])) for k in desc["keys"]})
        setattr(owner, name, value)


def _capture(obj: object, prefix: str, arrays: dict[str, np.ndarray], kinds: Kinds) -> None:
    for name, value in sorted(vars(obj).items()):
        path = f"{prefix}{name}"
        if isinstance(value, Strategy):
            _capture(value, f"{path}.", arrays, kinds)
        elif value is None or isinstance(value, (bool, int, str)) or (
                isinstance(value, float) and math.isfinite(value)):
            kinds[path] = {"kind": "value", "value": value}
        elif isinstance(value, np.ndarray):
            arrays[path] = value
            kinds[path] = {"kind": "array"}
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            arrays.update({f"{path}[{i}]": v for i, v in enumerate(value)})
            kinds[path] = {"kind": "list", "length": len(value)}
        elif isinstance(value, ArrayRecord):
            arrays.update({f"{path}{{{k}}}": v.numpy() for k, v in value.items()})
            kinds[path] = {"kind": "record", "keys": list(value.keys())}
        elif (isinstance(value, dict) and value and all(isinstance(k, str) for k in value)
              and all(isinstance(v, np.ndarray) for v in value.values())):
            arrays.update({f"{path}{{{k}}}": v for k, v in value.items()})
            kinds[path] = {"kind": "dict", "keys": list(value)}


def _owner(strategy: Strategy, path: str) -> tuple[object, str]:
    """The object holding attribute `path` ("strategy.clipping_norm" -> the wrapped strategy)."""
    *chain, name = path.split(".")
    obj: object = strategy
    for part in chain:
        obj = getattr(obj, part)
    return obj, name
