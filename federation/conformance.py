"""A live conformance suite for one device on the broker (`tinyfleet devices conformance`).

Like the W3C WoT test suites, it talks to a running device the way the coordinator does — over the
broker, with a server account — and judges every answer with the coordinator's own checks
(`federation.wire.ProtocolCodec`, `federation.replies`) plus the JSON Schemas of docs/protocol.md.
So "conformant" means "a federated run will accept its replies", not "looks plausible".

It lives in `federation` (server side), not in `devices`: it needs jsonschema and the Grid's reply
checks, and `devices` must stay numpy + paho + a TFLite interpreter.

Checks (required unless marked), in the order they run: retained presence, the Thing Description
(W3C TD 1.1 schema) and the tinyfleet terms the tools read, train (dense), train with ``top-p``
(sparse), train with ``local-layers``, evaluate, evaluate has no side effects (recommended), adapt,
a repeated task id answered from the cache, an unknown task type answered with ``unknown-type``, a
``required`` key the device does not implement answered with ``unsupported-config``, a wrong
version answered with ``bad-version`` (recommended), a large frame answered, the Last Will on an
unclean drop and the reconnect after it (recommended), telemetry when the TD offers it
(recommended). The Last Will check takes the device's MQTT session over (the broker then drops
the device, as it does when power fails), so it needs the device's own credentials on a secured
broker. docs/protocol.md §13 lists them with what each one requires.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from devices.exceptions import DeviceLinkError
from devices.link.address import BrokerAddress, Credentials
from devices.link.client import MqttClient
from devices.wire import protocol as p
from devices.wire.topics import device_topic
from federation.exceptions import FederationError
from federation.replies import DENSE, TOP_P, RejectedReply, check_metrics, check_train_arrays
from federation.selection import TD_BOARD, TD_RAM, TD_USE_CASE
from federation.transport import CodecError
from federation.wire import ProtocolCodec

LARGE_FRAME_BYTES = 1 << 20
"""The large-frame check sends min(this, the broker's maximum packet size - 1 KiB) bytes."""
TOP_P_FRACTION = 0.25


@dataclass
class Check:
    """One check's outcome: ``status`` is ``pass``, ``fail`` or ``skip`` (could not be run here)."""

    name: str
    required: bool
    status: str
    detail: str = ""


@dataclass
class ConformanceReport:
    """Every check run against one device; `ok` when no required check failed."""

    device: str
    fleet: str
    broker: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_required

    @property
    def failed_required(self) -> list[Check]:
        return [c for c in self.checks if c.required and c.status == "fail"]

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "fleet": self.fleet, "broker": self.broker, "ok": self.ok,
                "passed": sum(c.status == "pass" for c in self.checks),
                "failed": sum(c.status == "fail" for c in self.checks),
                "skipped": sum(c.status == "skip" for c in self.checks),
                "checks": [asdict(c) for c in self.checks]}


class _Watch:
    """Raw messages on one device's topics, seen by a server account (a retained message arrives first)."""

    def __init__(self, address: BrokerAddress, credentials: Credentials | None, *, fleet: str, device: str,
                 client_id: str) -> None:
        self.fleet, self.device = fleet, device
        self.latest: dict[str, bytes] = {}
        self.telemetry: list[bytes] = []
        self.results: list[bytes] = []
        self._cond = threading.Condition()
        self.client = MqttClient(address, credentials, client_id=client_id, on_message=self._on_message,
                                 subscriptions=[device_topic(fleet, device, k)
                                                for k in ("td", "presence", "telemetry", "result")])

    def _on_message(self, topic: str, payload: bytes) -> None:
        kind = topic.rsplit("/", 1)[-1]
        with self._cond:
            self.latest[kind] = payload
            if kind == "telemetry":
                self.telemetry.append(payload)
            elif kind == "result":
                self.results.append(payload)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def send(self, frame: bytes) -> None:
        self.client.publish(device_topic(self.fleet, self.device, "task"), frame, qos=1)

    def replies(self, task_id: str) -> list[tuple[dict[str, Any], bytes]]:
        """Every result naming `task_id` in ``reply-to`` (header, raw payload), in arrival order."""
        with self._cond:
            payloads = list(self.results)
        out = []
        for raw in payloads:
            header = _header(raw)
            if header is not None and header.get("reply-to") == task_id:
                out.append((header, raw))
        return out

    def await_reply(self, task_id: str, timeout: float, *, count: int = 1) -> list[tuple[dict[str, Any], bytes]]:
        self.wait(lambda: len(self.replies(task_id)) >= count, timeout)
        return self.replies(task_id)


