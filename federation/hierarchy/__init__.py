"""Hierarchical federation on Flower's deployment runtime: gateway SuperNodes over site brokers.

`server` (the top-level ServerApp), `gateway` (the ClientApp each SuperNode runs for its site),
`settings` (what travels in Flower's run and node configs), `deployment` (everything on one
machine: SuperLink, SuperNodes, site brokers, device groups), `bridge` (site brokers bridged to a
central one), `processes` (start, await and stop by PID). docs/scaling.md has the design.
"""

from pathlib import Path

FLOWER_APP_DIR = Path(__file__).with_name("flower_app")
"""The Flower App directory that `flwr run` ships (pyproject.toml + the entry module)."""
