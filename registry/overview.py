"""What the fleet dashboard asks the registry: devices, model versions with their boards, run lineage.

Each function runs one query from registry/queries/*.rq and returns JSON-ready dicts, like
`registry.questions` (which answers the CLI's questions about one model or device).
"""

from __future__ import annotations

from typing import Any

from rdflib import Literal

from registry.questions import load_query
from registry.store import RegistryStore


def fleet_devices(store: RegistryStore) -> list[dict[str, Any]]:
    """Every device: fleet, board, MCU, RAM/flash, online, last seen, model version, TD id."""
    return [{"iri": r["device"], "id": r.get("id") or r.get("name"), "name": r.get("name"), "fleet": r.get("fleet"),
             "board": r.get("board"), "mcu": r.get("mcu"), "use_case": r.get("use_case"),
             "ram_bytes": r.get("ram"), "flash_bytes": r.get("flash"), "online": r.get("online"),
             "last_seen": r.get("last_seen"), "model": r.get("model"), "model_name": r.get("model_name"),
             "model_version": r.get("model_version"), "td_id": r.get("td_id")}
            for r in store.select_values(load_query("fleet_devices"))]


def models_overview(store: RegistryStore) -> list[dict[str, Any]]:
    """Every model version with its needs, the boards that can run it (eligible devices per board),
    the run that generated it and its parent."""
    boards: dict[str, list[dict[str, Any]]] = {}
    for r in store.select_values(load_query("model_boards")):
        boards.setdefault(str(r["model"]), []).append({"board": r["board"], "devices": int(r["devices"])})
    out = []
    for r in store.select_values(load_query("models_overview")):
        iri = str(r["model"])
        out.append({"iri": iri, "name": r.get("name"), "sha256": r.get("sha256"), "version": r.get("version"),
                    "task": r.get("task"), "ram_needed_bytes": r.get("ram_need"),
                    "flash_needed_bytes": r.get("flash_need"), "run_id": r.get("run_id"), "parent": r.get("parent"),
                    "parent_name": r.get("parent_name"), "boards": boards.get(iri, []),
                    "eligible_devices": sum(b["devices"] for b in boards.get(iri, []))})
    return out


def run_models(store: RegistryStore, run_id: str) -> list[dict[str, Any]]:
    """The model versions that federated run `run_id` generated, with its rounds and devices."""
    return [{"iri": r["model"], "name": r.get("name"), "sha256": r.get("sha256"), "rounds": r.get("rounds"),
             "strategy": r.get("strategy"), "started": r.get("started"), "ended": r.get("ended"),
             "devices": sorted(str(r.get("devices") or "").split())}
            for r in store.select_values(load_query("run_models"), {"run_id": Literal(run_id)})]
