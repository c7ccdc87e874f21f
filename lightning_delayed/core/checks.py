"""Argument checks shared by every config (torch-free, Lightning-free).

Every float argument of every algorithm goes through :func:`check_real`, so a NaN or an infinity
is refused at construction, naming the argument, instead of running as if it were 0 or failing
many steps later inside an update (``nan >= 0`` and ``nan <= 1`` are both ``False``, so a plain
range check lets NaN through, and ``inf`` passes every lower bound).
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def check_real(name: str, value: object, allowed: str, in_range: Callable[[float], bool] | None = None) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number inside the allowed range.

    Args:
        name: the argument's name as the user wrote it (it starts every message).
        value: what the user passed.
        allowed: what is allowed, in words (``"a number > 0"``); it follows "must be" in the messages.
        in_range: the range rule; ``None`` accepts every finite number.

    Raises:
        TypeError: ``value`` is not a real number (``bool`` counts as not one).
        ValueError: ``value`` is NaN or infinite, or outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}; allowed: {allowed}")
    if in_range is not None and not in_range(number):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return number


def positive(x: float) -> bool:
    """Range rule ``x > 0`` for :func:`check_real`."""
    return x > 0


def non_negative(x: float) -> bool:
    """Range rule ``x >= 0`` for :func:`check_real`."""
    return x >= 0
