"""The wire protocol's names: message types, config keys, metric keys, error codes.

Every key that travels is spelled here once (hyphenated, as in Flower's records); code on both
sides imports these constants instead of writing the strings. Constant classes cannot be
instantiated (like Flower's ``MessageType``).
"""

from __future__ import annotations

PROTOCOL_VERSION = 1


class _Constants:
    def __new__(cls, *args: object, **kwargs: object) -> _Constants:
        raise TypeError(f"{cls.__name__} cannot be instantiated.")


class MessageType(_Constants):
    """The ``type`` of every message."""

    TRAIN = "task.train"
    EVALUATE = "task.evaluate"
    DEPLOY = "task.deploy"
    ADAPT = "task.adapt"
    RESULT = "result"
    PRESENCE = "presence"
    TELEMETRY = "telemetry"


TASK_TYPES = (MessageType.TRAIN, MessageType.EVALUATE, MessageType.DEPLOY, MessageType.ADAPT)
FRAME_TYPES = (*TASK_TYPES, MessageType.RESULT)


class ConfigKey(_Constants):
    """Keys of a task's ``config`` object (hyphenated, as in Flower's records)."""

    SERVER_ROUND = "server-round"
    LOCAL_STEPS = "local-steps"
    LR = "lr"
    SEED = "seed"
    TOP_P = "top-p"
    LOCAL_LAYERS = "local-layers"
    RECONSTRUCT_STEPS = "reconstruct-steps"
    SHOTS = "shots"
    STEPS = "steps"
    ARTIFACT = "artifact"
    SHA256 = "sha256"
    SIZE = "size"
    CHUNK_INDEX = "chunk-index"
    CHUNK_COUNT = "chunk-count"
    ARENA_BYTES = "arena-bytes"
    # --- federated meta-learning (issue 13; docs/protocol.md "Meta-learning keys") ---
    READOUT_LAMBDA = "readout-lambda"
    """train: re-fit the local (last) layer in closed form (ridge, this lambda) before training;
    adapt: the same on the shots before the adaptation steps."""
    ADAPT_STEP = "adapt-step"
    """adapt: what one step is, "batch" (mean loss of the shots) or "sample" (batch-1; the default)."""
    ERROR_FEEDBACK = "error-feedback"
    """train with top-p: keep the unsent part of the update on the device and add it to the next one."""
    DOWNLINK = "downlink"
    """train: how the weights travel, "dense" (default) or "delta-q8" (int8 deltas to the device's base)."""
    DOWNLINK_SCALES = "downlink-scales"
    """train, delta-q8: one float32 scale per tensor, in tensor order (value = base + q * scale)."""
    BASE_CRC = "base-crc"
    """train, delta-q8: CRC-32 of the base the server assumes the device holds (float32 LE, tensor order)."""


class MetricKey(_Constants):
    """Keys of a result's ``metrics`` object."""

    NUM_EXAMPLES = "num-examples"
    TRAIN_LOSS = "train-loss"
    LOSS = "loss"
    ACCURACY = "accuracy"
    LOSS_BEFORE = "loss-before"
    LOSS_AFTER = "loss-after"
    TRAIN_SECONDS = "train-seconds"


class ErrorCode(_Constants):
    """``error.code`` values of a failed result."""

    BAD_VERSION = "bad-version"
    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown-type"
    BAD_CONFIG = "bad-config"
    BAD_SHAPE = "bad-shape"
    NOT_FINITE = "not-finite"
    TOO_LARGE = "too-large"
    NO_MODEL = "no-model"
    SHA_MISMATCH = "sha-mismatch"
    SELF_TEST_FAILED = "self-test-failed"
    DOES_NOT_FIT = "does-not-fit"
    STALE_BASE = "stale-base"
    INTERNAL = "internal"


ERROR_CODES = tuple(v for k, v in vars(ErrorCode).items() if k.isupper())


class Encoding(_Constants):
    """How a result's update tensors travel (the result header's ``encoding``)."""

    DENSE = "dense"
    TOP_P = "top-p"


class Downlink(_Constants):
    """How a train task's weights travel (config ``downlink``)."""

    DENSE = "dense"
    DELTA_Q8 = "delta-q8"


ADAPT_STEPS = ("batch", "sample")
"""Values of ``adapt-step``."""

SPARSE_INDEX_SUFFIX = ".idx"
SPARSE_VALUE_SUFFIX = ".val"
"""A Top-P update of tensor ``w0`` reaches Flower as two arrays, ``w0.idx`` and ``w0.val``."""