def _header(payload: bytes) -> dict[str, Any] | None:
    try:
        header = p.frame_header(payload)
    except Exception:  # noqa: BLE001 - any undecodable payload simply has no header
        return None
    return header if isinstance(header, dict) else None


def _schema_problems(name: str, doc: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(p.load_schema(name))
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(x) for x in e.absolute_path)
        out.append(f"{where}: {e.message}" if where else e.message)
    return out


def _td_schema() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((p.SCHEMA_DIR / "td-json-schema-validation.json").read_text()))


class _Suite:
    def __init__(self, watch: _Watch, report: ConformanceReport, *, timeout: float) -> None:
        self.watch, self.report, self.timeout = watch, report, timeout
        self.run_id = f"conformance-{uuid.uuid4().hex[:8]}"
        self.codec = ProtocolCodec()

    def record(self, name: str, required: bool, problems: list[str] | str | None, *, skip: str | None = None) -> None:
        if skip is not None:
            self.report.checks.append(Check(name, required, "skip", skip))
        elif problems:
            text = problems if isinstance(problems, str) else "; ".join(problems)
            self.report.checks.append(Check(name, required, "fail", text))
        else:
            self.report.checks.append(Check(name, required, "pass"))

    # -- documents ---------------------------------------------------------------------------------
    def documents(self) -> dict[str, Any] | None:
        """Presence, TD and TD terms; returns the TD (None if absent)."""
        w = self.watch
        w.wait(lambda: "presence" in w.latest and "td" in w.latest, self.timeout)
        raw = w.latest.get("presence")
        if raw is None:
            self.record("presence", True, f"no retained presence on {device_topic(w.fleet, w.device, 'presence')} "
                                          f"within {self.timeout:g} s")
        else:
            problems = self._json_problems(raw, "presence")
            doc = json.loads(raw) if not problems else {}
            if doc:
                problems += [f"{k} is {doc.get(k)!r}, expected {v!r}" for k, v in
                             (("device", w.device), ("fleet", w.fleet), ("online", True)) if doc.get(k) != v]
            self.record("presence", True, problems)
        raw = w.latest.get("td")
        td = None
        if raw is None:
            self.record("thing-description", True, f"no retained Thing Description on "
                                                   f"{device_topic(w.fleet, w.device, 'td')} within {self.timeout:g} s")
        else:
            try:
                td = json.loads(raw.decode("utf-8"))
                problems = [f"{'/'.join(map(str, e.absolute_path)) or 'TD'}: {e.message}"
                            for e in _td_schema().iter_errors(td)][:5]
            except (UnicodeDecodeError, ValueError) as exc:
                problems = [f"not UTF-8 JSON ({exc})"]
            self.record("thing-description", True, problems)
        if not isinstance(td, dict):
            self.record("td-terms", True, "no Thing Description to read")
            return None
        self.record("td-terms", True, _td_term_problems(td, w))
        return td

    def _json_problems(self, raw: bytes, schema: str) -> list[str]:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return [f"not UTF-8 JSON ({exc})"]
        return _schema_problems(schema, doc)

    # -- tasks -------------------------------------------------------------------------------------
    def exchange(self, frame: bytes, task_id: str) -> tuple[dict[str, Any], bytes] | None:
        self.watch.send(frame)
        got = self.watch.await_reply(task_id, self.timeout)
        return got[0] if got else None

    def task(self, name: str, mtype: str, head: Mapping[str, np.ndarray], config: dict[str, Any], *,
             phase: str, expect: Mapping[str, np.ndarray] | None = None, encoding: str = DENSE,
             required: bool = True) -> tuple[dict[str, Any], Any, bytes, str] | None:
        """Send one task; judge the reply like the Grid would. Returns (header, decoded reply, frame, task id)."""
        tid, frame = p.encode_task(mtype, config=config, run=self.run_id, server_round=1,
                                   extra_tensors=[(k, np.asarray(v, np.float32)) for k, v in head.items()])
        got = self.exchange(frame, tid)
        if got is None:
            self.record(name, required, f"no result with reply-to {tid} within {self.timeout:g} s")
            return None
        header, raw = got
        problems = self._copied(header, tid, mtype) + [f"result header {x}" for x in _schema_problems("result", header)]
        if header.get("ok") is not True:
            err = header.get("error") or {}
            problems.append(f"the device answered with error {err.get('code')!r}: {err.get('reason')!r}")
            self.record(name, required, problems)
            return None
        try:
            reply = self.codec.decode_reply(raw)
        except CodecError as exc:
            self.record(name, required, problems + [f"the coordinator cannot decode it: {exc}"])
            return None
        try:
            check_metrics(reply.metrics, phase=phase)
            if expect is not None:
                check_train_arrays(reply.arrays, expect, encoding)
        except RejectedReply as exc:
            problems.append(f"the coordinator would reject it ({exc.reason}: {exc.detail})")
        if encoding == TOP_P:
            problems += _sparse_problems(header, expect or {})
        self.record(name, required, problems)
        return header, reply, frame, tid

    def _copied(self, header: dict[str, Any], tid: str, mtype: str) -> list[str]:
        out = []
        missing = [k for k in ("run", "round") if k not in header]
        if missing:
            out.append(f"the result lacks {' and '.join(repr(k) for k in missing)}: copy 'run' and 'round' from the "
                       "task (the coordinator rejects it as unknown-run / stale-round)")
        want = {"reply-to": tid, "device": self.watch.device, "task": mtype, "run": self.run_id, "round": 1}
        out += [f"{k} is {header.get(k)!r}, the task's is {v!r}" for k, v in want.items()
                if k in header and header.get(k) != v]
        return out

    def error_reply(self, name: str, required: bool, header: dict[str, Any], code: str) -> None:
        frame = p.encode_frame(header)
        got = self.exchange(frame, header["id"])
        if got is None:
            self.record(name, required, f"no result with reply-to {header['id']} within {self.timeout:g} s")
            return
        reply = got[0]
        problems = [f"result header {x}" for x in _schema_problems("result", reply)]
        if reply.get("ok") is not False or (reply.get("error") or {}).get("code") != code:
            problems.append(f"expected ok=false with error code {code!r}, got ok={reply.get('ok')!r} "
                            f"error={reply.get('error')!r}")
        self.record(name, required, problems)


