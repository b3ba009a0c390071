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
    PROXIMAL_MU = "proximal-mu"
    """FedProx's μ: train on loss + μ/2·‖w − w_task‖² (the key Flower's `FedProx` sets)."""
    CLIPPING_NORM = "clipping_norm"
    """Clip the update φ − θ to this L2 norm before replying (the key, spelled as Flower spells it, of the
    client-side differential-privacy clipping wrappers and `fixedclipping_mod`/`adaptiveclipping_mod`)."""
    REQUIRED = "required"
    """Config keys the device must implement; one it does not implement makes it answer ``unsupported-config``."""


class MetricKey(_Constants):
    """Keys of a result's ``metrics`` object."""

    NUM_EXAMPLES = "num-examples"
    TRAIN_LOSS = "train-loss"
    LOSS = "loss"
    ACCURACY = "accuracy"
    LOSS_BEFORE = "loss-before"
    LOSS_AFTER = "loss-after"
    TRAIN_SECONDS = "train-seconds"
    NORM_BIT = "norm_bit"
    """1 if the update was clipped to ``clipping_norm``, else 0 (Flower's adaptive clipping counts these)."""


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
    UNSUPPORTED_CONFIG = "unsupported-config"
    INTERNAL = "internal"


ERROR_CODES = tuple(v for k, v in vars(ErrorCode).items() if k.isupper())


class Encoding(_Constants):
    """How a result's update tensors travel (the result header's ``encoding``)."""

    DENSE = "dense"
    TOP_P = "top-p"


SPARSE_INDEX_SUFFIX = ".idx"
SPARSE_VALUE_SUFFIX = ".val"
"""A Top-P update of tensor ``w0`` reaches Flower as two arrays, ``w0.idx`` and ``w0.val``."""
