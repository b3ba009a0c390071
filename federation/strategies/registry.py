"""Strategies by CLI name, built from a plain parameter dict (what run.json stores for resume)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from federation.exceptions import StrategyParameterError
from federation.meta_update import AGGREGATIONS
from federation.strategies.reptile import Reptile
from federation.strategies.tinymetafed import TinyMetaFed

STRATEGIES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "reptile": Reptile, "tinymetafed": TinyMetaFed}

FEDAVG_AGGREGATIONS: dict[str, type[FedAvg]] = {"mean": FedAvg, "median": FedMedian, "trimmed-mean": FedTrimmedAvg,
                                                 "krum": Krum}
"""FedAvg's robust variants are Flower's own strategies; Reptile and TinyMetaFed combine their updates with
the same arithmetic (`federation.meta_update.reptile_update`)."""

# Sampling settings every strategy gets from the coordinator: it has already waited for its quorum,
# so FedAvg's own endless wait for `min_available_nodes` must never trigger mid-run.
_SAMPLING = ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes")


def build_strategy(name: str, params: Mapping[str, Any], *, num_rounds: int) -> FedAvg:
    """An instance of strategy `name`; `params` keys are the constructor's keyword arguments."""
    if name not in STRATEGIES:
        raise StrategyParameterError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    kwargs = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1, **params}
    if name == "fedavg":
        return _fedavg(kwargs)
    kwargs["num_rounds"] = num_rounds
    if "local_layers" in kwargs:
        kwargs["local_layers"] = tuple(kwargs["local_layers"])
    try:
        return STRATEGIES[name](**kwargs)
    except TypeError as exc:
        raise StrategyParameterError(f"strategy {name!r}: {exc}") from None


def _fedavg(params: dict[str, Any]) -> FedAvg:
    """FedAvg or the Flower strategy that aggregates its replies robustly (``aggregation``)."""
    from federation.strategies._params import check_choice, check_int, check_real

    kwargs = {k: v for k, v in params.items() if k in _SAMPLING}
    aggregation = params.get("aggregation", "mean")
    check_choice(FedAvg(), "aggregation", aggregation, AGGREGATIONS)
    if aggregation == "trimmed-mean":
        trim = params.get("trim", 0.2)
        check_real(FedTrimmedAvg(), "trim", trim, 0.0, 0.5, closed="left")
        kwargs["beta"] = float(trim)
    elif aggregation == "krum":
        f = params.get("num_malicious_nodes", 0)
        check_int(Krum(), "num_malicious_nodes", f, 0)
        kwargs["num_malicious_nodes"] = int(f)
    try:
        return FEDAVG_AGGREGATIONS[aggregation](**kwargs)
    except TypeError as exc:
        raise StrategyParameterError(f"strategy 'fedavg': {exc}") from None
