"""A Flower `Grid` whose nodes are tinyfleet devices behind any byte transport (MQTT, in-memory).

Stock Flower strategies (`FedAvg`, ...) only call `get_node_ids()` and `send_and_receive()`. This
Grid maps device ids to stable integer node ids, encodes each Flower `Message` with the devices'
wire codec, counts every payload byte both ways, and waits for replies without polling (a
condition variable woken by the transport thread). Everything a device sends passes
`federation.replies` first; a malformed, stale or foreign reply becomes a Flower error reply (a
failure in the strategy's count, with its reason in the round ledger), never an exception that
ends the run. Replies that arrive after their phase returned are discarded and counted.

The server trusts no number a device states about itself: the sender is the device of the
authenticated topic (a header naming another device is ``wrong-device``), weights are granted by
the server (`federation.replies.granted_examples`), a task is re-sent at most `MAX_RESENDS` times
(once per reconnect of its device), and a broker lost for good ends the wait with an error
instead of empty rounds.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.serverapp import Grid

from devices.wire.protocol import ConfigKey
from federation.exceptions import QuorumError
from federation.flower_compat import Run, empty_run, set_message_id
from federation.ledger import RoundLedger
from federation.replies import (
    DENSE,
    TOP_P,
    WEIGHT_KEY,
    RejectedReply,
    as_sent,
    check_metrics,
    check_train_arrays,
    device_error_reason,
    expected_reply,
    granted_examples,
    one_line,
)
from federation.screening import MIN_MEDIAN, cap_evaluation_weights, harmonize_metrics, parameter_norm, phase_refusals
from federation.selection import explain_exclusions
from federation.transport import Codec, CodecError, TaskSpec, Transport, WireReply

log = logging.getLogger(__name__)

DeviceFilter = Callable[[str], bool]

# Error codes of the error replies the Grid makes up (Flower's Error.code is an int).
ERR_DEVICE, ERR_REJECTED = 1, 2
MAX_RESENDS = 3
"""Re-sends of one task at most, each triggered by its device coming back online (a flood buys nothing)."""
WAIT_SLICE = 0.25
"""Seconds between checks of the transport's connection while a phase waits for replies."""
_MISSING_RUN = "the result has no 'run' (a device copies 'run' and 'round' from the task into its result)"
_MISSING_ROUND = "the result has no 'round' (a device copies 'run' and 'round' from the task into its result)"


