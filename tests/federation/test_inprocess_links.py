"""TinyMetaFed's compressed links between the real strategy and real device agents (in-process, real frames)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from devices.wire.delta import arrays_crc32
from federation.grid import node_id_for
from federation.inprocess_run import RoundRecord, inprocess_fleet, inprocess_grid, train_rounds
from federation.session import initial_parameters
from federation.strategies import Reptile, TinyMetaFed, TinyReptile
from firmware_models.usecases import get_use_case

FLEET, ROUNDS = 6, 3


def _run(strategy: object, tmp_path: Path, rounds: int = ROUNDS, corrupt: str | None = None
         ) -> tuple[list[RoundRecord], list, dict[str, np.ndarray]]:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    data = get_use_case("sine").devices("train", FLEET, samples_per_device=24, seed=0)
    agents = inprocess_fleet("sine", data, models_dir=None, seed=0, state_root=tmp_path)
    recs: list[RoundRecord] = []

    def on_round(rec: RoundRecord, _: object) -> None:
        recs.append(rec)
        if corrupt is not None and rec.round == 1:  # a device loses its state between rounds (a reboot)
            for a in agents:
                a._fed.base[corrupt] = a._fed.base[corrupt] + 1.0  # noqa: SLF001 - simulating a fault

    with inprocess_grid(agents, run_id="links", local_steps=10, lr=0.02) as grid:
        head = train_rounds(strategy, grid, initial_parameters("sine", seed=0), rounds,  # type: ignore[arg-type]
                            local_steps=10, lr=0.02, on_round=on_round)
    return recs, agents, head


def test_delta_downlink_and_sparse_uplink_cost_a_fraction_of_reptile(tmp_path: Path) -> None:
    kw = {"min_train_nodes": 3, "min_available_nodes": 1, "fraction_train": 0.5}
    dense, _, _ = _run(Reptile(num_rounds=ROUNDS, local_steps=10, **kw), tmp_path / "r")
    strategy = TinyMetaFed(num_rounds=ROUNDS, local_steps=10, top_p=0.05, **kw)
    tmf, agents, head = _run(strategy, tmp_path / "t")
    assert all(r.failures == 0 and r.replies == 3 for r in dense + tmf)
    down = sum(r.bytes_down for r in tmf) / sum(r.bytes_down for r in dense)
    up = sum(r.bytes_up for r in tmf) / sum(r.bytes_up for r in dense)
    assert down < 0.5 and up < 0.3
    assert all(np.isfinite(head[k]).all() for k in head)
    _assert_server_and_devices_agree(strategy, agents)


def test_a_device_that_lost_its_base_answers_stale_base_then_gets_dense_weights(tmp_path: Path) -> None:
    kw = {"min_train_nodes": FLEET, "min_available_nodes": 1, "fraction_train": 1.0}
    strategy = TinyMetaFed(num_rounds=ROUNDS, local_steps=10, **kw)
    recs, agents, _ = _run(strategy, tmp_path, corrupt="w1")
    assert recs[0].failures == 0
    assert recs[1].failures == FLEET and recs[1].reasons == {"device-error:stale-base": FLEET}
    assert recs[2].failures == 0 and recs[2].replies == FLEET   # recovered with dense weights
    _assert_server_and_devices_agree(strategy, agents)


def _assert_server_and_devices_agree(strategy: TinyMetaFed, agents: list) -> None:
    """Every device the server keeps a record of holds, bit for bit, the shared weights recorded for it."""
    bases = strategy._bases  # noqa: SLF001 - the server's per-device record is what is under test
    assert bases
    for a in agents:
        record = bases.get(node_id_for(a.client_id))
        if record is not None:
            assert arrays_crc32([a._fed.base[k] for k in record]) == arrays_crc32(list(record.values()))  # noqa: SLF001


def test_tinyreptile_trains_one_device_per_round(tmp_path: Path) -> None:
    recs, _, _ = _run(TinyReptile(num_rounds=4, local_steps=10, min_train_nodes=1, min_available_nodes=1),
                      tmp_path, rounds=4)
    assert [r.replies for r in recs] == [1, 1, 1, 1] and sum(r.num_examples for r in recs) == 40
