"""Interval arithmetic of the training results: across seeds, across held-out tasks, and
for paired differences between methods.

* **Across seeds** (training variability: initialisation and task stream): the mean of
  n per-seed numbers with the Student-t interval mean ± t₀.₉₇₅,ₙ₋₁ · s/√n, s the sample
  standard deviation (ddof = 1). For n = 5 seeds t₀.₉₇₅,₄ = 2.776. A t interval rather
  than a bootstrap: with 5 seeds a bootstrap has only 126 distinct resamples and
  under-covers; the t interval is exact for normal per-seed numbers and robust enough
  for these means of hundreds of task losses. No interval for n = 1.
* **Paired differences.** Every method of a seed shares that seed's initialisation, task
  stream and test tasks, so method a vs method b is judged on the per-seed differences
  dₛ = aₛ − bₛ: mean ± t₀.₉₇₅,ₙ₋₁ · s_d/√n. The difference is *resolved* when this
  interval excludes 0. Each interval is a 95 % interval on its own; with many pairs some
  resolve by chance (no multiplicity correction is applied).
* **Across held-out tasks** (Finn et al.'s reference code, ``main.py:198-201``): the
  mean over n tasks ± 1.96 · std/√n with NumPy's population std (ddof = 0), the
  normal-approximation interval of one trained model's test error.

:func:`t_quantile` computes the Student-t quantile from the closed-form CDF for integer
degrees of freedom (Abramowitz & Stegun 26.7.3-4) by bisection, so no scipy is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z975 = 1.96
"""The normal quantile Finn et al.'s code uses for its task intervals."""


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with integer ``df`` ≥ 1 (Abramowitz & Stegun 26.7.3-4:
    with θ = arctan(t/√ν), A(t|ν) = P(|T| ≤ t) is a finite trigonometric series)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if t == 0:
        return 0.5
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        if df > 1:
            total = term
            for k in range(1, (df - 3) // 2 + 1):  # terms cos^(2k+1) θ · 2·4…2k / 3·5…(2k+1)
                term *= c2 * (2 * k) / (2 * k + 1)
                total += term
        a = 2 / math.pi * (theta + s * total) if df > 1 else 2 * theta / math.pi
    else:
        total, term = 1.0, 1.0
        for k in range(1, (df - 2) // 2 + 1):  # terms cos^(2k) θ · 1·3…(2k−1) / 2·4…2k
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return 0.5 + math.copysign(a / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on
    :func:`t_cdf` to 1e-12), e.g. ``t_quantile(0.975, 4) = 2.7764…``."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """``mean ± half_width`` from ``n`` numbers (``half_width`` NaN when n < 2)."""

    mean: float
    half_width: float
    n: int
    method: str

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.half_width:.2g}"


def _floats(values: Sequence[float | None]) -> list[float]:
    """The values as floats; None (a non-finite number read back from JSON) is NaN, so
    that an interval over it is NaN rather than a number that hides the failure."""
    out = [math.nan if v is None else float(v) for v in values]
    if not out:
        raise ValueError("an interval needs at least one value")
    return out


def seed_interval(values: Sequence[float | None], level: float = 0.95) -> Interval:
    """Mean ± t_{(1+level)/2, n−1} · s/√n over per-seed numbers (s with ddof = 1)."""
    v = _floats(values)
    n = len(v)
    mean = sum(v) / n
    if n < 2:
        return Interval(mean, math.nan, n, "t")
    s = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return Interval(mean, t_quantile((1 + level) / 2, n - 1) * s / math.sqrt(n), n, "t")


def paired_difference(a: Sequence[float | None], b: Sequence[float | None],
                      level: float = 0.95) -> Interval:
    """The t interval of the per-seed differences aₛ − bₛ (same seeds, same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)} numbers")
    return seed_interval([x - y for x, y in zip(_floats(a), _floats(b), strict=True)], level)


def task_interval(values: Sequence[float | None]) -> Interval:
    """Finn et al.'s interval over held-out tasks: mean ± 1.96 · std(ddof=0)/√n."""
    v = _floats(values)
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / n)
    return Interval(mean, Z975 * std / math.sqrt(n), n, "normal, over tasks")


__all__ = ["Z975", "Interval", "paired_difference", "seed_interval", "t_cdf", "t_quantile",
           "task_interval"]