def _hash63(text: str) -> int:
    """A stable non-negative int64 from `text` (Flower's node and run ids are int64)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def node_id_for(device_id: str) -> int:
    """A stable positive int64 node id for `device_id` (> 1: node 1 is the server in Flower)."""
    raw = _hash63(device_id)
    return raw if raw > 1 else raw + 2


@dataclass
class _Inflight:
    message: Message
    device_id: str
    server_round: int
    phase: str
    sent_arrays: dict[str, np.ndarray]
    encoding: str
    sent_keys: list[str]
    max_examples: int | None = None
    payload: bytes = b""
    answered: bool = False
    resends: int = 0


class FleetGrid(Grid):
    """Flower Grid over a `Transport` + `Codec`.

    Parameters
    ----------
    transport : Transport
        Moves bytes; reports which devices are present.
    codec : Codec
        The devices' wire format.
    run_id : str
        Written into every task; a reply naming another run is rejected.
    allow : collection of str or callable, optional
        Only these devices (or those for which the predicate is true) become nodes; this is how
        registry matchmaking restricts a run to devices that can run the model.
    norm_factor : float, default=10.0
        A train update whose L2 norm exceeds `norm_factor` × the round's median is rejected...
    norm_floor : float, default=0.1
        ... unless it is at most `norm_floor` × the L2 norm of the parameters the device was sent.
        Without this floor the median rule rejected honest updates on presence, where most rooms
        are already fitted by the pretrained head (measured over 24 rooms, 50 steps at lr 0.02:
        median update 0.0018, honest updates up to 0.24, ‖θ‖ 8.5): 1–2 of 8 replies per round,
        always the devices with the most to teach.
    metric_factor : float, default=100.0
        A reply metric (loss, ...) whose magnitude exceeds `metric_factor` × max(|round median|, 1)
        is rejected (``absurd-metric``); see `federation.replies.metric_outlier_indices`.
    """

    def __init__(self, transport: Transport, codec: Codec, *, run_id: str,
                 allow: Collection[str] | DeviceFilter | None = None, norm_factor: float = 10.0,
                 norm_floor: float = 0.1, metric_factor: float = 100.0) -> None:
        self.transport = transport
        self.codec = codec
        self.run_id = run_id
        self.norm_factor = float(norm_factor)
        self.norm_floor = float(norm_floor)
        self.metric_factor = float(metric_factor)
        self.ledger = RoundLedger()
        if allow is None or callable(allow):
            self._allow: DeviceFilter | None = allow
        else:
            allowed = frozenset(allow)
            self._allow = allowed.__contains__
        self._cv = threading.Condition()
        self._inflight: dict[str, _Inflight] = {}
        self._replies: dict[str, Message] = {}
        self._devices_by_node: dict[int, str] = {}
        self._current_round = 0
        self._run: Run = empty_run(_hash63(run_id))
        self.transport.on_device_online(self._resend_inflight)
        self.transport.on_discard(lambda device, reason, nbytes: self.ledger.discard(self._current_round, reason,
                                                                                     nbytes))
        self.transport.start(self._on_payload)

    # -- Flower Grid interface ----------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        """Remember the Flower `Run` (only its id is used outside Flower's runtime)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The Flower `Run` this grid serves."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        """Build an instruction (Flower deprecated this in favour of `Message(...)`; kept for the ABC)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Node ids of the allowed devices that are present now, sorted (so seeded sampling repeats)."""
        ids = []
        for device_id in self.transport.present_devices():
            if self._allow is not None and not self._allow(device_id):
                continue
            nid = node_id_for(device_id)
            self._devices_by_node[nid] = device_id
            ids.append(nid)
        return sorted(ids)

    def excluded_devices(self, device_ids: Iterable[str]) -> dict[str, str]:
        """``{device: reason}`` for those of `device_ids` the allow filter keeps out of the run."""
        if self._allow is None:
            return {}
        explain = getattr(self._allow, "excluded", None)
        if callable(explain):
            return dict(explain(list(device_ids)))
        return {d: "not in the run's allow-list" for d in device_ids if not self._allow(d)}

    def wait_for_nodes(self, n: int, *, timeout: float = 30.0, poll: float = 0.05) -> list[int]:
        """Block until at least `n` allowed devices are online; return their node ids.

        Call it before `Strategy.start`: Flower's sampler computes the sample size from the nodes
        present *before* it waits (a fleet still connecting gets a smaller sample), and its own
        wait for `min_available_nodes` has no deadline. Raises `QuorumError` after `timeout` seconds,
        naming how many came.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.transport.check_connected()  # a broker gone for good is that error, not a missing quorum
            nodes = self.get_node_ids()
            if len(nodes) >= n:
                return nodes
            if time.monotonic() >= deadline:
                present = self.transport.present_devices()
                why = explain_exclusions(self.excluded_devices(present))
                extra = f"{len(present)} fleet devices online in all" if len(present) != len(nodes) else ""
                extra = "; ".join(x for x in (extra, why) if x)
                raise QuorumError(f"only {len(nodes)} of the {n} required devices came online within "
                                  f"{timeout:g} s" + (f" ({extra})" if extra else ""))
            time.sleep(poll)

    def close(self) -> None:
        """Release the transport (the broker connection); the Grid cannot be used afterwards."""
        self.transport.close()

    def __enter__(self) -> FleetGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def device_id(self, node_id: int) -> str:
        """The device behind `node_id` (as seen by `get_node_ids`)."""
        return self._devices_by_node[node_id]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Encode and send each message; return their new message ids."""
        ids: list[str] = []
        # One ArrayRecord goes to every node of a round: decode its .npy bytes once (per device, that was a third of
        # the coordinator's CPU at 1,000 devices). The map holds each record, so that its id() cannot be reused
        # while the map lives (`messages` may be a generator that drops each message once it is sent).
        decoded: dict[int, tuple[ArrayRecord, dict[str, np.ndarray]]] = {}
        for msg in messages:
            mid = uuid.uuid4().hex
            set_message_id(msg, mid)
            ids.append(mid)
            self._send(mid, msg, decoded)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies that have arrived for `message_ids` (each is returned once)."""
        with self._cv:
            return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def wait_for_replies(self, message_ids: Iterable[str], timeout: float) -> bool:
        """Block until a reply to any of `message_ids` can be pulled (True) or `timeout` (asynchronous rounds)."""
        ids = set(message_ids)
        with self._cv:
            return self._cv.wait_for(lambda: bool(ids & self._replies.keys()), timeout)

    def forget(self, message_ids: Iterable[str]) -> None:
        """Give up on requests: unanswered ones count as missing, their late replies are discarded."""
        with self._cv:
            gone = [(self._inflight.pop(m, None), self._replies.pop(m, None))[0] for m in list(message_ids)]
        for f in gone:
            if f is not None and not f.answered:
                self.ledger.add(f.server_round, f.phase, missing=1)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Send, wait for all replies or `timeout`, reject outliers; late replies are dropped afterwards."""
        t0 = time.monotonic()
        messages = list(messages)
        ids = self.push_messages(messages)
        pending = set(ids)
        got: list[Message] = []
        deadline = None if timeout is None else t0 + timeout
        with self._cv:
            while pending:
                arrived = [self._replies.pop(i) for i in list(pending) if i in self._replies]
                got += arrived
                pending -= {r.metadata.reply_to_message_id for r in arrived}
                left = None if deadline is None else deadline - time.monotonic()
                if not pending or (left is not None and left <= 0):
                    break
                self.transport.check_connected()  # a broker gone for good ends the run, not the round
                self._cv.wait(WAIT_SLICE if left is None else min(left, WAIT_SLICE))
            missing = [self._inflight.pop(i) for i in pending if i in self._inflight]
            for i in ids:
                self._inflight.pop(i, None)
        for m in missing:
            self.ledger.add(m.server_round, m.phase, missing=1)
            log.info("round %d %s: no reply from %s within %.1f s", m.server_round, m.phase, m.device_id,
                     timeout or 0.0)
        got = self.screen(got, dict(zip(ids, messages, strict=True)))
        if messages:
            rnd, phase = self._round_phase(messages[0])
            self.ledger.add(rnd, phase, seconds=time.monotonic() - t0)
        return got

    # -- sending --------------------------------------------------------------------------------
    def _round_phase(self, msg: Message) -> tuple[int, str]:
        cfg = _first(msg.content.config_records)
        raw = cfg.get(ConfigKey.SERVER_ROUND) if cfg is not None else None
        rnd = int(raw) if isinstance(raw, int | float | str) else self._current_round
        phase = "train" if msg.metadata.message_type.startswith(MessageType.TRAIN) else "evaluate"
        return rnd, phase

    def _send(self, mid: str, msg: Message, decoded: dict[int, tuple[ArrayRecord, dict[str, np.ndarray]]]) -> None:
        rnd, phase = self._round_phase(msg)
        self._current_round = max(self._current_round, rnd)
        device_id = self._devices_by_node.get(msg.metadata.dst_node_id)
        arrays_rec = _first(msg.content.array_records)
        if arrays_rec is not None and id(arrays_rec) not in decoded:  # read-only: only encoded into each frame
            decoded[id(arrays_rec)] = (arrays_rec, {k: v.numpy() for k, v in arrays_rec.items()})
        arrays = decoded[id(arrays_rec)][1] if arrays_rec is not None else {}
        cfg_rec = _first(msg.content.config_records)
        config = dict(cfg_rec) if cfg_rec is not None else {}
        encoding = TOP_P if ConfigKey.TOP_P in config else DENSE
        steps = config.get(ConfigKey.LOCAL_STEPS, getattr(self.codec, "task_defaults", {}).get(ConfigKey.LOCAL_STEPS))
        cap = int(steps) if phase == "train" and isinstance(steps, int) and steps > 0 else None  # batch 1
        inflight = _Inflight(msg, device_id or "?", rnd, phase, expected_reply(arrays, config), encoding,
                             list(arrays), cap)
        if device_id is None:  # a node id we never announced: answer with an error, do not crash
            with self._cv:
                self._inflight[mid] = inflight
            self._deliver_error(mid, ERR_REJECTED, "unknown-node", f"node {msg.metadata.dst_node_id} is not a device")
            return
        task = TaskSpec(mid, self.run_id, rnd, phase, config, arrays)
        payload = self.codec.encode_task(task)
        inflight.payload = payload
        with self._cv:
            self._inflight[mid] = inflight
        self.ledger.add(rnd, phase, sent=1, bytes_down=len(payload))
        self.transport.send(device_id, payload)

    def _resend_inflight(self, device_id: str) -> None:
        """Send again every unanswered task of `device_id`, which has just (re)announced itself online.

        Why: a task published while the device or the broker was away is lost (clean MQTT sessions,
        no broker persistence), and the round would wait for it in vain. Re-sending is safe: the
        correlation id is unchanged, a device answers a task id it has seen from its reply cache
        (trained once), and the Grid keeps one reply per request. Bounded: the transport calls this
        only when a device *comes back* (not for repeated "online" messages), and each task is
        re-sent at most `MAX_RESENDS` times, so a device that flaps on purpose buys a few copies of
        its own task, nothing more.
        """
        with self._cv:
            todo = [(mid, f) for mid, f in self._inflight.items()
                    if f.device_id == device_id and f.payload and not f.answered and f.resends < MAX_RESENDS]
            for _, f in todo:
                f.resends += 1
        for mid, f in todo:
            self.ledger.add(f.server_round, f.phase, resent=1, bytes_down=len(f.payload))
            log.info("round %d %s: %s is back online; re-sending task %s", f.server_round, f.phase, device_id,
                     mid[:12])
            self.transport.send(device_id, f.payload)

    # -- receiving (transport thread) ----------------------------------------------------------
    def _on_payload(self, device_id: str, payload: bytes) -> None:
        try:
            reply = self.codec.decode_reply(payload)
        except CodecError as exc:
            self._on_undecodable(device_id, payload, exc)
            return
        with self._cv:
            inflight = self._inflight.get(reply.correlation_id)
        if inflight is None:
            self.ledger.discard(self._current_round, "late-or-unknown", len(payload))
            log.info("discarded a result from %s for unknown or expired request %s", device_id,
                     reply.correlation_id[:12])
            return
        self.ledger.add(inflight.server_round, inflight.phase, bytes_up=len(payload))
        if device_id != inflight.device_id:
            self._reject(reply.correlation_id, inflight, "wrong-device",
                         f"reply from {device_id} to a request sent to {inflight.device_id}")
            return
        if reply.device_id != device_id:  # the topic is authenticated by the broker, the header is not
            self._reject(reply.correlation_id, inflight, "wrong-device",
                         f"reply on {device_id}'s topic names device {one_line(reply.device_id, 64)!r}")
            return
        if reply.run_id != self.run_id:
            self._reject(reply.correlation_id, inflight, "unknown-run", _MISSING_RUN if reply.run_id is None
                         else f"run {reply.run_id!r} is not {self.run_id!r}")
            return
        if reply.server_round != inflight.server_round:
            self._reject(reply.correlation_id, inflight, "stale-round", _MISSING_ROUND if reply.server_round is None
                         else f"reply for round {reply.server_round} in round {inflight.server_round}")
            return
        if reply.error is not None:
            code, reason = reply.error
            label = device_error_reason(code)
            self._deliver(reply.correlation_id,
                          Message(Error(ERR_DEVICE, f"{device_id}: {label}: {one_line(reason)}"),
                                  reply_to=inflight.message),
                          account=lambda: self.ledger.reject(inflight.server_round, inflight.phase, label))
            return
        try:
            message = self._build_reply(reply, inflight)
        except RejectedReply as exc:
            self._reject(reply.correlation_id, inflight, exc.reason, exc.detail)
            return
        self._deliver(reply.correlation_id, message,
                      account=lambda: self.ledger.add(inflight.server_round, inflight.phase, replies=1))

    def _on_undecodable(self, device_id: str, payload: bytes, exc: CodecError) -> None:
        mid = exc.correlation_id
        with self._cv:
            inflight = self._inflight.get(mid) if mid else None
        if mid is None or inflight is None:
            self.ledger.discard(self._current_round, "undecodable", len(payload))
            log.info("discarded an undecodable result from %s: %s", device_id, exc)
            return
        self.ledger.add(inflight.server_round, inflight.phase, bytes_up=len(payload))
        self._reject(mid, inflight, exc.reason, one_line(str(exc)))

    def _build_reply(self, reply: WireReply, inflight: _Inflight) -> Message:
        checked = check_metrics(reply.metrics, phase=inflight.phase)
        checked[WEIGHT_KEY] = granted_examples(int(checked[WEIGHT_KEY]), inflight.max_examples)
        metrics: dict[str, MetricRecordValues] = {**checked}
        content = RecordDict()
        if inflight.phase == "train":
            arrays, norm = check_train_arrays(as_sent(reply.arrays, inflight.sent_keys), inflight.sent_arrays,
                                              inflight.encoding)
            content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
            metrics["update-norm"] = norm
        content["metrics"] = MetricRecord(metrics)
        return Message(content, reply_to=inflight.message)

    def _reject(self, mid: str, inflight: _Inflight, reason: str, detail: str) -> None:
        log.info("round %d %s: rejected reply of %s (%s: %s)", inflight.server_round, inflight.phase,
                 inflight.device_id, reason, detail)
        self._deliver(mid, Message(Error(ERR_REJECTED, f"{inflight.device_id}: {reason}: {detail}"),
                                   reply_to=inflight.message),
                      account=lambda: self.ledger.reject(inflight.server_round, inflight.phase, reason))

    def _deliver_error(self, mid: str, code: int, reason: str, detail: str) -> None:
        with self._cv:
            inflight = self._inflight.get(mid)
        if inflight is not None:
            self._reject(mid, inflight, reason, detail)

    def _deliver(self, mid: str, message: Message, *, account: Callable[[], None] | None = None) -> None:
        """Hand the first answer to request `mid` to the waiting phase; count it (`account`) only then.

        Why the flag and not "mid in self._replies": the waiting loop pops replies while the request
        is still in flight, so a QoS-1 redelivery or the cached answer to a re-sent task could
        otherwise be booked as a second reply of the same device.
        """
        with self._cv:
            inflight = self._inflight.get(mid)
            if inflight is None:  # expired meanwhile
                return
            if inflight.answered:
                self.ledger.discard(inflight.server_round, "duplicate", 0)
                return
            inflight.answered = True
            if account is not None:
                account()  # under the lock, so the phase never returns before its counters are in
            self._replies[mid] = message
            self._cv.notify_all()

    def screen(self, replies: list[Message], requests: Mapping[str, Message], *,
               history: Sequence[float] = ()) -> list[Message]:
        """Apply the round-level rules (`federation.screening`): refused replies become counted errors.

        Run on every phase and on each buffer of `federation.buffered` (`history`: `norm_outliers`).
        """
        if not replies:
            return replies
        first = requests[replies[0].metadata.reply_to_message_id]
        rnd, phase = self._round_phase(first)
        theta = parameter_norm(_first(first.content.array_records)) if len(replies) >= MIN_MEDIAN or history else 0.0
        refusals = phase_refusals(replies, theta, norm_factor=self.norm_factor, norm_floor=self.norm_floor,
                                  metric_factor=self.metric_factor, history=history)
        out = list(replies)
        for r in refusals:
            reply = replies[r.index]
            device = self._devices_by_node.get(reply.metadata.src_node_id, "?")
            self.ledger.add(rnd, phase, replies=-1)
            self.ledger.reject(rnd, phase, r.reason)
            out[r.index] = Message(Error(ERR_REJECTED, f"{device}: {r.reason}: {r.detail}"),
                                   reply_to=requests[reply.metadata.reply_to_message_id])
        if phase == "evaluate":
            cap_evaluation_weights(out)
        harmonize_metrics(out)
        return out


_R = TypeVar("_R")


def _first(records: Mapping[str, _R]) -> _R | None:
    """The first record of a Flower RecordDict section (our messages carry one of each kind)."""
    return next(iter(records.values()), None) if records else None


__all__ = ["FleetGrid", "node_id_for"]
