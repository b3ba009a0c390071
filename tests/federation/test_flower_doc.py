"""docs/flower.md runs as written: its code blocks against a real, secured Mosquitto and simulated devices.

The blocks are read from the document, not copied: the only change is the broker URL (the test
broker listens on a free port, the document says 1883). The devices are real agents on the
`FleetSimulator`, each enrolled with its own password, running the head of ``models/sine/head.npz``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from broker.accounts import enroll_device_credentials
from broker.files import SecurityPaths
from broker.process import find_mosquitto
from broker.secure import secured_broker
from devices.learning.head import MLPHead
from devices.link.address import parse_broker_url
from devices.simulator import FleetSimulator, simulated_ids
from tinyfleet import config

DOC = Path(__file__).resolve().parents[2] / "docs" / "flower.md"
DOC_URL = "mqtt://127.0.0.1:1883"
N = 4


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


@dataclass
class Site:
    url: str
    workdir: Path
    head: list[np.ndarray]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A secured broker, its server account as ./fleet-server.json, ./models/sine/head.npz, 4 devices."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    work = tmp_path_factory.mktemp("flower-doc")
    broker = secured_broker(work / "broker")
    url = broker.start().url
    try:
        shutil.copy(SecurityPaths(work / "broker").credentials_dir / "fleet-server.json", work / "fleet-server.json")
        (work / "models" / "sine").mkdir(parents=True)
        head = MLPHead.init([1, 8, 1], kind="regression", seed=3)
        head.to_npz(work / "models" / "sine" / "head.npz")
        creds = enroll_device_credentials(work / "broker", simulated_ids(N, "doc"), fleet="default")
        sim = FleetSimulator(n=N, use_case="sine", address=parse_broker_url(url), state_root=work / "devices",
                             fleet="default", id_prefix="doc", models_dir=work / "models", samples_per_device=16,
                             telemetry_s=0.0, device_credentials=creds)
        try:
            assert sim.start(timeout=30) == N
            yield Site(url, work, head.get_weights())
        finally:
            sim.stop()
    finally:
        broker.stop()


def test_the_fedmedian_example_runs_as_documented(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    code = blocks("python")[0]
    assert "FedMedian().start(grid=grid" in code and code.count(DOC_URL) == 1
    assert len(code.strip().splitlines()) <= 22  # "a complete server in 20 lines" (comments and blanks included)
    monkeypatch.chdir(site.workdir)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(code.replace(DOC_URL, site.url), str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own code
    result = namespace["result"]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2, 3]  # type: ignore[attr-defined]
    assert all(np.isfinite(m["loss"]) for m in result.evaluate_metrics_clientapp.values())  # type: ignore[attr-defined]
    with np.load(site.workdir / "global_head.npz") as saved:
        final = [saved[k] for k in saved.files]
    assert [a.shape for a in final] == [a.shape for a in site.head]
    assert all(np.all(np.isfinite(a)) for a in final)
    assert any(not np.allclose(a, b) for a, b in zip(final, site.head, strict=True))  # three medians later


def test_the_toml_example_builds_the_same_grid(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = blocks("toml")[0]
    code = blocks("python")[1]
    assert "mqtt_grid(" in code and code.count("...") == 1
    monkeypatch.chdir(site.workdir)
    monkeypatch.delenv("TINYFLEET_BROKER", raising=False)
    monkeypatch.delenv("TINYFLEET_CONFIG", raising=False)
    monkeypatch.setattr(config, "_config_path", None)
    (site.workdir / "tinyfleet.toml").write_text(toml.replace(DOC_URL, site.url))
    namespace: dict[str, object] = {}
    exec(compile(code.replace("...", "nodes = grid.wait_for_nodes(4, timeout=30)"), str(DOC), "exec"), namespace)  # noqa: S102
    assert len(namespace["nodes"]) == N  # type: ignore[arg-type]
