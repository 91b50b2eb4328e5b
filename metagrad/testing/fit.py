"""Fitting a deviation's free parameters (a damping, a warm start's weight) to a result.

``fit(residual, starts)`` minimises ‖r(p)‖ over a few parameters p by Levenberg–Marquardt
(Levenberg 1944, Marquardt 1963) with a forward-difference Jacobian, from each start in
turn, and returns the best. Where the result *is* the deviation at some p*, r(p*) = 0 and
the iteration converges quadratically to the rounding level, so that a fitted match is as
exact as an unfitted one. Parameters bounded below (c > −1 for a damping 1 + c) are
searched as u = log(p − lower).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def _to_internal(p: float, lower: float | None) -> float:
    return p if lower is None else math.log(max(p - lower, 1e-300))


def _from_internal(u: float, lower: float | None) -> float:
    return u if lower is None else lower + math.exp(min(u, 700.0))


def fit(residual: Callable[[list[float]], Tensor], starts: Sequence[Sequence[float]],
        lower: Sequence[float | None], *, iters: int = 40,
        stall: float = 1e-3) -> tuple[list[float], float]:
    """``(p, ‖r(p)‖)`` for the best p found from ``starts`` (see the module docstring);
    ``lower[i]`` bounds parameter i strictly from below (None: unbounded). A start whose
    residual is still above ``stall`` after 8 iterations is abandoned: the fit is for
    recognising an exact match, which converges much faster (the residual is
    expected relative to the result's size)."""
    best: tuple[list[float], float] = ([float(s) for s in starts[0]], math.inf)

    def norm_at(u: list[float]) -> tuple[Tensor | None, float]:
        p = [_from_internal(x, lo) for x, lo in zip(u, lower)]
        r = residual(p)
        value = float(torch.linalg.vector_norm(r))
        return (r, value) if math.isfinite(value) else (None, math.inf)

    for start in starts:
        u = [_to_internal(float(s), lo) for s, lo in zip(start, lower)]
        r, value = norm_at(u)
        mu = 1e-3
        for it in range(iters):
            if r is None or value == 0.0 or (it >= 8 and value > stall):
                break
            columns = []
            for i in range(len(u)):
                h = 1e-7 * (1.0 + abs(u[i]))
                shifted = list(u)
                shifted[i] += h
                r_h, _unused = norm_at(shifted)
                if r_h is None:
                    break
                columns.append((r_h - r) / h)
            if len(columns) != len(u):
                break
            jac = torch.stack(columns, 1)
            jtj, jtr = jac.T @ jac, jac.T @ r
            improved = False
            while mu < 1e12:
                step = torch.linalg.solve(jtj + mu * torch.diag(torch.diag(jtj) + 1e-30), -jtr)
                trial = [x + float(s) for x, s in zip(u, step)]
                r_t, value_t = norm_at(trial)
                if value_t < value:
                    u, r, value, improved = trial, r_t, value_t, True
                    mu = max(mu / 10, 1e-12)
                    break
                mu *= 10
            if not improved or float(torch.linalg.vector_norm(step)) < 1e-15 * (
                    1 + max(abs(x) for x in u)):
                break
        if value < best[1]:
            best = ([_from_internal(x, lo) for x, lo in zip(u, lower)], value)
    return best
