"""Provenance (PROV-O) of model versions and of what is built from them.

A federated run is a `prov:Activity` (`tf:FederatedRun`) associated with the devices that took part;
the model version it produced `prov:wasGeneratedBy` it and `prov:wasDerivedFrom` its parent model.
A firmware project (`tf:FirmwareProject`, a `prov:Entity`) `prov:wasDerivedFrom` the model version
and has a `tf:targetDevice` (the board); its `tf:FirmwareGeneration` activity `prov:used` both.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from rdflib import Graph, Literal, URIRef
from rdflib.namespace import PROV, RDF, XSD

from registry.exceptions import RegistryInputError
from registry.namespaces import SCHEMA, TF, check_local_id, mint_device, mint_firmware, mint_run, part
from registry.questions import resolve
from registry.store import RegistryStore
from registry.validation import validate


def _time(value: datetime | str, what: str) -> Literal:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise RegistryInputError(f"{what} {value!r} is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return Literal(value.astimezone(UTC).isoformat(), datatype=XSD.dateTime)


def record_lineage(store: RegistryStore, model_iri_or_sha: str | URIRef, run_id: str, rounds: int,
                   device_ids: Sequence[str], strategy: str, started: datetime | str, ended: datetime | str,
                   parent_model: str | URIRef | None = None) -> URIRef:
    """Record that federated run `run_id` produced a model version; returns the run's IRI.

    Parameters
    ----------
    model_iri_or_sha : str or URIRef
        The produced model (IRI, sha256 or name); it must already be in the registry.
    run_id : str
        Id of the run (letters, digits, `._:-`).
    rounds : int
        Rounds completed (>= 1).
    device_ids : sequence of str
        Devices that took part in at least one round.
    strategy : str
        e.g. "tinyreptile", "tinymetafed", "fedavg".
    started, ended : datetime or ISO 8601 str
        Wall-clock bounds of the run (naive times are taken as UTC).
    parent_model : str or URIRef, optional
        The model the run started from (IRI, sha256 or name; must be registered).
    """
    model = resolve(store, str(model_iri_or_sha), kind="model")
    run = mint_run(run_id)
    g = Graph()
    g.add((run, RDF.type, PROV.Activity))
    g.add((run, RDF.type, TF.FederatedRun))
    g.add((run, SCHEMA.identifier, Literal(check_local_id(run_id, what="run id"))))
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise RegistryInputError(f"rounds must be an integer, got {rounds!r}")
    g.add((run, TF.rounds, Literal(rounds)))
    g.add((run, TF.strategy, Literal(str(strategy))))
    g.add((run, PROV.startedAtTime, _time(started, "started")))
    g.add((run, PROV.endedAtTime, _time(ended, "ended")))
    for d in device_ids:
        device = mint_device(d)
        g.add((run, PROV.wasAssociatedWith, device))
        g.add((device, RDF.type, PROV.Agent))
        g.add((device, SCHEMA.identifier, Literal(d)))
    g.add((model, PROV.wasGeneratedBy, run))
    g.add((run, PROV.generated, model))
    if parent_model is not None:
        parent = resolve(store, str(parent_model), kind="model")
        g.add((model, PROV.wasDerivedFrom, parent))
        g.add((run, PROV.used, parent))
    validate(g, source=f"lineage of run {run_id}")
    store.write(g, replace_owners=[run])
    return run


def record_firmware(store: RegistryStore, model: str | URIRef, device: str | URIRef, project_id: str, *,
                    family: str, arena_bytes: int, learner_ram_bytes: int, generated: datetime | str,
                    title: str | None = None) -> URIRef:
    """Record a generated firmware project: model version -> project -> board; returns the project's IRI.

    Parameters
    ----------
    model, device : str or URIRef
        The registered model version and board (device) the project was generated from and for.
    project_id : str
        Id of the project (letters, digits, `._:-`); generating it again replaces its description.
    family : str
        The board family's template (e.g. "arduino-nrf52840", "linux").
    arena_bytes, learner_ram_bytes : int
        The TFLM arena the project allocates and the learner's RAM.
    generated : datetime or ISO 8601 str
        When the project was written.
    """
    m = resolve(store, str(model), kind="model")
    d = resolve(store, str(device), kind="device")
    project = mint_firmware(project_id)
    activity = part(project, "generation")
    when = _time(generated, "generated")
    g = Graph()
    g.add((project, RDF.type, PROV.Entity))
    g.add((project, RDF.type, TF.FirmwareProject))
    g.add((project, SCHEMA.identifier, Literal(project_id)))
    g.add((project, SCHEMA.name, Literal(title or project_id)))
    g.add((project, PROV.wasDerivedFrom, m))
    g.add((project, TF.targetDevice, d))
    g.add((project, TF.boardFamily, Literal(str(family))))
    for prop, value in ((TF.arenaBytes, arena_bytes), (TF.learnerRamBytes, learner_ram_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RegistryInputError(f"firmware project {project_id}: {prop.split('#')[-1]} must be an integer >= 0")
        g.add((project, prop, Literal(value)))
    g.add((project, PROV.generatedAtTime, when))
    g.add((project, PROV.wasGeneratedBy, activity))
    g.add((activity, RDF.type, PROV.Activity))
    g.add((activity, RDF.type, TF.FirmwareGeneration))
    g.add((activity, PROV.used, m))
    g.add((activity, PROV.used, d))
    g.add((activity, PROV.generated, project))
    g.add((activity, PROV.endedAtTime, when))
    validate(g, source=f"firmware project {project_id}")
    store.write(g, replace_owners=[project])
    return project
