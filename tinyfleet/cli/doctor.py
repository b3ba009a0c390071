"""`tinyfleet doctor`: what is installed and whether a private broker can start.

Fast on purpose: versions come from package metadata (no `import tensorflow`, which takes seconds),
and the broker check starts and stops one private Mosquitto on a free loopback port.
"""

from __future__ import annotations

import tempfile
import time
from typing import Annotated, Any

import typer

from firmware_models.versions import tool_versions
from tinyfleet.cli.output import JSON_HELP, print_json, table

# Tools without which tinyfleet cannot work; the others are optional fallbacks.
REQUIRED = ("tensorflow", "ai-edge-litert", "tflite-micro", "flwr", "rdflib", "paho-mqtt", "numpy")
SHOWN = ("tensorflow", "keras", "ai-edge-litert", "tflite-runtime", "tflite-micro", "flwr", "rdflib", "oxrdflib",
         "pyshacl", "paho-mqtt", "numpy", "tinyfleet", "python")


def broker_check() -> dict[str, Any]:
    """Find the mosquitto binary and start/stop a private broker on a free loopback port."""
    from broker.process import MosquittoBroker, find_mosquitto
    from firmware_models.exceptions import TinyFleetError

    binary = find_mosquitto()
    result: dict[str, Any] = {"binary": binary, "starts": False, "port": None, "start_seconds": None, "error": None}
    if binary is None:
        result["error"] = "mosquitto is not installed (Debian/Ubuntu: apt-get install -y mosquitto)"
        return result
    with tempfile.TemporaryDirectory(prefix="tinyfleet-doctor-") as tmp:
        broker = MosquittoBroker(tmp)
        t0 = time.perf_counter()
        try:
            info = broker.start()
            result.update(starts=True, port=info.port, start_seconds=round(time.perf_counter() - t0, 3))
        except TinyFleetError as exc:
            result["error"] = str(exc)
        finally:
            broker.stop()
    return result


def doctor(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Report tool versions and whether a private Mosquitto starts on a free loopback port.

    Example: tinyfleet doctor --json
    """
    versions = tool_versions()
    broker = broker_check()
    missing = [t for t in REQUIRED if not versions.get(t)]
    ok = not missing and bool(broker["starts"])
    if as_json:
        print_json({"ok": ok, "versions": versions, "missing": missing, "mosquitto": broker})
    else:
        rows = [[t, versions.get(t) or ("MISSING" if t in REQUIRED else "not installed")] for t in SHOWN]
        rows.append(["mosquitto binary", broker["binary"] or "MISSING"])
        rows.append(["private broker", f"started on 127.0.0.1:{broker['port']} in {broker['start_seconds']} s"
                     if broker["starts"] else f"FAILED: {broker['error']}"])
        table("tinyfleet doctor", ["component", "status"], rows)
    if not ok:
        raise typer.Exit(1)
