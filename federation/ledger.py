"""Per-round bookkeeping of what travelled and what was rejected, filled in by the Grid.

Flower logs failures but keeps no count of bytes, late replies or why a reply was rejected; the
experiments need exactly those numbers (TinyMetaFed's whole point is fewer bytes), so the Grid
records them here as they happen and the coordinator writes one JSONL line per round.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PhaseStats:
    """Counters of one phase ("train" or "evaluate") of one round."""

    sent: int = 0
    replies: int = 0
    failures: int = 0
    missing: int = 0
    resent: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "replies": self.replies, "failures": self.failures,
                "missing": self.missing, "resent": self.resent, "bytes_down": self.bytes_down,
                "bytes_up": self.bytes_up,
                "seconds": round(self.seconds, 6), "reasons": dict(sorted(self.reasons.items()))}


class RoundLedger:
    """Thread-safe counters keyed by (round, phase); the transport thread and the strategy share it.

    Discarded messages that cannot be tied to a phase of ours (late replies, foreign runs, garbage)
    are booked under the phase that was running when they arrived, with phase name "discarded".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[int, str], PhaseStats] = {}

    def phase(self, server_round: int, phase: str) -> PhaseStats:
        with self._lock:
            return self._stats.setdefault((server_round, phase), PhaseStats())

    def add(self, server_round: int, phase: str, **increments: float) -> None:
        """Add `increments` (attribute=amount) to the counters of (round, phase)."""
        with self._lock:
            st = self._stats.setdefault((server_round, phase), PhaseStats())
            for name, amount in increments.items():
                setattr(st, name, getattr(st, name) + amount)

    def reject(self, server_round: int, phase: str, reason: str) -> None:
        """Count one rejected reply (as a failure) with its short reason."""
        with self._lock:
            st = self._stats.setdefault((server_round, phase), PhaseStats())
            st.failures += 1
            st.reasons[reason] += 1

    def discard(self, server_round: int, reason: str, nbytes: int) -> None:
        """Count a message that was dropped without being a reply of the running phase."""
        with self._lock:
            st = self._stats.setdefault((server_round, "discarded"), PhaseStats())
            st.replies += 1
            st.bytes_up += nbytes
            st.reasons[reason] += 1

    def round_summary(self, server_round: int) -> dict[str, Any]:
        """All phases of `server_round` as plain dicts, plus totals of bytes."""
        with self._lock:
            phases = {p: s.as_dict() for (r, p), s in self._stats.items() if r == server_round}
        return {
            "phases": phases,
            "bytes_down": sum(p["bytes_down"] for p in phases.values()),
            "bytes_up": sum(p["bytes_up"] for p in phases.values()),
        }
