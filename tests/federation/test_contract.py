"""Contract tests: a Flower upgrade that changes the Grid ABC or our private hooks must fail here."""

from __future__ import annotations

import inspect

import pytest
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from federation import flower_compat
from federation.grid import FleetGrid


def test_grid_abstract_methods_match_the_pinned_signatures() -> None:
    # Every abstract method of the installed flwr Grid, with its exact signature.
    assert flower_compat.grid_abstract_signatures() == flower_compat.EXPECTED_GRID_SIGNATURES


@pytest.mark.parametrize("name", sorted(flower_compat.EXPECTED_GRID_SIGNATURES))
def test_fleet_grid_implements_each_abstract_method_with_compatible_parameters(name: str) -> None:
    ours = inspect.getattr_static(FleetGrid, name)
    theirs = inspect.getattr_static(Grid, name)
    ours = ours.fget if isinstance(ours, property) else ours
    theirs = theirs.fget if isinstance(theirs, property) else theirs
    assert not getattr(ours, "__isabstractmethod__", False)
    p_ours, p_theirs = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    assert list(p_ours) == list(p_theirs)
    assert [p.kind for p in p_ours.values()] == [p.kind for p in p_theirs.values()]
    assert [p.default for p in p_ours.values()] == [p.default for p in p_theirs.values()]


def test_fleet_grid_is_concrete() -> None:
    assert not inspect.isabstract(FleetGrid)


def test_private_flower_names_still_exist() -> None:
    # The internals flower_compat relies on (see its docstring).
    assert callable(FedAvg._check_and_log_replies)
    assert list(inspect.signature(FedAvg._check_and_log_replies).parameters) == \
        ["self", "replies", "is_train", "validate"]
    from flwr.app import Message, MessageType, RecordDict

    flower_compat.init_task_identity(7)
    msg = Message(RecordDict(), 5, MessageType.TRAIN)
    flower_compat.set_message_id(msg, "abc")
    assert msg.metadata.message_id == "abc"
    reply = Message(RecordDict(), reply_to=msg)
    assert reply.metadata.reply_to_message_id == "abc"
    assert reply.metadata.src_node_id == 5
    assert flower_compat.empty_run(9).run_id == 9
