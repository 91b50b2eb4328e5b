"""Central finite differences of scalar objectives, the oracle for "is it a gradient".

Central difference D(h) = (F(x + h eᵢ) − F(x − h eᵢ)) / 2h has truncation error
h² F'''/6 and roundoff error ≈ ε|F|/h; balancing the two gives h ∝ ε^(1/3)
(≈ 6e-6 in float64), scaled by max(1, |xᵢ|) so that the step is relative for
large coordinates (Nocedal & Wright, Numerical Optimization, §8.1). With
Richardson extrapolation R = (4 D(h/2) − D(h)) / 3 the truncation error is
O(h⁴), and the balance moves to h ∝ ε^(1/5) (≈ 7e-4).
Steps are made exactly representable ((x + h) − x) so the divisor is the
step actually taken.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]


def default_step(x: Tensor, richardson: bool = False) -> Tensor:
    """Per-coordinate step ε^(1/3) max(1, |xᵢ|) (ε^(1/5) with Richardson)."""
    eps = torch.finfo(x.dtype).eps
    base = eps ** (1 / 5) if richardson else eps ** (1 / 3)
    return base * torch.clamp(x.abs(), min=1.0)


def _central(fun: Objective, x: Tensor, i: int, h: float) -> float:
    plus, minus = x.clone(), x.clone()
    plus[i] += h
    minus[i] -= h
    taken = float(plus[i] - minus[i])  # the exactly representable 2h
    return float(fun(plus) - fun(minus)) / taken


def central_difference(fun: Objective, x: Tensor, step: Tensor | float | None = None,
                       richardson: bool = False) -> Tensor:
    """∇F(x) by central differences, one coordinate at a time (2d or 4d evaluations)."""
    x = x.detach()
    if step is None:
        h = default_step(x, richardson)
    else:
        h = torch.as_tensor(step, dtype=x.dtype).expand_as(x)
    out = torch.empty_like(x)
    for i in range(x.numel()):
        hi = float(h[i])
        d = _central(fun, x, i, hi)
        if richardson:
            d = (4 * _central(fun, x, i, hi / 2) - d) / 3
        out[i] = d
    return out


def directional_difference(fun: Objective, x: Tensor, v: Tensor, step: float | None = None,
                           richardson: bool = False) -> float:
    """⟨∇F(x), v⟩ by a central difference along v (2 or 4 evaluations)."""
    x, v = x.detach(), v.detach()
    if step is None:
        eps = torch.finfo(x.dtype).eps
        base = eps ** (1 / 5) if richardson else eps ** (1 / 3)
        step = base * max(1.0, float(x.abs().max())) / float(v.abs().max())

    def d(h: float) -> float:
        return float(fun(x + h * v) - fun(x - h * v)) / (2 * h)

    out = d(step)
    if richardson:
        out = (4 * d(step / 2) - out) / 3
    return out
