"""Entry module of the Flower App: the top-level ServerApp and the gateway ClientApp of tinyfleet."""

from federation.hierarchy.gateway import app as gateway
from federation.hierarchy.server import app as server

__all__ = ["gateway", "server"]
