"""Errors of the broker package; each carries the CLI exit code (1 = failure)."""

from __future__ import annotations

from firmware_models.exceptions import TinyFleetError


class BrokerError(TinyFleetError):
    """Mosquitto is missing, would not start, or is not where its state file says."""


class SecurityError(TinyFleetError):
    """Broker security files are missing, inconsistent or cannot be written, or an enrolment is refused."""
