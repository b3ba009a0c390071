"""Every use of a non-public Flower name, in one place.

Flower 1.41 lets a custom `Grid` drive stock strategies, but four things it needs are not public
API: the process-wide `TaskIdentity` (read by `Message(...)` inside `FedAvg.configure_train`), the
message id (no setter; Flower's own `InMemoryGrid` writes `metadata.__dict__["_message_id"]`), the
`Run` dataclass that `Grid.set_run` takes, and `FedAvg._check_and_log_replies` (the reply
filter every strategy should share). Keeping them here means a Flower upgrade breaks one module
and its contract test (`tests/test_federation_contract.py`), not the whole package.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = [
    "EXPECTED_GRID_SIGNATURES",
    "Run",
    "check_and_log_replies",
    "empty_run",
    "grid_abstract_signatures",
    "init_task_identity",
    "set_message_id",
    "task_identity",
]

SERVER_NODE_ID = 1  # what Flower's legacy compat layer uses for the SuperLink (flwr/server/compat/app.py)

# The abstract surface of flwr.serverapp.Grid as pinned (flwr>=1.41,<1.42). The contract test
# compares these strings with `inspect.signature` of the installed Flower, so drift fails loudly.
EXPECTED_GRID_SIGNATURES: dict[str, str] = {
    "set_run": "(self, run: flwr.supercore.run.Run) -> None",
    "run": "(self) -> flwr.supercore.run.Run",
    "create_message": "(self, content: flwr.app.message.recorddict.RecordDict, message_type: str, "
                      "dst_node_id: int, group_id: str, ttl: float | None = None) -> flwr.app.message.message.Message",
    "get_node_ids": "(self) -> collections.abc.Iterable[int]",
    "push_messages": "(self, messages: collections.abc.Iterable[flwr.app.message.message.Message]) "
                     "-> collections.abc.Iterable[str]",
    "pull_messages": "(self, message_ids: collections.abc.Iterable[str]) "
                     "-> collections.abc.Iterable[flwr.app.message.message.Message]",
    "send_and_receive": "(self, messages: collections.abc.Iterable[flwr.app.message.message.Message], *, "
                        "timeout: float | None = None) -> collections.abc.Iterable[flwr.app.message.message.Message]",
}


def grid_abstract_signatures(cls: type = Grid) -> dict[str, str]:
    """Signatures of the abstract methods of `cls` (properties by their getter), as strings."""
    out: dict[str, str] = {}
    for name in sorted(getattr(Grid, "__abstractmethods__", ())):
        attr = inspect.getattr_static(cls, name)
        func = attr.fget if isinstance(attr, property) else attr
        if func is not None:  # a property without a getter has no signature to compare
            out[name] = str(inspect.signature(func))
    return out


def init_task_identity(run_id: int) -> None:
    """Set Flower's process-wide task identity; `Message(...)` raises without it.

    Flower's legacy `start_driver` compat does the same with `task_id=1` and the SuperLink node id.
    """
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = int(run_id)
    TaskIdentity.node_id = SERVER_NODE_ID


@contextlib.contextmanager
def task_identity(run_id: int) -> Iterator[None]:
    """Act as the server of `run_id` for the duration of the block, then restore Flower's identity.

    Why: a gateway ClientApp is itself a Flower task (Flower set its identity before calling it)
    and, inside it, the server of its device group; the reply it returns must go out under
    Flower's identity again.
    """
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)  # noqa: SLF001
    init_task_identity(run_id)
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved  # noqa: SLF001


def set_message_id(message: Message, message_id: str) -> None:
    """Give an outgoing message its id, so that `Message(content, reply_to=msg)` can correlate."""
    message.metadata.__dict__["_message_id"] = message_id


def empty_run(run_id: int) -> Run:
    """A `Run` record with only the id filled in (nothing else applies outside Flower's runtime)."""
    return Run.create_empty(int(run_id))


def check_and_log_replies(strategy: FedAvg, replies: Iterable[Message], *,
                          is_train: bool) -> tuple[list[Message], list[Message]]:
    """Split replies into (valid, errors) exactly as `FedAvg.aggregate_train` does.

    Strategies call this instead of the private method so that reply validation
    (`InconsistentMessageReplies`) and the "Received N results and M failures" log stay Flower's.
    """
    valid, errors = strategy._check_and_log_replies(list(replies), is_train=is_train)  # noqa: SLF001
    return list(valid), list(errors)
