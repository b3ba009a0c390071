"""How many examples a property runs: its base count under the suite's profile, more under `make fuzz`.

The "tinyfleet" profile (tests/conftest.py) runs the default 100 examples per property and
derandomized; the "fuzz" profile raises `max_examples` to 1000. A property whose base count
differs asks for `examples(n)`: n under the default profile, n × (profile's max_examples / 100)
under another, so `make fuzz` scales every property alike.
"""

from __future__ import annotations

from hypothesis import settings

BASE_EXAMPLES = 100


def examples(n: int) -> int:
    """`n` scaled by the loaded profile's `max_examples` relative to Hypothesis' default of 100."""
    return max(1, n * settings().max_examples // BASE_EXAMPLES)
