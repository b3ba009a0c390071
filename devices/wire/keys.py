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
    """Keys of a result's ``metrics`` object: the one metric vocabulary of every tinyfleet device.

    The Python agent, the C agent and ``examples/minimal_device.py`` use exactly these names, and
    `devices.learning.learner.OnlineLearner` returns them, so a mixed fleet never loses a metric
    to differing spellings (the Grid keeps only keys every reply of a phase has).
    """

    NUM_EXAMPLES = "num-examples"
    """Integer >= 1. train: SGD samples processed (local-steps x batch 1, repeats counted);
    evaluate: held-out samples scored; adapt: shots used. FedAvg weights by it."""
    TRAIN_LOSS = "train-loss"
    """train/adapt: mean prequential loss over the local steps (each sample scored before it is learnt)."""
    TRAIN_LOSS_LAST = "train-loss-last"
    """train: mean prequential loss over the last pass, min(local-steps, n_train) steps."""
    TRAIN_SECONDS = "train-seconds"
    """train: wall time of the local SGD steps, seconds."""
    RECONSTRUCT_LOSS = "reconstruct-loss"
    """train with local-layers and reconstruct-steps > 0: mean loss of the local-layer re-fit."""
    TOP_P = "top-p"
    """train with top-p: the fraction the device applied (echo of the config)."""
    LOSS = "loss"
    """evaluate/adapt: mean loss on the device's held-out samples (MSE or cross-entropy)."""
    MSE = "mse"
    """evaluate/adapt, regression use cases: mean squared error on the held-out samples."""
    ACCURACY = "accuracy"
    """evaluate/adapt, classification use cases: fraction of held-out samples classified right."""
    LOSS_BEFORE = "loss-before"
    """adapt: mean loss on the shots before the adaptation steps."""
    LOSS_AFTER = "loss-after"
    """adapt: mean loss on the shots after the adaptation steps."""
    SHOTS = "shots"
    """adapt: number of shots used (echo of the config)."""
    BYTES = "bytes"
    """deploy: size of the installed file."""
    NORM_BIT = "norm_bit"
    """1 if the update was clipped to ``clipping_norm``, else 0 (Flower's adaptive clipping counts these)."""


REQUIRED_METRICS: dict[str, tuple[str, ...]] = {
    MessageType.TRAIN: (MetricKey.NUM_EXAMPLES, MetricKey.TRAIN_LOSS),
    MessageType.EVALUATE: (MetricKey.NUM_EXAMPLES, MetricKey.LOSS),
    MessageType.ADAPT: (MetricKey.NUM_EXAMPLES, MetricKey.LOSS_BEFORE, MetricKey.LOSS_AFTER),
    MessageType.DEPLOY: (),
}
"""Metrics an ``ok`` result must carry, per task type (the result schema and the Grid require them)."""
METRIC_KEYS = tuple(v for k, v in vars(MetricKey).items() if k.isupper())


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
    """How the Grid reads a train reply's tensors (decided by the task's ``top-p``, not by the reply)."""

    DENSE = "dense"
    TOP_P = "top-p"


class ReplyEncoding(_Constants):
    """The result header's ``encoding`` of a train or adapt reply."""

    WEIGHTS = "weights"
    """Dense tensors holding the trained weights phi."""
    DELTA = "delta"
    """Sparse tensors holding the Top-P entries of phi - theta (the task set ``top-p``)."""


SPARSE_INDEX_SUFFIX = ".idx"
SPARSE_VALUE_SUFFIX = ".val"
"""A Top-P update of tensor ``w0`` reaches Flower as two arrays, ``w0.idx`` and ``w0.val``."""
