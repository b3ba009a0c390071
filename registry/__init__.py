"""Semantic registry of tinyfleet: models and devices as an RDF knowledge graph.

Public API (everything else is internal):

- `open_store(path=None, *, endpoint=None, update_endpoint=None, auth=None, memory=False)`
- `add_model(store, path, card=None)`, `add_device(store, td)`, `import_file(store, path)`
- `devices_for_model`, `explain_model`, `models_for_device`, `explain_device`, `models_by_metric`,
  `inventory`, `lineage`, `search`, `raw_query`, `resolve`
- `devices_for_requirements(store, ram=, flash=, sensors=)`, `models_for_requirements(store, task=, sensors=,
  ram=, flash=, text=, order_by=)` (registry.requirements): questions without a model or device
- `record_lineage(store, model_iri_or_sha, run_id, rounds, device_ids, strategy, started, ended, parent_model=None)`
- `set_presence(store, device_id, online=..., seen=None)`, `PresenceListener` (registry.presence)

Importing this package does not import TensorFlow.
"""

from registry.ingest_device import add_device, set_presence
from registry.ingest_model import add_model, add_model_report
from registry.interop import import_file
from registry.lineage import record_lineage
from registry.questions import (
    devices_for_model,
    explain_device,
    explain_model,
    inventory,
    lineage,
    models_by_metric,
    models_for_device,
    raw_query,
    resolve,
    search,
)
from registry.requirements import devices_for_requirements, models_for_requirements
from registry.store import RegistryStore, open_store

__all__ = ["RegistryStore", "add_device", "add_model", "add_model_report", "devices_for_model",
           "devices_for_requirements", "explain_device", "models_for_requirements",
           "explain_model", "import_file", "inventory", "lineage", "models_by_metric", "models_for_device",
           "open_store", "raw_query", "record_lineage", "resolve", "search", "set_presence"]