def _td_term_problems(td: dict[str, Any], w: _Watch) -> list[str]:
    out = []
    if td.get("id") != f"urn:tinyfleet:device:{w.device}":
        out.append(f"id is {td.get('id')!r}, expected 'urn:tinyfleet:device:{w.device}'")
    if not isinstance(td.get(TD_USE_CASE), str):
        out.append(f"{TD_USE_CASE} (the use case the device learns) is missing")
    board = td.get(TD_BOARD)
    ram = board.get(TD_RAM) if isinstance(board, dict) else None
    if not (isinstance(ram, int) and not isinstance(ram, bool) and ram > 0):
        out.append(f"{TD_BOARD} → {TD_RAM} (RAM in bytes) is missing")
    if td.get("tinyfleet:protocolVersion") != p.PROTOCOL_VERSION:
        out.append(f"tinyfleet:protocolVersion is {td.get('tinyfleet:protocolVersion')!r}, expected 1")
    forms = ((td.get("actions") or {}).get("train") or {}).get("forms") or [{}]
    if forms[0].get("mqv:topic") != device_topic(w.fleet, w.device, "task"):
        out.append(f"actions.train.forms[0] mqv:topic is {forms[0].get('mqv:topic')!r}, expected the task topic")
    return out


def _sparse_problems(header: dict[str, Any], expect: Mapping[str, np.ndarray]) -> list[str]:
    out = []
    if header.get("encoding") != p.ReplyEncoding.DELTA:
        out.append(f"encoding is {header.get('encoding')!r}, expected 'delta' for a top-p reply")
    for t in header.get("tensors") or []:
        base = expect.get(t.get("name"))
        if base is None:
            continue
        want = min(base.size, max(1, int(np.ceil(round(TOP_P_FRACTION * base.size, 6)))))
        if t.get("encoding") != "sparse" or t.get("nnz") != want:
            out.append(f"tensor {t.get('name')!r}: encoding {t.get('encoding')!r} nnz {t.get('nnz')!r}, expected "
                       f"sparse with ceil({TOP_P_FRACTION} x {base.size}) = {want} entries")
    return out


