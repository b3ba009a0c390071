"""Flower strategies for federated meta-learning; stock `FedAvg` is the baseline."""

from flwr.serverapp.strategy import FedAvg

from federation.strategies.reptile import Reptile, TinyReptile
from federation.strategies.tinymetafed import TinyMetaFed

__all__ = ["FedAvg", "Reptile", "TinyMetaFed", "TinyReptile"]
