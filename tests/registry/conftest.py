"""The registry tests' store: the same test on the embedded store and on a real SPARQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry.namespaces import REGISTRY_GRAPH
from registry.store import RegistryStore, open_store
from tests.support.registry import OxigraphServer


@pytest.fixture(params=["embedded", "remote"])
def store(request: pytest.FixtureRequest) -> Iterator[RegistryStore]:
    """An empty registry, embedded (in memory) or on the session's Oxigraph server (its graph emptied
    before and after the test: the server is shared by the session)."""
    if request.param == "embedded":
        st = open_store(memory=True)
    else:
        server: OxigraphServer = request.getfixturevalue("oxigraph_server")
        st = open_store(endpoint=f"{server.url}/query", update_endpoint=f"{server.url}/update")
        st.update(f"DROP SILENT GRAPH <{REGISTRY_GRAPH}>")
    yield st
    if request.param == "remote":
        st.update(f"DROP SILENT GRAPH <{REGISTRY_GRAPH}>")
    st.close()
