"""sklearn-style checks of strategy parameters, called at the end of each `__init__`.

A wrong value must fail when the strategy is built, not rounds later on a device; the message
names the parameter, the class and the allowed range in one template.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def check_real(owner: object, name: str, value: object, low: float, high: float, *,
               closed: str = "both") -> None:
    """Require a real `value` in the interval (`closed`: "both", "left", "right", "neither")."""
    left = "[" if closed in ("both", "left") else "("
    right = "]" if closed in ("both", "right") else ")"
    ok = False
    if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(v := float(value)):
        ok = (v >= low if left == "[" else v > low) and (v <= high if right == "]" else v < high)
    if not ok:
        raise _error(owner, name, f"a float in the range {left}{_fmt(low)}, {_fmt(high)}{right}", value)


def check_int(owner: object, name: str, value: object, low: int, high: int | None = None) -> None:
    """Require an integer `value` >= `low` (and <= `high`)."""
    ok = False
    if isinstance(value, Integral) and not isinstance(value, bool):
        ok = low <= int(value) and (high is None or int(value) <= high)
    if not ok:
        rng = f"an int in the range [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise _error(owner, name, rng, value)


def check_choice(owner: object, name: str, value: object, choices: tuple[str, ...]) -> None:
    """Require `value` to be one of the strings `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise _error(owner, name, "one of " + ", ".join(repr(c) for c in choices), value)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}"


def _error(owner: object, name: str, constraint: str, value: object) -> Exception:
    from federation.exceptions import StrategyParameterError

    return StrategyParameterError(
        f"The {name!r} parameter of {type(owner).__name__} must be {constraint}. Got {value!r} instead.")
