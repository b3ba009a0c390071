"""Errors of the federation package (each names what and where; the CLI prints one line)."""

from __future__ import annotations

from firmware_models.exceptions import TinyFleetError


class FederationError(TinyFleetError):
    """A federated run cannot go on (no quorum, broker gone, bad checkpoint)."""


class QuorumError(FederationError):
    """Fewer devices than required showed up before the quorum timeout."""


class BrokerLostError(FederationError):
    """The coordinator lost its MQTT broker for longer than `--broker-timeout` (the run stays resumable)."""


class NoProgressError(FederationError):
    """Every round of a run was skipped: nothing aggregated, so the run did not learn anything."""


class CheckpointError(FederationError):
    """A run directory or its checkpoint is missing, truncated or from another tinyfleet version."""


class ConformanceError(FederationError):
    """A device failed a required check of `tinyfleet devices conformance`."""


class StrategyParameterError(TinyFleetError, ValueError):
    """A strategy was configured with a value outside its documented range."""

    exit_code = 2
