"""Strategies by CLI name, built from a plain parameter dict (what run.json stores for resume)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvg

from federation.exceptions import StrategyParameterError
from federation.strategies.reptile import Reptile, TinyReptile
from federation.strategies.tinymetafed import TinyMetaFed

STRATEGIES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "reptile": Reptile, "tinyreptile": TinyReptile,
                                       "tinymetafed": TinyMetaFed}

# Sampling settings every strategy gets from the coordinator: it has already waited for its quorum,
# so FedAvg's own endless wait for `min_available_nodes` must never trigger mid-run.
_SAMPLING = ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes")


def build_strategy(name: str, params: Mapping[str, Any], *, num_rounds: int) -> FedAvg:
    """An instance of strategy `name`; `params` keys are the constructor's keyword arguments."""
    if name not in STRATEGIES:
        raise StrategyParameterError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    kwargs = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1, **params}
    if name == "fedavg":
        kwargs = {k: v for k, v in kwargs.items() if k in _SAMPLING}
    else:
        kwargs["num_rounds"] = num_rounds
        if "local_layers" in kwargs:
            kwargs["local_layers"] = tuple(kwargs["local_layers"])
    try:
        return STRATEGIES[name](**kwargs)
    except TypeError as exc:
        raise StrategyParameterError(f"strategy {name!r}: {exc}") from None
