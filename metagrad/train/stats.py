"""Interval arithmetic of the training results: across seeds, across held-out tasks, both
together, paired differences between methods, and a multiplicity correction.

* **Across seeds** (training variability: initialisation and task stream): the mean of
  n per-seed numbers with the Student-t interval mean ± t₀.₉₇₅,ₙ₋₁ · s/√n, s the sample
  standard deviation (ddof = 1). For n = 5 seeds t₀.₉₇₅,₄ = 2.776. A t interval rather
  than a bootstrap: with 5 seeds a bootstrap has only 126 distinct resamples and
  under-covers. No interval for n = 1.
* **Across held-out tasks** (Finn et al.'s reference code, ``main.py:198-201``): the
  mean over n tasks ± 1.96 · std/√n with NumPy's population std (ddof = 0), the
  normal-approximation interval of one trained model's test error.
* **Both** (:func:`combined_interval`): the expected test MSE over training seeds *and*
  the task distribution, estimated by the mean over S seeds of each seed's mean over the
  same T test tasks. Its variance is the sum of a seed part and a test-set part,
  s²/S + σ²/T (crossed random effects: the test tasks are shared by the seeds, so the
  test-set part is the variance over tasks of the seed-averaged per-task MSE, σ²; the
  two parts are uncorrelated): s the sample std of the S seed means, σ the std (ddof = 1)
  over tasks of the per-task MSE averaged over seeds. Where only each run's own std over
  tasks σₛ is known (its task interval), σ ≤ mean σₛ (the std of an average is at most
  the average std) gives a conservative interval. The quantile is Student's t with the
  Welch–Satterthwaite degrees of freedom ν = (a + b)² / (a²/(S − 1) + b²/(T − 1)),
  a = s²/S, b = σ²/T, rounded down (with the bound: ν = S − 1, its smallest value, so
  that the interval stays at least as wide as the exact one).
* **Paired differences.** Every variant of a seed shares that seed's initialisation, task
  stream and test tasks, so a vs b is judged on the per-seed differences dₛ = aₛ − bₛ
  (seed part) and the per-task differences averaged over seeds (test-set part, bounded by
  σ_a + σ_b where the per-task numbers are not at hand), combined as above, with the
  two-sided p-value of the t statistic mean/se.
* **Multiplicity** (:func:`holm`): a table of m comparisons is judged with Holm's
  step-down correction (Holm 1979, "A simple sequentially rejective multiple test
  procedure"), which keeps the probability of any false "resolved" in the table below 5 %;
  each interval shown is still a 95 % interval on its own.

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
    """``mean ± half_width`` from ``n`` numbers (``half_width`` NaN when n < 2); ``se`` and
    ``df``: the standard error and the t degrees of freedom behind it, where known."""

    mean: float
    half_width: float
    n: int
    method: str
    se: float = math.nan
    df: float = math.nan

    @property
    def p_value(self) -> float:
        """Two-sided p-value of mean = 0 (the t statistic mean/se with ``df``)."""
        if not (math.isfinite(self.se) and math.isfinite(self.df) and self.df >= 1
                and math.isfinite(self.mean)):
            return math.nan
        if self.se == 0:
            return 0.0 if self.mean != 0 else 1.0
        return min(1.0, 2 * (1 - t_cdf(abs(self.mean) / self.se, int(self.df))))

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
    if not math.isfinite(s):
        return Interval(mean, math.nan, n, "t")
    se = s / math.sqrt(n)
    return Interval(mean, t_quantile((1 + level) / 2, n - 1) * se, n, "t", se, n - 1)


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


def task_sd_from_interval(half_width: float | None, n: int) -> float:
    """The std over tasks (ddof = 1) behind Finn et al.'s interval 1.96·std₀/√n (ddof = 0)."""
    if half_width is None or n < 2:
        return math.nan
    return float(half_width) * math.sqrt(n) / Z975 * math.sqrt(n / (n - 1))


def combined_interval(seed_values: Sequence[float | None], task_sd: float, n_tasks: int,
                      level: float = 0.95, bound: bool = False) -> Interval:
    """Mean over seeds of per-seed means over the same ``n_tasks`` test tasks, with the
    interval for both sources of uncertainty (see the module docstring): variance
    s²/S + ``task_sd``²/T, Welch–Satterthwaite degrees of freedom (rounded down).
    ``bound``: ``task_sd`` is an upper bound (the mean of the runs' own stds over tasks),
    which makes the interval conservative; said in ``method``."""
    v = _floats(seed_values)
    n = len(v)
    mean = sum(v) / n
    how = "t, seeds + tasks" + (" (task part bounded)" if bound else "")
    s2 = sum((x - mean) ** 2 for x in v) / (n - 1) if n > 1 else 0.0
    if not (math.isfinite(mean) and math.isfinite(s2) and math.isfinite(task_sd)) \
            or n_tasks < 2:
        return Interval(mean, math.nan, n, how)
    a, b = s2 / n, task_sd ** 2 / n_tasks
    if a + b == 0:
        return Interval(mean, 0.0, n, how, 0.0, math.inf)
    denom = (a * a / (n - 1) if n > 1 else 0.0) + b * b / (n_tasks - 1)
    df = math.floor((a + b) ** 2 / denom) if denom > 0 else n_tasks - 1
    if bound and n > 1:
        # A larger task part raises ν and so lowers the quantile; with the bound, take the
        # smallest ν Welch–Satterthwaite can give (S − 1) so the interval stays conservative.
        df = n - 1
    se = math.sqrt(a + b)
    return Interval(mean, t_quantile((1 + level) / 2, max(1, df)) * se, n, how, se, df)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): with the m p-values sorted,
    p̃₍ᵢ₎ = max over j ≤ i of min(1, (m − j + 1) p₍ⱼ₎). Rejecting where p̃ < α keeps the
    family-wise error rate of the m comparisons below α. NaN p-values stay NaN and do not
    count in m."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(finite)
    out = [math.nan] * len(p_values)
    running = 0.0
    for j, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


__all__ = ["Z975", "Interval", "combined_interval", "holm", "paired_difference",
           "seed_interval", "t_cdf", "t_quantile", "task_interval", "task_sd_from_interval"]
