"""Checks of user settings, shared by the methods, the CLI and meta-training.

Each raises ``ValueError`` naming the setting, what is allowed and the value given.
"""

from __future__ import annotations

import math
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def positive_float(name: str, value: Any) -> None:
    if not _is_number(value) or not (0 < value < math.inf):  # NaN fails both comparisons
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def non_negative_float(name: str, value: Any) -> None:
    if not _is_number(value) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
