"""One hierarchical run on this machine, start to finish: deploy, ``flwr run``, follow, collect, stop.

This is the body of ``tinyfleet federate run --gateways N``; the benchmark calls it too.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from devices.link.address import BrokerAddress
from federation.checkpoint import load_checkpoint, save_checkpoint
from federation.coordinator import FINAL_FILE, METRICS_FILE, arrays_sha256
from federation.exceptions import CheckpointError, FederationError
from federation.hierarchy.deployment import CONNECTION, DeviceGroup, LocalDeployment, _bin
from federation.hierarchy.server import INITIAL_FILE
from federation.hierarchy.settings import HierarchyConfig


def run_hierarchical(settings: HierarchyConfig, run_dir: Path, *, initial: dict[str, np.ndarray],
                     group: DeviceGroup, secure: bool = True, central: BrokerAddress | None = None,
                     central_dir: Path | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
                     on_ready: Callable[[LocalDeployment], None] | None = None) -> dict[str, Any]:
    """Run `settings` on a fresh local deployment of ``settings.gateways`` sites; always stop it.

    Returns the same summary as a flat run (``run_id``, ``rounds``, ``final_sha256``, ``run_dir``,
    ``final``) plus ``deployment`` (addresses, PIDs of everything started, PIDs stopped) and
    ``flower`` (Flower's run id and, when `flwr ls` reports it, its traffic counters).
    """
    cfg = settings.run
    run_dir = Path(run_dir).resolve()
    if (run_dir / "run.json").exists():
        raise CheckpointError(f"{run_dir} already holds a run; use another --run-id")
    if not cfg.simulate:
        raise FederationError("--gateways N starts its own sites and needs --simulate M (M >= N devices); "
                              "to federate existing sites, deploy the Flower app yourself (docs/scaling.md)")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir)
    save_checkpoint(run_dir / INITIAL_FILE, arrays=initial, state={"run_id": cfg.run_id, "round": 0})
    deployment = LocalDeployment(run_dir / "deployment", gateways=settings.gateways, devices=cfg.simulate,
                                 group=group, fleet=cfg.fleet, secure=secure, central=central, central_dir=central_dir,
                                 ready_timeout=max(120.0, cfg.quorum_timeout))
    t0 = time.monotonic()
    with deployment:
        ready_s = time.monotonic() - t0
        if on_ready is not None:
            on_ready(deployment)
        flower_run = deployment.submit(settings, run_dir)
        per_round = 2 * (cfg.round_timeout + cfg.quorum_timeout + 60.0)
        status = deployment.wait(run_dir, timeout=cfg.rounds * per_round + 300.0, on_line=on_round)
        traffic = flower_traffic(deployment, flower_run)
        described = deployment.describe()
    described["stopped_pids"] = sorted(set(deployment.procs.stopped_pids) | set(deployment.broker_pids))
    described["ready_seconds"] = round(ready_s, 3)
    final, _ = load_checkpoint(run_dir / FINAL_FILE)
    rounds = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    if status.get("final_sha256") != arrays_sha256(final):
        raise FederationError(f"{run_dir / FINAL_FILE} does not match what the ServerApp reported")
    return {"run_id": cfg.run_id, "rounds": rounds, "final_sha256": arrays_sha256(final), "run_dir": str(run_dir),
            "final": final, "deployment": described, "flower": {"run_id": flower_run, **traffic}}


def flower_traffic(deployment: LocalDeployment, flower_run: int) -> dict[str, Any]:
    """Flower's own account of the run (status, bytes in/out at the SuperLink), via ``flwr ls``."""
    try:
        proc = subprocess.run([_bin("flwr"), "ls", CONNECTION, "--run-id", str(flower_run), "--format", "json"],
                              capture_output=True, text=True, env=deployment.procs.env, timeout=120, check=False)
        doc = json.loads(proc.stdout[proc.stdout.index("{"):])
        run = doc["runs"][0]
    except (ValueError, KeyError, IndexError, OSError, subprocess.TimeoutExpired):
        return {}
    traffic = run.get("network-traffic") or {}
    return {"status": run.get("status"), "superlink_bytes_in": traffic.get("inbound-bytes"),
            "superlink_bytes_out": traffic.get("outbound-bytes"),
            "serverapp_seconds": (run.get("compute-time") or {}).get("serverapp-seconds"),
            "clientapp_seconds": (run.get("compute-time") or {}).get("clientapp-seconds")}
