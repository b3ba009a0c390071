"""Every SPARQL query the registry runs, one ``<name>.rq`` file each (see README.md here).

Why files and not strings in code: a query can be read, copied into any SPARQL console and reviewed
on its own, and bound values always travel as ``VALUES`` bindings, never pasted into the text.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_query(name: str) -> str:
    """Text of ``registry/queries/<name>.rq``."""
    return resources.files("registry.queries").joinpath(f"{name}.rq").read_text(encoding="utf-8")
