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


def central_difference(fun: Objective, x: Tensor, step: Tensor | float | None = None,
                       richardson: bool = False, vectorize: bool = False) -> Tensor:
    """∇F(x) by central differences, one coordinate at a time (2d or 4d evaluations).

    ``vectorize=True`` evaluates F at all 2d shifted points at once with
    ``torch.vmap`` (the same numbers up to roundoff, much faster for small
    problems); use it only for objectives without data-dependent Python control flow.
    """
    x = x.detach()
    if step is None:
        h = default_step(x, richardson)
    else:
        h = torch.as_tensor(step, dtype=x.dtype).expand_as(x).clone()
    d = _differences(fun, x, h, vectorize)
    if richardson:
        d = (4 * _differences(fun, x, h / 2, vectorize) - d) / 3
    return d


def _differences(fun: Objective, x: Tensor, h: Tensor, vectorize: bool) -> Tensor:
    eye = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
    plus = x + eye * h  # row i is x + hᵢ eᵢ
    minus = x - eye * h
    taken = torch.diagonal(plus) - torch.diagonal(minus)  # the exactly representable 2hᵢ
    if vectorize:
        values = torch.vmap(fun)(torch.cat([plus, minus]))
        f_plus, f_minus = values[: x.numel()], values[x.numel():]
    else:
        f_plus = torch.stack([fun(p) for p in plus])
        f_minus = torch.stack([fun(m) for m in minus])
    return ((f_plus - f_minus) / taken).detach()


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
