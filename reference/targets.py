"""Bilevel-exact targets and the scalar objectives whose gradients they are.

* MAML's target is MAML itself: ∇_θ L_val(θ⁽ᴷ⁾(θ)) (see :func:`maml_objective`), which
  :func:`maml_gradient` computes by reverse mode through the oracle's own unrolled loop
  (cheap at any size; :func:`metagrad_reference.methods.maml` forms the same product of dense
  Hessians for small problems).
* The implicit (iMAML / Neumann) target (Rajeswaran et al. 2019, eq. 6-7):

      ∇_θ L_val(φ*(θ)) = λ (H(φ*) + λI)⁻¹ ∇L_val(φ*),
      φ*(θ) = argmin_φ L_tr(φ) + λ/2 ‖φ − θ‖²,

  from dφ*/dθ = λ(H(φ*) + λI)⁻¹ (implicit function theorem on the optimality
  condition ∇L_tr(φ*) + λ(φ* − θ) = 0), with φ* to machine precision
  (:func:`metagrad_reference.dense.proximal_minimiser`: L-BFGS, then Newton).
* The penalty objective at K = 0, L_val(θ) + λ‖∇L_tr(θ)‖², whose θ-gradient the
  Penalty method equals at K = 0 (for K > 0 its quantity is this objective's gradient
  in φ = θ⁽ᴷ⁾, the inner loop held constant).

Which target belongs to which method is the caller's knowledge, not the oracle's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import dense
from .flat import FlatLoss


def maml_gradient(f: FlatLoss, theta: Tensor, train: Any, val: Any, steps: int,
                  inner_lr: float) -> Tensor:
    """∇_θ L_val(θ⁽ᴷ⁾(θ)) by reverse mode (plain ``torch.autograd`` with ``create_graph``)
    through K steps of θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇L_tr(θ⁽ᵏ⁾) (Finn et al. 2017, eq. 1)."""
    w = theta.detach().clone().requires_grad_(True)
    phi = w
    for _ in range(steps):
        (g,) = torch.autograd.grad(f(phi, train), phi, create_graph=True)
        phi = phi - inner_lr * g
    (out,) = torch.autograd.grad(f(phi, val), w, allow_unused=True)
    return torch.zeros_like(theta) if out is None else out.detach()


def implicit_gradient(f: FlatLoss, theta: Tensor, train: Any, val: Any, lam: float) -> Tensor:
    """λ (H(φ*) + λI)⁻¹ ∇L_val(φ*) with φ* the exact proximal minimiser; a ``ValueError``
    where φ* is not a strict minimiser reached to roundoff (the target is then undefined)."""
    solution = dense.proximal_minimiser(f, theta, train, lam)
    if not solution.converged:
        raise ValueError(
            f"the proximal inner problem (λ = {lam}) has no strict minimiser reached to "
            f"roundoff here (gradient norm {solution.grad_norm:.2e}, or H + λI not positive "
            "definite): the implicit gradient is undefined; a smooth loss and a larger lam help")
    phi = solution.phi
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
