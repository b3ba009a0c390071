"""Errors the device side raises for problems a user (or a remote server) can cause.

Every class is a `TinyFleetError`, so the CLI prints one `error: ...` line and exits with the
class's `exit_code`; agents turn them into error replies and keep running. This file is shared by
the learner and the agent/protocol code: append new classes, do not reorder.
"""

from __future__ import annotations

from firmware_models.exceptions import TinyFleetError


class HeadWeightsError(TinyFleetError):
    """Head weights have the wrong count, shape or dtype, contain NaN/inf, or a head file is bad."""


class LearnerInputError(TinyFleetError):
    """Samples or targets given to the learner do not match its model (shape, label range, NaN)."""


class SparseEncodingError(TinyFleetError):
    """A Top-P sparse update is malformed: out-of-range or duplicate indices, length mismatch, NaN."""


class ModelDoesNotFitError(TinyFleetError):
    """A model needs more RAM or flash than the device declares; the device keeps its old model."""


class DeviceIdError(TinyFleetError):
    """A device id or fleet name cannot be one MQTT topic level / client id (contains / + # or spaces)."""

    exit_code = 2


class ProtocolError(TinyFleetError):
    """A message breaks the wire protocol; `code` is the protocol's error code sent back in the reply.

    Parameters
    ----------
    message : str
        One line naming what is wrong and where.
    code : str, default="malformed"
        One of `devices.wire.protocol.ErrorCode`'s values.
    request_id : str or None, default=None
        The correlation id of the offending request when it could be read, so the reply can name it.
    """

    def __init__(self, message: str, *, code: str = "malformed", request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class DeployError(TinyFleetError):
    """A model deployment was refused or rolled back (bad checksum, failed self-test); the old model stays."""

    def __init__(self, message: str, *, code: str = "deploy-failed") -> None:
        super().__init__(message)
        self.code = code


class UnknownBoardError(TinyFleetError):
    """A board profile name that tinyfleet does not know."""

    exit_code = 2


class BrokerUrlError(TinyFleetError):
    """A broker URL that is not mqtt://host:port or mqtts://host:port."""

    exit_code = 2


class DeviceLinkError(TinyFleetError):
    """The MQTT connection of a device could not be made (refused, not authorized, TLS failure)."""


class HeadDivergedError(LearnerInputError):
    """An SGD step would produce NaN/inf (learning rate too high); the head keeps its weights."""


class CBuildError(TinyFleetError):
    """The C device side could not be built or run: a missing compiler, a failed build, a failed check."""
