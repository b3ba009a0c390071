"""`tinyfleet devices deploy` in-process (Typer's CliRunner) against real simulated devices and Mosquitto."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from broker.process import BrokerInfo
from devices.link.address import BrokerAddress
from devices.simulator import FleetSimulator
from tests.support.models import SineBuild
from tinyfleet.cli.main import app


def test_deploy_swaps_the_model_in_on_every_device_and_names_failures(
        mosquitto: BrokerInfo, sine_build: SineBuild, tmp_path: Path) -> None:
    # Prepare: two sine devices running the built model
    address = BrokerAddress(mosquitto.host, mosquitto.port)
    model = sine_build.directory / "model.tflite"
    with FleetSimulator(n=2, use_case="sine", address=address, state_root=tmp_path, fleet="deploy-cli",
                        models_dir=sine_build.directory.parent, samples_per_device=8, telemetry_s=0.0) as sim:
        assert len(sim.device_ids) == 2
        # Execute: roll the model out to the fleet's online devices
        ok = CliRunner().invoke(app, ["devices", "deploy", str(model), "--fleet", "deploy-cli",
                                      "--broker", address.url, "--json"])
        # Assert: both swapped, one JSON document on stdout
        assert ok.exit_code == 0, ok.stderr
        doc = json.loads(ok.stdout)
        assert doc["outcomes"] == {"swapped": 2} and doc["ok"] is True and doc["artifact"] == "model.tflite"
        # a device that is not there: exit 1 and its outcome named in one line
        missing = CliRunner().invoke(app, ["devices", "deploy", str(model), "--fleet", "deploy-cli",
                                           "--broker", address.url, "--device", "sim-0000", "--device", "ghost",
                                           "--timeout", "3"])
        assert missing.exit_code == 1
        assert missing.stderr.strip().splitlines()[-1] == \
            "error: 1 of 2 devices did not swap the model in: ghost (no reply)"
