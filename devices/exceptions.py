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
