"""Checks of user settings, shared by the methods, the solvers and the applications.

Each raises ``ValueError`` naming the setting, what is allowed and the value given, and
returns the value as a plain Python ``int`` or ``float``: numpy scalars (``np.int64``,
``np.float32``, ...) and other ``numbers.Integral`` / ``numbers.Real`` values are
accepted and normalised, so that a configuration prints, compares and serialises the
same whatever produced it. ``bool`` is refused: ``steps=True`` is a mistake, not 1.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def _integral(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and \
        type(value).__name__ != "bool_"


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        type(value).__name__ != "bool_"


def non_negative_int(name: str, value: Any) -> int:
    if not _integral(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    if not _integral(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    if not _real(value) or not (0 < float(value) < math.inf):  # NaN fails both comparisons
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def non_negative_float(name: str, value: Any) -> float:
    if not _real(value) or not (0 <= float(value) < math.inf):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def settle(obj: Any, name: str, check: Any) -> None:
    """Validate field ``name`` of a frozen dataclass with ``check`` and store the
    normalised value (``object.__setattr__``: the dataclass is frozen)."""
    object.__setattr__(obj, name, check(name, getattr(obj, name)))
