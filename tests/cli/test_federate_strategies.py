"""`tinyfleet federate run --strategy flwr:X | pkg.mod:Class --strategy-arg k=v`, in-process (Typer's CliRunner).

Each run is self-contained: `--simulate N` starts a private, secured Mosquitto and N real device
agents. Argument mistakes are refused before anything starts, with one error line.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.process import find_mosquitto
from tinyfleet.cli.main import app

FAST = ["--task", "sine", "--rounds", "2", "--simulate", "3", "--local-steps", "5", "--samples-per-device", "16",
        "--round-timeout", "20", "--json"]


def federate(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["federate", "run", "--out", str(tmp_path), *args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture()
def broker_available() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")


@pytest.mark.usefixtures("broker_available")
def test_flwr_fedmedian_and_fedprox_run_from_the_cli(tmp_path: Path) -> None:
    for spec, extra, rid in (("flwr:FedMedian", [], "med"),
                             ("flwr:FedProx", ["--strategy-arg", "proximal_mu=0.5"], "prox")):
        code, out, err = federate(tmp_path, *FAST, "--strategy", spec, *extra, "--run-id", rid)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["strategy"] == spec and len(doc["rounds"]) == 2
        assert all((r["replies"], r["failures"], r["missing"]) == (3, 0, 0) for r in doc["rounds"]), doc["rounds"]
        assert all("skipped" not in r for r in doc["rounds"])
        run = json.loads((tmp_path / rid / "run.json").read_text())
        assert run["strategy"] == spec
        assert (tmp_path / rid / "final.npz").is_file()
        lines = (tmp_path / rid / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "prox" / "run.json").read_text())["strategy_params"] == \
        {"fraction_train": 1.0, "proximal_mu": 0.5}
    status = CliRunner().invoke(app, ["federate", "status", str(tmp_path / "prox"), "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["state"] == "finished"


@pytest.mark.usefixtures("broker_available")
def test_a_users_own_strategy_class_runs_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "half_step.py").write_text(textwrap.dedent('''
        from flwr.app import Array, ArrayRecord
        from flwr.serverapp.strategy import FedAvg


        class HalfStep(FedAvg):
            """FedAvg that moves only `step` of the way to the average."""

            def __init__(self, step: float = 0.5, **kwargs):
                super().__init__(**kwargs)
                self.step = step

            def configure_train(self, server_round, arrays, config, grid):
                self.theta = arrays
                return super().configure_train(server_round, arrays, config, grid)

            def aggregate_train(self, server_round, replies):
                avg, metrics = super().aggregate_train(server_round, replies)
                if avg is None:
                    return None, None
                new = {k: Array(t.numpy() + self.step * (avg[k].numpy() - t.numpy())) for k, t in self.theta.items()}
                return ArrayRecord(new), metrics
    '''))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, "half_step", raising=False)
    code, out, err = federate(tmp_path, *FAST, "--strategy", "half_step:HalfStep", "--strategy-arg", "step=0.25",
                              "--run-id", "own")
    assert code == 0, err
    assert [r["replies"] for r in json.loads(out)["rounds"]] == [3, 3]
    assert json.loads((tmp_path / "own" / "run.json").read_text())["strategy_params"]["step"] == 0.25


@pytest.mark.parametrize(("args", "message"), [
    (["--strategy", "flwr:FedProx", "--strategy-arg", "proximal_muu=1"],
     "error: --strategy-arg proximal_muu: FedProx has no parameter 'proximal_muu'; valid: fraction_train, "
     "fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes, weighted_by_key, arrayrecord_key, "
     "configrecord_key, train_metrics_aggr_fn, evaluate_metrics_aggr_fn, proximal_mu"),
    (["--strategy", "flwr:FedProx", "--strategy-arg", "proximal_mu=strong"],
     "error: --strategy-arg proximal_mu=strong: FedProx.proximal_mu takes a number"),
    (["--strategy", "flwr:Krum", "--strategy-arg", "num_malicious_nodes=1.5"],
     "error: --strategy-arg num_malicious_nodes=1.5: Krum.num_malicious_nodes takes an integer"),
    (["--strategy", "flwr:FedProx", "--strategy-arg", "proximal_mu"],
     "error: --strategy-arg 'proximal_mu': expected key=value"),
    (["--strategy", "fedprox"],
     "error: unknown strategy 'fedprox'; use fedavg, reptile, tinymetafed, flwr:<Class> (e.g. flwr:FedMedian) or "
     "package.module:Class"),
    (["--strategy", "flwr:FedNope"], "error: strategy 'flwr:FedNope': flwr.serverapp.strategy has no class 'FedNope'; "
                                     "Flower's: Bulyan, DifferentialPrivacyClientSideAdaptiveClipping"),
    (["--strategy", "no_such_module:Strategy"],
     "error: strategy 'no_such_module:Strategy': cannot import no_such_module"),
    (["--strategy", "json:JSONDecoder"], "error: strategy 'json:JSONDecoder': json.JSONDecoder is not a concrete "
                                         "subclass of flwr.serverapp.strategy.Strategy"),
    (["--strategy", "flwr:DifferentialPrivacyServerSideFixedClipping", "--strategy-arg", "strategy=flwr:FedAvg"],
     "error: strategy 'flwr:DifferentialPrivacyServerSideFixedClipping' needs noise_multiplier, clipping_norm, "
     "num_sampled_clients (--strategy-arg key=value)"),
    (["--strategy", "flwr:DifferentialPrivacyServerSideFixedClipping", "--strategy-arg", "strategy=flwr:FedAvg",
      "--strategy-arg", "noise_multiplier=-1", "--strategy-arg", "clipping_norm=1", "--strategy-arg",
      "num_sampled_clients=3"],
     "error: strategy 'flwr:DifferentialPrivacyServerSideFixedClipping': The noise multiplier should be a "
     "non-negative value."),
])
def test_strategy_mistakes_are_one_line_before_anything_starts(tmp_path: Path, args: list[str], message: str) -> None:
    code, out, err = federate(tmp_path, "--task", "sine", "--simulate", "2", "--run-id", "bad", *args)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(message), err
    assert out == "" and not (tmp_path / "bad").exists()