def check_device(address: BrokerAddress, *, fleet: str, device: str, credentials: Credentials | None = None,
                 device_credentials: Credentials | None = None, models_dir: Path | None = None,
                 task: str | None = None, timeout: float = 10.0, client_id: str | None = None) -> ConformanceReport:
    """Run every check against `device`; never raises for what the device does (only for the broker).

    Parameters
    ----------
    credentials : Credentials, optional
        A server account (reads and writes every fleet), as for `federate run`.
    device_credentials : Credentials, optional
        The device's own account: lets the Last Will check take its session over on a secured broker.
    models_dir : Path, optional
        Built models (``tinyfleet models build``): the head sent in tasks for use cases with a backbone.
    task : str, optional
        Use case whose head to send; default: the one the device's TD declares.
    timeout : float, default=10.0
        Seconds to wait for each answer.
    """
    from federation.session import initial_parameters

    report = ConformanceReport(device, fleet, address.url)
    cid = client_id or (credentials.username if credentials and credentials.username else
                        f"tinyfleet-conformance-{uuid.uuid4().hex[:6]}")
    watch = _Watch(address, credentials, fleet=fleet, device=device, client_id=cid)
    watch.client.connect(timeout=timeout)
    try:
        suite = _Suite(watch, report, timeout=timeout)
        td = suite.documents()
        use_case = task or (td or {}).get(TD_USE_CASE)
        head: dict[str, np.ndarray] = {}
        try:
            if not isinstance(use_case, str):
                raise FederationError("the device declares no use case and --task was not given")
            head = initial_parameters(use_case, models_dir=models_dir, seed=0)
        except (FederationError, KeyError, ValueError, OSError) as exc:
            reason = f"cannot build the head of use case {use_case!r} to send: {exc}"
            for name in ("train", "train-top-p", "train-local-layers", "evaluate", "adapt", "duplicate-task"):
                report.checks.append(Check(name, True, "fail", reason))
        else:
            _task_checks(suite, head)
        _error_checks(suite, head)
        _liveness_checks(suite, address, device_credentials)
        _telemetry_check(suite, td)
    finally:
        watch.client.close()
    return report


def _task_checks(suite: _Suite, head: dict[str, np.ndarray]) -> None:
    train_cfg = {p.ConfigKey.LOCAL_STEPS: 5, p.ConfigKey.LR: 0.01, p.ConfigKey.SEED: 0, p.ConfigKey.SERVER_ROUND: 1}
    first = suite.task("train", p.MessageType.TRAIN, head, train_cfg, phase="train", expect=head)
    suite.task("train-top-p", p.MessageType.TRAIN, head, {**train_cfg, p.ConfigKey.TOP_P: TOP_P_FRACTION},
               phase="train", expect=head, encoding=TOP_P)
    last = len(head) // 2 - 1
    local = {k: v for k, v in head.items() if k not in (f"w{last}", f"b{last}")}
    suite.task("train-local-layers", p.MessageType.TRAIN, head,
               {**train_cfg, p.ConfigKey.LOCAL_LAYERS: [last], p.ConfigKey.RECONSTRUCT_STEPS: 2},
               phase="train", expect=local)
    eval_cfg = {p.ConfigKey.SEED: 0, p.ConfigKey.SERVER_ROUND: 1}
    a = suite.task("evaluate", p.MessageType.EVALUATE, head, eval_cfg, phase="evaluate")
    if a is None:
        suite.record("evaluate-no-side-effects", False, None, skip="no valid evaluate reply")
    else:  # the same weights again, after the train tasks above: the loss must not have moved
        tid, frame = p.encode_task(p.MessageType.EVALUATE, config=eval_cfg, run=suite.run_id, server_round=1,
                                   extra_tensors=[(k, np.asarray(v, np.float32)) for k, v in head.items()])
        got = suite.exchange(frame, tid)
        la = a[0].get("metrics", {}).get(p.MetricKey.LOSS)
        lb = (got[0].get("metrics") or {}).get(p.MetricKey.LOSS) if got else None
        suite.record("evaluate-no-side-effects", False, None if isinstance(lb, (int, float)) and
                     np.isclose(la, lb, rtol=1e-5, atol=1e-7) else
                     f"evaluating the same weights twice gave loss {la!r} then {lb!r}")
    suite.task("adapt", p.MessageType.ADAPT, head, {p.ConfigKey.SHOTS: 2, p.ConfigKey.STEPS: 2, p.ConfigKey.LR: 0.01},
               phase="adapt", expect=head)
    if first is None:
        suite.record("duplicate-task", True, "no valid train reply to repeat")
        return
    header, _, frame, tid = first
    suite.watch.send(frame)  # the same task again: QoS-1 redelivery or a server re-send after a reconnect
    again = suite.watch.await_reply(tid, suite.timeout, count=2)
    if len(again) < 2:
        suite.record("duplicate-task", True, f"no answer to the repeated task {tid} within {suite.timeout:g} s")
    elif again[1][0].get("id") != header.get("id"):
        suite.record("duplicate-task", True, f"the repeated task got a new result (id {again[1][0].get('id')!r}, first "
                                             f"{header.get('id')!r}): re-send the cached reply, do not train again")
    else:
        suite.record("duplicate-task", True, None)


