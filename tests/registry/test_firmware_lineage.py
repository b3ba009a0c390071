"""PROV-O lineage of generated firmware projects: model version -> firmware project -> board.

On the embedded store: recording, replacing (same project id), the SPARQL of `firmware_projects`
(registry/queries/firmware_projects.rq), the device profile a project is generated from, and one-line
refusals for bad input (SHACL and argument checks), with nothing written.
"""

from __future__ import annotations

import pytest

from registry import add_device, add_model_report
from registry.exceptions import RegistryInputError, UnknownEntityError
from registry.lineage import record_firmware
from registry.questions import device_profile, firmware_projects, lineage, model_profile
from registry.store import RegistryStore, open_store
from tests.support.registry import SHA_SMALL, report, td


@pytest.fixture()
def store() -> RegistryStore:
    st = open_store(memory=True)
    add_model_report(st, report(SHA_SMALL, arena=2_000, flash=20_000), {"name": "sine", "task": "sine"})
    add_device(st, td("dev-ok", 262_144, 1_048_576, ["scalar-signal"]))
    return st


def test_project_is_derived_from_the_model_and_targets_the_board(store: RegistryStore) -> None:
    iri = record_firmware(store, "sine", "dev-ok", "sine-dev-ok-1", family="arduino-nrf52840", arena_bytes=3_600,
                          learner_ram_bytes=5_137, generated="2026-11-30T10:00:00+00:00")
    assert str(iri) == "https://w3id.org/tinyfleet/id/firmware/sine-dev-ok-1"
    rows = firmware_projects(store, "sine")
    assert rows == [{"iri": str(iri), "id": "sine-dev-ok-1", "device": "https://w3id.org/tinyfleet/id/device/dev-ok",
                     "device_id": "dev-ok", "family": "arduino-nrf52840", "arena_bytes": 3_600,
                     "generated": "2026-11-30T10:00:00+00:00"}]
    assert lineage(store, SHA_SMALL)["firmware"] == rows
    model = store.select("SELECT ?m WHERE { ?p prov:wasDerivedFrom ?m }", {"p": iri})[0]["m"]
    device = store.select("SELECT ?d WHERE { ?p tf:targetDevice ?d }", {"p": iri})[0]["d"]
    assert str(model).endswith(SHA_SMALL) and str(device).endswith("/dev-ok")
    assert store.ask("ASK WHERE { ?a a tf:FirmwareGeneration ; prov:used ?m , ?d ; prov:generated ?p }",
                     {"p": iri, "m": model, "d": device})
    # generating the same project again replaces its description (one project, new time)
    record_firmware(store, "sine", "dev-ok", "sine-dev-ok-1", family="arduino-nrf52840", arena_bytes=4_000,
                    learner_ram_bytes=5_137, generated="2026-11-30T11:00:00+00:00")
    again = firmware_projects(store, "sine")
    assert len(again) == 1 and again[0]["arena_bytes"] == 4_000


def test_device_and_model_profiles(store: RegistryStore) -> None:
    prof = device_profile(store, "dev-ok")
    assert prof["id"] == "dev-ok" and prof["ram_bytes"] == 262_144 and prof["flash_bytes"] == 1_048_576
    model = model_profile(store, "sine")
    assert (model["name"], model["sha256"], model["ram_needed_bytes"]) == ("sine", SHA_SMALL, 2_000)


def test_bad_input_is_refused_and_nothing_is_written(store: RegistryStore) -> None:
    with pytest.raises(UnknownEntityError):
        record_firmware(store, "sine", "no-such-device", "p1", family="linux", arena_bytes=1, learner_ram_bytes=1,
                        generated="2026-11-30T10:00:00")
    with pytest.raises(RegistryInputError, match="arenaBytes must be an integer >= 0"):
        record_firmware(store, "sine", "dev-ok", "p2", family="linux", arena_bytes=-5, learner_ram_bytes=1,
                        generated="2026-11-30T10:00:00")
    with pytest.raises(RegistryInputError, match="firmware project id"):
        record_firmware(store, "sine", "dev-ok", "bad id/", family="linux", arena_bytes=1, learner_ram_bytes=1,
                        generated="2026-11-30T10:00:00")
    with pytest.raises(RegistryInputError, match="ISO 8601"):
        record_firmware(store, "sine", "dev-ok", "p3", family="linux", arena_bytes=1, learner_ram_bytes=1,
                        generated="yesterday")
    assert firmware_projects(store, "sine") == []
