"""The MQTT device agent: one device that learns on its own data and answers the server's tasks.

The agent is an `Endpoint` of `devices.link.hub.MqttHub`, so the same class runs alone
(`tinyfleet devices run`) or by the thousand in one process (`devices.simulator`). On connect it
publishes its retained Thing Description and presence (the Last Will clears presence when the
link dies); every `telemetry_s` it publishes telemetry; it answers train / evaluate / adapt /
deploy tasks with exactly one result per correlation id (a duplicate gets the cached reply and is
never trained twice). Anything malformed (bad frame, wrong version, wrong shape, NaN, oversize)
costs one log line and an error result, and the agent keeps running.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devices.boards import Board
from devices.deploy import ChunkAssembler, fit_check, install
from devices.duty_cycle import DutyCycle
from devices.exceptions import DeployError, ModelDoesNotFitError, ProtocolError
from devices.learning.adapt import AdaptConfig, adapt
from devices.learning.learner import OnlineLearner
from devices.link.address import BrokerAddress
from devices.link.hub import Link
from devices.train_task import FederatedState, clip_update, receive_weights, train_round  # noqa: F401 (re-export)
from devices.wire.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    ConfigKey,
    ErrorCode,
    Frame,
    MessageType,
    MetricKey,
    ReplyEncoding,
    check_finite,
    decode_frame,
    encode_result,
    frame_header,
    implemented_config,
    presence_payload,
    sha256_hex,
    telemetry_payload,
    unsupported_required,
    weight_names,
)
from devices.wire.thing_description import td_payload, thing_description
from devices.wire.topics import DEFAULT_FLEET, Kind, check_name, device_topic
from firmware_models.exceptions import TinyFleetError
from firmware_models.usecases.base import DeviceData

log = logging.getLogger("tinyfleet.devices")


@dataclass
class AgentConfig:
    """How one device behaves.

    Parameters
    ----------
    device_id : str
        MQTT client id, user name and topic level (no ``/ + #``).
    board : Board
        Declared RAM/flash; models that do not fit are refused.
    state_dir : Path
        Where deployed models live (``backbone.tflite``, ``model.tflite`` and their ``.prev``).
    fleet : str, default="default"
    use_case : str, default="sine"
    sensors : tuple of str, default=()
        Sensors the use case reads (TD properties, telemetry).
    telemetry_s : float, default=10.0
        Telemetry period; 0 disables it.
    max_task_bytes : int, default=4 MiB
        Larger task frames are answered with ``too-large``.
    eval_fraction : float, default=0.2
        Tail of the local data kept for evaluation (never trained on).
    reply_cache : int, default=256
        Replies remembered per device for duplicate correlation ids.
    drop_prob, latency_s, slow_factor, crash_prob_per_s, crash_down_s :
        Fault knobs of the simulator: ignore a task, delay each reply, multiply compute time,
        drop the connection uncleanly (the Will fires) and come back after `crash_down_s`.
    duty : DutyCycle, optional
        An intermittent device's on/off schedule (`devices.duty_cycle`); None: always on.
    lacks_config : tuple of str, default=()
        Config keys this device behaves as if it did not implement (simulates older or smaller
        firmware, e.g. without FedProx's ``proximal-mu``): a task that lists one of them under
        ``required`` is answered with ``unsupported-config``.
    seed : int, default=0
    """

    device_id: str
    board: Board
    state_dir: Path
    fleet: str = DEFAULT_FLEET
    use_case: str = "sine"
    sensors: tuple[str, ...] = ()
    telemetry_s: float = 10.0
    max_task_bytes: int = DEFAULT_MAX_FRAME_BYTES
    eval_fraction: float = 0.2
    reply_cache: int = 256
    drop_prob: float = 0.0
    latency_s: float = 0.0
    slow_factor: float = 1.0
    crash_prob_per_s: float = 0.0
    crash_down_s: float = 2.0
    duty: DutyCycle | None = None
    lacks_config: tuple[str, ...] = ()
    seed: int = 0


class DeviceAgent:
    """One device: an online learner, its local data, a board profile and the protocol around them.

    Parameters
    ----------
    config : AgentConfig
    learner : OnlineLearner
        The device's model (frozen backbone + trainable head).
    data : DeviceData
        The device's local data (its task); the last `eval_fraction` is held out for evaluation.
    address : BrokerAddress
        Where the device connects; only used for the Thing Description's ``href`` (the hub connects).
    authenticated : bool, default=False
        Whether the broker needs a user name and password (the TD's security definition says so).
    """

    def __init__(self, config: AgentConfig, learner: OnlineLearner, data: DeviceData, *, address: BrokerAddress,
                 authenticated: bool = False) -> None:
        self.config = config
        self.client_id = check_name(config.device_id)
        self.learner = learner
        n = len(data)
        n_eval = max(1, int(round(n * config.eval_fraction))) if n > 1 else 0
        self.x_train, self.y_train = data.x[: n - n_eval], data.y[: n - n_eval]
        self.x_eval, self.y_eval = (data.x[n - n_eval:], data.y[n - n_eval:]) if n_eval else (data.x, data.y)
        self.address = address
        self.authenticated = authenticated
        self.rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._assembler = ChunkAssembler(max_bytes=config.board.flash_bytes)
        self._fed = FederatedState.from_weights(learner.head.get_weights())
        self._fed_run: str | None = None
        self._next_telemetry = 0.0
        self._started = time.monotonic()
        self.tasks_done = 0
        self.errors_sent = 0
        self.dropped = 0
        self.sleeps = 0
        self.model_sha256 = sha256_hex(learner.backbone.model_bytes) if learner.backbone is not None else None
        self.memory_bytes: int | None = None
        self.unfit_reason: str | None = None
        try:
            self.memory_bytes = learner.memory_report()["total"]
            learner.check_fits(config.board.ram_bytes, config.board.flash_bytes)
        except ModelDoesNotFitError as exc:
            self.unfit_reason = str(exc)
            log.warning("%s: %s; it will refuse train/evaluate/adapt tasks", self.client_id, exc)

    # ------------------------------------------------------------------------------ topics
    def topic(self, kind: Kind) -> str:
        return device_topic(self.config.fleet, self.client_id, kind)

    def will(self) -> tuple[str, bytes]:
        return self.topic("presence"), presence_payload(self.client_id, online=False, fleet=self.config.fleet,
                                                        board=self.config.board.name, reason="connection lost")

    def subscriptions(self) -> list[str]:
        return [self.topic("task")]

    def goodbye(self) -> list[tuple[str, bytes, bool]]:
        """Clean shutdown: a clean DISCONNECT does not fire the Will, so say offline explicitly."""
        return [(self.topic("presence"), presence_payload(self.client_id, online=False, fleet=self.config.fleet,
                                                          board=self.config.board.name, reason="shutdown"), True)]

    def thing_description(self) -> dict[str, Any]:
        return thing_description(device_id=self.client_id, fleet=self.config.fleet, board=self.config.board,
                                 use_case=self.config.use_case, sensors=self.config.sensors, host=self.address.host,
                                 port=self.address.port, tls=self.address.tls, authenticated=self.authenticated,
                                 model_sha256=self.model_sha256)

    # ------------------------------------------------------------------------------ hub callbacks
    def on_connected(self, link: Link) -> None:
        link.publish(self.topic("td"), td_payload(self.thing_description()), retain=True)
        link.publish(self.topic("presence"), presence_payload(self.client_id, online=True, fleet=self.config.fleet,
                                                              board=self.config.board.name), retain=True)
        self._next_telemetry = time.monotonic() + self.config.telemetry_s * self.rng.uniform(0.5, 1.0)

    def on_tick(self, link: Link, now: float) -> None:
        cfg = self.config
        sleep = cfg.duty.asleep_for(now) if cfg.duty is not None else 0.0
        if sleep > 0:  # an intermittent device's off phase: gone like a crash, back when it wakes
            self.sleeps += 1
            link.crash(down_for=sleep)
            return
        if cfg.crash_prob_per_s > 0 and self.rng.random() < cfg.crash_prob_per_s * link.hub.tick_s:
            log.info("%s: simulated crash, back in %.1f s", self.client_id, cfg.crash_down_s)
            link.crash(down_for=cfg.crash_down_s)
            return
        if cfg.telemetry_s > 0 and now >= self._next_telemetry:
            self._next_telemetry = now + cfg.telemetry_s
            link.publish(self.topic("telemetry"), telemetry_payload(self.client_id, self.telemetry()), qos=0)

    def on_message(self, link: Link, topic: str, payload: bytes) -> None:
        if topic != self.topic("task"):
            log.warning("%s: ignoring message on foreign topic %s", self.client_id, topic)
            return
        link.submit(self.handle, link, payload)

    # ------------------------------------------------------------------------------ tasks
    def telemetry(self) -> dict[str, Any]:
        """Current learning state for the telemetry topic."""
        out: dict[str, Any] = {"loss": self.learner.last_loss_, "samples-seen": int(self.learner.samples_seen_),
                               "tasks-done": self.tasks_done, "memory-bytes": self.memory_bytes,
                               "ram-bytes": self.config.board.ram_bytes, "flash-bytes": self.config.board.flash_bytes,
                               "model-sha256": self.model_sha256,
                               "head-sha256": sha256_hex(b"".join(w.tobytes()
                                                                  for w in self.learner.head.get_weights())),
                               "uptime-s": round(time.monotonic() - self._started, 3)}
        if self.config.sensors and len(self.x_train):
            sample = np.asarray(self.x_train[int(self.learner.samples_seen_) % len(self.x_train)], np.float64)
            flat = sample.reshape(-1)
            per_col = sample.reshape(-1, sample.shape[-1]).mean(axis=0) if sample.ndim else flat
            if len(self.config.sensors) > 1 and len(per_col) == len(self.config.sensors):
                out["sensors"] = {k: float(v) for k, v in zip(self.config.sensors, per_col, strict=True)}
            else:
                out["sensors"] = {k: float(flat.mean()) for k in self.config.sensors}
        if self.memory_bytes is None:
            out.pop("memory-bytes")
        return out

    def handle(self, link: Link, payload: bytes) -> bytes | None:
        """Process one task message (worker thread); publish and return the reply, if any."""
        with self._lock:
            t0 = time.perf_counter()
            reply = self._handle_locked(payload)
            if reply is None:
                return None
            elapsed = time.perf_counter() - t0
            if not link.payload_fits(len(reply)):
                hdr = frame_header(reply)
                reply = encode_result({"id": hdr.get("reply-to"), "type": hdr.get("task")}, device=self.client_id,
                                      error=(ErrorCode.TOO_LARGE, f"reply of {len(reply)} B exceeds the broker's "
                                             f"maximum packet size {link.max_packet_size}"))
                self._remember(hdr.get("reply-to"), reply)
            delay = self.config.latency_s + max(0.0, self.config.slow_factor - 1.0) * elapsed
            link.publish(self.topic("result"), reply, qos=1, delay=delay)
            return reply

    def answer(self, payload: bytes) -> bytes | None:
        """Process one task frame without a network: the reply frame, or None (in-process runs, tests).

        Exactly what `handle` does minus publishing (and minus the simulated latency).
        """
        with self._lock:
            return self._handle_locked(payload)

    def _remember(self, request_id: str | None, reply: bytes) -> None:
        if request_id is None:
            return
        self._replies[request_id] = reply
        self._replies.move_to_end(request_id)
        while len(self._replies) > self.config.reply_cache:
            self._replies.popitem(last=False)

    def _handle_locked(self, payload: bytes) -> bytes | None:
        header: dict[str, Any] | None = None
        try:
            if len(payload) > self.config.max_task_bytes:
                raise ProtocolError(f"task of {len(payload):,} B exceeds this device's limit of "
                                    f"{self.config.max_task_bytes:,} B", code=ErrorCode.TOO_LARGE,
                                    request_id=_peek_id(payload))
            frame = decode_frame(payload, max_bytes=self.config.max_task_bytes)
            header = frame.header
            cached = self._replies.get(frame.id)
            if cached is not None:
                log.info("%s: duplicate task %s: re-sending the cached reply", self.client_id, frame.id)
                return cached
            if frame.type == MessageType.RESULT:
                raise ProtocolError("a device does not accept results on its task topic",
                                    code=ErrorCode.UNKNOWN_TYPE, request_id=frame.id)
            self._check_required(frame)
            if self.config.drop_prob > 0 and self.rng.random() < self.config.drop_prob:
                self.dropped += 1
                log.info("%s: dropping task %s (simulated fault)", self.client_id, frame.id)
                return None
            if frame.type == MessageType.DEPLOY:
                result = self._deploy(frame)
                if result is None:
                    return None
                metrics, tensors, extra, error = result
            else:
                if self.unfit_reason is not None:
                    raise ProtocolError(self.unfit_reason, code=ErrorCode.DOES_NOT_FIT, request_id=frame.id)
                check_finite(frame)
                handler = {MessageType.TRAIN: self._train, MessageType.EVALUATE: self._evaluate,
                           MessageType.ADAPT: self._adapt}[frame.type]
                metrics, tensors, extra = handler(frame)
                error = None
            reply = encode_result(header, device=self.client_id, metrics=metrics, tensors=tensors, error=error,
                                  extra=extra)
            if error is None:
                self.tasks_done += 1
            else:
                self.errors_sent += 1
            self._remember(frame.id, reply)
            return reply
        except Exception as exc:  # noqa: BLE001 - every task gets an answer; the agent keeps running
            if isinstance(exc, TinyFleetError):
                code = str(getattr(exc, "code", ErrorCode.BAD_CONFIG))
                log.warning("%s: task refused: %s: %s", self.client_id, code, exc)
            else:
                code = ErrorCode.INTERNAL
                log.exception("%s: task failed with an internal error", self.client_id)
            rid = getattr(exc, "request_id", None) or (header or {}).get("id")
            self.errors_sent += 1
            reply = encode_result(header or {"id": rid}, device=self.client_id,
                                  error=(code, f"{exc}" if isinstance(exc, TinyFleetError) else
                                         f"internal error: {type(exc).__name__}: {exc}"))
            self._remember(rid if header is not None else None, reply)
            return reply

    # ------------------------------------------------------------------------------ task kinds
    def _check_required(self, frame: Frame) -> None:
        """Refuse a task that needs a config key this device does not implement (never train something else)."""
        implemented = implemented_config(frame.type) - set(self.config.lacks_config)
        missing = unsupported_required(frame.type, frame.config, implemented=implemented)
        if missing:
            raise ProtocolError(f"{frame.type}: this device does not implement the required config key(s) "
                                f"{', '.join(missing)}", code=ErrorCode.UNSUPPORTED_CONFIG, request_id=frame.id)

    def _weights_from(self, frame: Frame) -> list[np.ndarray] | None:
        arrays = frame.arrays()
        if not arrays:
            return None
        current = self.learner.head.get_weights()
        expected = [w.shape for w in current]
        got = [a.shape for a in arrays]
        if got != expected:
            raise ProtocolError(f"{frame.type}: weights have shapes {got}, this device's head has {expected}",
                                code=ErrorCode.BAD_SHAPE, request_id=frame.id)
        return [a.astype(np.float32) for a in arrays]

    def _train(self, frame: Frame) -> tuple[dict[str, float], list[tuple[str, Any]], dict[str, Any]]:
        cfg = frame.config
        run = frame.header.get("run")
        if run != self._fed_run:  # error-feedback residuals belong to one run's parameters
            self._fed.residual.clear()
            self._fed_run = run
        theta = receive_weights(frame, self.learner.head.get_weights(), self._fed)
        if "seed" in cfg and ConfigKey.SERVER_ROUND in cfg:  # reproducible runs (federation resume): the
            # sample order depends only on (run seed, device, round), not on how many tasks came before
            self.learner.rng = np.random.default_rng(
                [int(cfg["seed"]) & 0xFFFFFFFF, zlib.crc32(self.client_id.encode()), int(cfg[ConfigKey.SERVER_ROUND])])
        return train_round(self.learner, self.x_train, self.y_train, theta, cfg, self._fed, request_id=frame.id)

    def _evaluate(self, frame: Frame) -> tuple[dict[str, float], list[tuple[str, Any]], dict[str, Any]]:
        weights = self._weights_from(frame)
        for layer in frame.config.get(ConfigKey.LOCAL_LAYERS, []):  # TinyMetaFed: evaluate with own local layers
            if weights is not None and layer in self._fed.personal:
                weights[2 * layer], weights[2 * layer + 1] = (w.copy() for w in self._fed.personal[layer])
        head = self.learner.head
        saved = head.get_weights()
        try:
            if weights is not None:
                head.set_weights(weights)
            out = self.learner.evaluate(self.x_eval, self.y_eval)
        finally:
            head.set_weights(saved)
        return dict(out), [], {}

    def _adapt(self, frame: Frame) -> tuple[dict[str, float], list[tuple[str, Any]], dict[str, Any]]:
        cfg = frame.config
        shots = int(cfg[ConfigKey.SHOTS])
        if shots > len(self.x_train):
            raise ProtocolError(f"task.adapt asks for {shots} shots but the device has {len(self.x_train)} "
                                "training samples", code=ErrorCode.BAD_CONFIG, request_id=frame.id)
        weights = self._weights_from(frame)
        if weights is not None:
            self.learner.head.set_weights(weights)
        procedure = AdaptConfig.from_task_config(cfg, default_lr=self.learner.lr)  # devices.learning.adapt
        t0 = time.perf_counter()
        out = adapt(self.learner, self.x_train[:shots], self.y_train[:shots], procedure)
        metrics: dict[str, float] = {MetricKey.NUM_EXAMPLES: shots, MetricKey.SHOTS: shots,
                                     MetricKey.LOSS_BEFORE: out.loss_before, MetricKey.LOSS_AFTER: out.loss_after}
        if out.step_losses:  # the train metrics of the steps, as `train` reports them (and the C agent)
            last = 1 if procedure.step == "batch" else min(shots, len(out.step_losses))  # one pass over the shots
            metrics.update({MetricKey.TRAIN_LOSS: float(np.mean(out.step_losses)),
                            MetricKey.TRAIN_LOSS_LAST: float(np.mean(out.step_losses[-last:])),
                            MetricKey.TRAIN_SECONDS: time.perf_counter() - t0})
        held = self.learner.evaluate(self.x_eval, self.y_eval)  # the adapted head on held-out samples
        metrics.update({k: v for k, v in held.items() if k != MetricKey.NUM_EXAMPLES})
        phi = self.learner.head.get_weights()
        return (dict(metrics), list(zip(weight_names(len(phi)), phi, strict=True)),
                {"encoding": ReplyEncoding.WEIGHTS})

    def _deploy(self, frame: Frame) -> tuple[dict[str, float], list[tuple[str, Any]], dict[str, Any],
                                              tuple[str, str] | None] | None:
        cfg = frame.config
        artifact = str(cfg[ConfigKey.ARTIFACT])
        current = self.config.state_dir / artifact
        previous_sha = sha256_hex(current.read_bytes()) if current.is_file() else self.model_sha256
        report = {"action": "refused", "artifact": artifact, "sha256": cfg[ConfigKey.SHA256],
                  "previous-sha256": previous_sha}
        try:
            data = self._assembler.add(frame)
            if data is None:
                return None
            head = self.learner.head
            arena = fit_check(data, artifact=artifact, arena_bytes=cfg.get(ConfigKey.ARENA_BYTES),
                              current=self.learner.memory(),
                              ram_bytes=self.config.board.ram_bytes, flash_bytes=self.config.board.flash_bytes)
        except DeployError as exc:
            log.warning("%s: deploy %s refused: %s", self.client_id, frame.id, exc)
            return {}, [], {"deploy": report}, (exc.code, str(exc))
        outcome = install(data, state_dir=self.config.state_dir, artifact=artifact,
                          samples=np.asarray(self.x_train[:4], np.float32),
                          head_inputs=head.layer_sizes[0] if artifact == "backbone.tflite" else None)
        if outcome.error is not None:
            log.warning("%s: deploy %s %s: %s", self.client_id, frame.id, outcome.action, outcome.error[1])
            return {}, [], {"deploy": outcome.report()}, outcome.error
        if artifact == "backbone.tflite" and outcome.model is not None:
            seen, last = self.learner.samples_seen_, self.learner.last_loss_
            self.learner = OnlineLearner(head, outcome.model, lr=self.learner.lr, seed=self.config.seed,
                                         arena_bytes=arena)
            self.learner.samples_seen_, self.learner.last_loss_ = seen, last
            self.model_sha256 = outcome.sha256
            self.memory_bytes = self.learner.memory_report()["total"]
        log.info("%s: deployed %s (%s)", self.client_id, artifact, outcome.sha256[:12])
        return {MetricKey.BYTES: len(data)}, [], {"deploy": outcome.report()}, None


def _peek_id(payload: bytes) -> str | None:
    """The correlation id of a frame too large to decode, read from its header only."""
    try:
        hdr = frame_header(payload[: 4 + 65536])
        rid = hdr.get("id")
        return rid[:128] if isinstance(rid, str) else None
    except Exception:  # noqa: BLE001 - any garbage means "no id"
        return None