def _error_checks(suite: _Suite, head: dict[str, np.ndarray]) -> None:
    base = {"run": suite.run_id, "round": 1, "config": {}}
    suite.error_reply("unknown-type", True, {"v": 1, "type": "task.conformance-unknown", "id": p.new_id(), **base},
                      p.ErrorCode.UNKNOWN_TYPE)
    suite.error_reply("required-key", True, {"v": 1, "type": p.MessageType.EVALUATE, "id": p.new_id(), **base,
                                             "config": {p.ConfigKey.REQUIRED: ["conformance-unknown-key"]}},
                      p.ErrorCode.UNSUPPORTED_CONFIG)
    suite.error_reply("bad-version", False, {"v": 2, "type": p.MessageType.EVALUATE, "id": p.new_id(), **base},
                      p.ErrorCode.BAD_VERSION)
    limit = suite.watch.client.max_packet_size
    size = min(LARGE_FRAME_BYTES, (limit - 1024) if limit else LARGE_FRAME_BYTES)
    tid = p.new_id()
    tensors = [(k, np.asarray(v, np.float32)) for k, v in head.items()]
    pad = max(0, size - len(p.encode_frame({"v": 1, "type": p.MessageType.EVALUATE, "id": tid}, tensors)) - 256)
    frame = p.encode_frame({"v": 1, "type": p.MessageType.EVALUATE, "id": tid, **base},
                           [*tensors, ("padding", np.zeros(pad, np.uint8))])
    got = suite.exchange(frame, tid)
    suite.record("large-frame", True, None if got is not None else
                 f"no answer (a result or a too-large error) to a {len(frame):,}-byte task within {suite.timeout:g} s")


def _liveness_checks(suite: _Suite, address: BrokerAddress, device_credentials: Credentials | None) -> None:
    w = suite.watch
    def presence() -> dict[str, Any]:
        try:
            doc = json.loads(w.latest.get("presence", b"{}"))
            return doc if isinstance(doc, dict) else {}
        except ValueError:
            return {}

    if presence().get("online") is not True:
        suite.record("last-will", True, None, skip="the device is not online")
        suite.record("reconnect", False, None, skip="the device is not online")
        return
    takeover = MqttClient(address, device_credentials, client_id=w.device)
    try:
        takeover.connect(timeout=suite.timeout)
    except DeviceLinkError as exc:
        why = "pass --device-credentials FILE (the device's `devices enroll --json` output)" \
            if device_credentials is None else str(exc)
        suite.record("last-will", True, None, skip=f"cannot take the device's session over to drop it: {why}")
        suite.record("reconnect", False, None, skip="needs the last-will check")
        return
    try:  # the broker has dropped the device without a DISCONNECT: its Will must say so
        dropped = w.wait(lambda: presence().get("online") is False, suite.timeout)
    finally:
        takeover.close()
    doc = presence()
    problems = suite._json_problems(w.latest.get("presence", b"{}"), "presence") if dropped else []
    if not dropped:
        problems.append(f"no presence with online=false within {suite.timeout:g} s of an unclean drop (set a Will)")
    elif doc.get("reason") != "connection lost":
        problems.append(f"the Will's reason is {doc.get('reason')!r}, expected 'connection lost'")
    suite.record("last-will", True, problems)
    back = w.wait(lambda: presence().get("online") is True, max(suite.timeout, 35.0))
    suite.record("reconnect", False, None if back else "the device did not come back online within 35 s "
                                                       "(reconnect with backoff of at most 30 s)")


def _telemetry_check(suite: _Suite, td: dict[str, Any] | None) -> None:
    """Telemetry is optional: judged when the TD offers it (a property observed on the telemetry topic)."""
    w = suite.watch
    topic = device_topic(w.fleet, w.device, "telemetry")
    offered = any(form.get("mqv:filter") == topic for prop in ((td or {}).get("properties") or {}).values()
                  if isinstance(prop, dict) for form in prop.get("forms") or [] if isinstance(form, dict))
    if not offered:
        suite.record("telemetry", False, None, skip="the TD offers no property on the telemetry topic")
    elif not w.wait(lambda: bool(w.telemetry), suite.timeout):
        suite.record("telemetry", False, f"the TD offers telemetry but none arrived within {suite.timeout:g} s")
    else:
        suite.record("telemetry", False, suite._json_problems(w.telemetry[-1], "telemetry"))
