"""On/off duty cycles of intermittent simulated devices (microcontrollers that sleep to save power).

A battery-powered device is online `online_s` seconds of every `period_s` (shifted by its own
`phase_s`); asleep, it is gone like a crashed device: the broker publishes its Last Will and tasks
sent meanwhile are lost, until it wakes, reconnects and announces itself again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DutyCycle:
    """When one device is awake; the schedule starts when it is armed (after the fleet has connected once)."""

    online_s: float
    period_s: float
    phase_s: float = 0.0
    t0: float | None = None

    def arm(self, t0: float) -> None:
        """Start the schedule at monotonic time `t0`."""
        self.t0 = t0

    def asleep_for(self, now: float) -> float:
        """Seconds until the next online phase if the device should sleep at `now`, else 0."""
        if self.t0 is None or self.period_s <= 0:
            return 0.0
        pos = (now - self.t0 + self.phase_s) % self.period_s
        return self.period_s - pos if pos >= self.online_s else 0.0
