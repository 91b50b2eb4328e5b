"""Bilevel-exact targets and the scalar objectives whose gradients they are.

* MAML's target is MAML itself: ∇_θ L_val(θ⁽ᴷ⁾(θ)) (see :func:`maml_objective`).
* The implicit (iMAML / Neumann) target (Rajeswaran et al. 2019, eq. 6-7):

      ∇_θ L_val(φ*(θ)) = λ (H(φ*) + λI)⁻¹ ∇L_val(φ*),
      φ*(θ) = argmin_φ L_tr(φ) + λ/2 ‖φ − θ‖²,

  from dφ*/dθ = λ(H(φ*) + λI)⁻¹ (implicit function theorem on the optimality
  condition ∇L_tr(φ*) + λ(φ* − θ) = 0), with φ* by Newton to machine precision.
* The penalty objective L_val(θ⁽ᴷ⁾) + λ‖∇L_tr(θ⁽ᴷ⁾)‖², whose θ-gradient the
  Penalty method equals at K = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import dense
from .flat import FlatLoss
from .methods import maml


def implicit_gradient(f: FlatLoss, theta: Tensor, train: Any, val: Any, lam: float) -> Tensor:
    """λ (H(φ*) + λI)⁻¹ ∇L_val(φ*) with φ* the exact proximal minimiser."""
    phi = dense.proximal_newton(f, theta, train, lam)
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    return lam * torch.linalg.solve(dense.hessian(f, phi, train) + lam * eye,
                                    dense.gradient(f, phi, val))


def maml_objective(f: FlatLoss, train: Any, val: Any, steps: int,
                   inner_lr: float) -> Callable[[Tensor], Tensor]:
    """θ ↦ L_val(θ⁽ᴷ⁾(θ)), the inner loop run by the oracle's own loop."""

    def objective(theta: Tensor) -> Tensor:
        return dense.value(f, dense.gd_trajectory(f, theta, train, steps, inner_lr)[-1], val)

    return objective


def implicit_objective(f: FlatLoss, train: Any, val: Any, lam: float,
                       warm_start: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """θ ↦ L_val(φ*(θ)), φ* by Newton (started at ``warm_start``, e.g. φ* at the base point of a
    finite difference: the same minimiser, reached in two or three steps instead of many)."""

    def objective(theta: Tensor) -> Tensor:
        phi = dense.proximal_newton(f, theta, train, lam, start=warm_start)
        return dense.value(f, phi, val)

    return objective


def penalty_objective(f: FlatLoss, train: Any, val: Any, lam: float) -> Callable[[Tensor], Tensor]:
    """θ ↦ L_val(θ) + λ‖∇L_tr(θ)‖² (the K = 0 penalty objective)."""

    def objective(theta: Tensor) -> Tensor:
        g = dense.gradient(f, theta, train)
        return dense.value(f, theta, val) + lam * (g @ g)

    return objective


def mean_objective(objectives: list[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    """The meta-batch objective: the mean of per-task objectives."""

    def objective(theta: Tensor) -> Tensor:
        return torch.stack([o(theta) for o in objectives]).mean()

    return objective


def target(name: str, f: FlatLoss, theta: Tensor, train: Any, val: Any, **settings: Any) -> Tensor:
    """The bilevel-exact target a method named ``name`` approximates, for one task.

    MAML, FOMAML, Reptile and Penalty share MAML's inner loop, so their target is
    MAML's meta-gradient with the same ``steps`` and ``inner_lr`` (for Reptile and
    Penalty this says how far the cheap direction is from the exact one, not
    that they estimate it without bias). IMAML and Neumann target the implicit
    gradient at their ``lam``.
    """
    if name in ("imaml", "neumann"):
        return implicit_gradient(f, theta, train, val, settings["lam"])
    if name in ("maml", "fomaml", "reptile", "penalty"):
        return maml(f, theta, train, val, steps=settings["steps"],
                    inner_lr=settings["inner_lr"]).grad
    raise ValueError(f"unknown method {name!r}")
