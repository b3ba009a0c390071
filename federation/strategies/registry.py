"""Strategies by name: the built-ins, any Flower strategy (``flwr:FedMedian``) or a user's own class.

A strategy is named by a *spec* and built from a plain parameter dict, which is what ``run.json``
stores, so that ``federate resume`` re-creates exactly the strategy the run started with:

* ``fedavg``, ``reptile``, ``tinymetafed``: the built-ins;
* ``flwr:<Class>``: any strategy class of ``flwr.serverapp.strategy`` (FedMedian, FedProx, Krum, ...);
* ``package.module:Class``: a `flwr.serverapp.strategy.Strategy` subclass of the user's own.

``fedavg`` also takes ``aggregation`` (``--aggregate``): "mean" is FedAvg, "median", "trimmed-mean"
(``trim``) and "krum" (``num_malicious_nodes``) are Flower's own FedMedian, FedTrimmedAvg and Krum;
Reptile and TinyMetaFed combine their updates with the same arithmetic (`federation.meta_update`).

Parameters are the class's constructor arguments (followed through ``**kwargs`` into the base
classes), checked by name before the class is called. `parse_strategy_args` turns
``--strategy-arg key=value`` strings into typed values (int, float, bool or str, guided by the
parameter's default).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedTrimmedAvg, Krum, Strategy

from federation.exceptions import StrategyParameterError
from federation.meta_update import AGGREGATIONS
from federation.strategies.reptile import Reptile
from federation.strategies.tinymetafed import TinyMetaFed

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "reptile": Reptile, "tinymetafed": TinyMetaFed}
FLWR_MODULE = "flwr.serverapp.strategy"

# Sampling settings every strategy that takes them gets from the coordinator: it has already waited
# for its quorum, so FedAvg's own endless wait for `min_available_nodes` must never trigger mid-run.
SAMPLING_DEFAULTS: dict[str, Any] = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1}
STRATEGY_PARAMETER = "strategy"
"""A constructor parameter of this name (Flower's DP wrappers) takes another strategy's spec."""


def flwr_strategy_names() -> list[str]:
    """The concrete strategy classes Flower ships (``flwr:<name>`` specs)."""
    module = importlib.import_module(FLWR_MODULE)
    return sorted(n for n in getattr(module, "__all__", ()) if _is_strategy_class(getattr(module, n, None)))


def describe_specs() -> str:
    """The accepted spec forms, for help texts and errors."""
    return f"{', '.join(STRATEGIES)}, flwr:<Class> (e.g. flwr:FedMedian) or package.module:Class"


def resolve_strategy(spec: str) -> type[Strategy]:
    """The strategy class a spec names; a `StrategyParameterError` (one line) otherwise."""
    if spec in STRATEGIES:
        return STRATEGIES[spec]
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name.isidentifier():
        raise StrategyParameterError(f"unknown strategy {spec!r}; use {describe_specs()}")
    if module_name == "flwr":
        module_name = FLWR_MODULE
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StrategyParameterError(f"strategy {spec!r}: cannot import {module_name} ({exc})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        hint = f"; Flower's: {', '.join(flwr_strategy_names())}" if module_name == FLWR_MODULE else ""
        raise StrategyParameterError(f"strategy {spec!r}: {module_name} has no class {class_name!r}{hint}")
    if not _is_strategy_class(cls):
        raise StrategyParameterError(f"strategy {spec!r}: {module_name}.{class_name} is not a concrete subclass "
                                     "of flwr.serverapp.strategy.Strategy")
    return cls


def strategy_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Constructor parameters of `cls`, following ``**kwargs`` into the base classes that receive them."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                out.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def parse_strategy_args(spec: str, items: Iterable[str]) -> dict[str, Any]:
    """``["key=value", ...]`` to typed constructor arguments of the strategy `spec` names.

    A value is read as the type of the parameter's default (int, float, bool or str); without a
    usable default as bool (true/false), int, float or, failing those, str. Unknown names and
    unreadable values are one-line `StrategyParameterError`s listing what is valid.
    """
    cls = resolve_strategy(spec)
    params = strategy_parameters(cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise StrategyParameterError(f"--strategy-arg {item!r}: expected key=value")
        if key not in params:
            raise StrategyParameterError(f"--strategy-arg {key}: {cls.__name__} has no parameter {key!r}; "
                                         f"valid: {', '.join(params)}")
        out[key] = _typed(cls.__name__, key, text.strip(), params[key].default)
    return out


def build_strategy(name: str, params: Mapping[str, Any], *, num_rounds: int,
                   defaults: Mapping[str, Any] | None = None) -> Strategy:
    """An instance of strategy spec `name` with constructor arguments `params`.

    `defaults` (and the coordinator's sampling settings, and `num_rounds`) are passed only to
    constructors that take them and only where `params` does not set them. A parameter named
    ``strategy`` given as a spec string (``"flwr:FedAvg"``) is built the same way first.
    """
    if name == "fedavg" and "aggregation" in params:
        return _robust_fedavg(params, num_rounds=num_rounds, defaults=defaults)
    cls = resolve_strategy(name)
    accepted = strategy_parameters(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise StrategyParameterError(f"strategy {name!r} has no parameter(s) {', '.join(unknown)}; "
                                     f"valid: {', '.join(accepted)}")
    fallback = {**SAMPLING_DEFAULTS, "num_rounds": num_rounds, **(defaults or {})}
    kwargs = {k: v for k, v in fallback.items() if k in accepted}
    kwargs.update(params)
    if isinstance(kwargs.get(STRATEGY_PARAMETER), str) and STRATEGY_PARAMETER in accepted:
        kwargs[STRATEGY_PARAMETER] = build_strategy(kwargs[STRATEGY_PARAMETER], {}, num_rounds=num_rounds,
                                                    defaults=defaults)
    if "local_layers" in kwargs:
        kwargs["local_layers"] = tuple(kwargs["local_layers"])
    missing = [n for n, p in accepted.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise StrategyParameterError(f"strategy {name!r} needs {', '.join(missing)} (--strategy-arg key=value)")
    try:
        return cls(**kwargs)
    except StrategyParameterError:
        raise
    except (TypeError, ValueError) as exc:
        raise StrategyParameterError(f"strategy {name!r}: {exc}") from None


FEDAVG_AGGREGATIONS: dict[str, tuple[str, dict[str, str]]] = {
    "mean": ("flwr:FedAvg", {}), "median": ("flwr:FedMedian", {}),
    "trimmed-mean": ("flwr:FedTrimmedAvg", {"trim": "beta"}),
    "krum": ("flwr:Krum", {"num_malicious_nodes": "num_malicious_nodes"}),
}
"""``fedavg`` with ``aggregation``: the Flower strategy and how the robust options map to its arguments."""


def _robust_fedavg(params: Mapping[str, Any], *, num_rounds: int, defaults: Mapping[str, Any] | None) -> Strategy:
    """FedAvg, or the Flower strategy that aggregates its replies robustly (FedMedian, FedTrimmedAvg, Krum)."""
    from federation.strategies._params import check_choice, check_int, check_real

    rest = dict(params)
    aggregation = rest.pop("aggregation")
    check_choice(FedAvg(), "aggregation", aggregation, AGGREGATIONS)
    spec, mapping = FEDAVG_AGGREGATIONS[aggregation]
    trim, malicious = rest.pop("trim", 0.2), rest.pop("num_malicious_nodes", 0)
    if aggregation == "trimmed-mean":
        check_real(FedTrimmedAvg(), "trim", trim, 0.0, 0.5, closed="left")
    if aggregation == "krum":
        check_int(Krum(), "num_malicious_nodes", malicious, 0)
    robust = {"trim": trim, "num_malicious_nodes": malicious}
    rest.update({target: robust[option] for option, target in mapping.items()})
    return build_strategy(spec, rest, num_rounds=num_rounds, defaults=defaults)


def _is_strategy_class(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, Strategy) and not inspect.isabstract(obj)


_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


def _typed(owner: str, key: str, text: str, default: object) -> Any:
    """`text` as the type of `default` (or a best guess when the default says nothing)."""

    def bad(expected: str) -> StrategyParameterError:
        return StrategyParameterError(f"--strategy-arg {key}={text}: {owner}.{key} takes {expected}")

    if isinstance(default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise bad("true or false")
    if isinstance(default, (int, float)):
        try:
            return int(text) if isinstance(default, int) else float(text)
        except ValueError:
            raise bad("an integer" if isinstance(default, int) else "a number") from None
    if isinstance(default, tuple):  # e.g. TinyMetaFed's local_layers=(-1,): "0,1"
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise bad("comma-separated integers") from None
    if isinstance(default, str):
        return text
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text
