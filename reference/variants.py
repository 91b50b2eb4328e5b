"""The usual wrong meta-gradients, computed exactly: what a buggy implementation returns.

Each function here is one mistake that meta-learning code has shipped, computed densely in
float64 from its own equation, per task, like :mod:`metagrad_reference.methods` (same
arguments: a flat loss ``f``, the flat θ, one task's ``train`` and ``val`` batches and
metagrad's settings ``steps``, ``inner_lr``, ``lam``, ``cg_iters``, ``terms``, ``step``).
An auditor compares a failing implementation with these values to say *which* mistake it
makes rather than only that it is wrong. Mistakes that are plain transformations of the
correct value (the wrong sign, a sum over tasks instead of the mean, one tensor left at
zero, one step or iteration more or fewer) are the caller's: they need no new equation.

Notation as in :mod:`metagrad_reference.methods`: θ⁽⁰⁾ = θ, θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇L_tr(θ⁽ᵏ⁾),
H = ∇²L_tr, and for the implicit methods φ = φ⁽ᴷ⁾ after K proximal steps
φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α(∇L_tr(φ⁽ᵏ⁾) + λ(φ⁽ᵏ⁾ − θ)), A = I + H(φ)/λ, b = ∇L_val(φ).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import dense
from .flat import FlatLoss


def _eye(theta: Tensor) -> Tensor:
    return torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)


def _system(f: FlatLoss, theta: Tensor, train: Any, val: Any, steps: int, inner_lr: float,
            lam: float, proximal: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(H(φ), b = ∇L_val(φ), I) at φ from K proximal (or, ``proximal=False``, plain) steps."""
    if proximal:
        phi = dense.proximal_gd(f, theta, train, steps, inner_lr, lam)[-1]
    else:
        phi = dense.gd_trajectory(f, theta, train, steps, inner_lr)[-1]
    return dense.hessian(f, phi, train), dense.gradient(f, phi, val), _eye(theta)


def unadapted(f: FlatLoss, theta: Tensor, train: Any, val: Any, **_: Any) -> Tensor:
    """gᵢ = ∇L_val(θ): the validation gradient at θ, no inner adaptation at all
    (joint training on the validation batches)."""
    return dense.gradient(f, theta, val)


def first_order(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                inner_lr: float, **_: Any) -> Tensor:
    """gᵢ = ∇L_val(θ⁽ᴷ⁾), plain GD inner loop: MAML with every (I − αH(θ⁽ᵏ⁾)) factor
    dropped, i.e. the inner loop not differentiated (first-order MAML, Finn et al. 2017
    §5.2). Wrong for MAML with K ≥ 1; it is FOMAML's definition."""
    return dense.gradient(f, dense.gd_trajectory(f, theta, train, steps, inner_lr)[-1], val)


def second_order(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                 inner_lr: float, **_: Any) -> Tensor:
    """gᵢ = (I − αH(θ⁽⁰⁾)) ⋯ (I − αH(θ⁽ᴷ⁻¹⁾)) ∇L_val(θ⁽ᴷ⁾): the inner loop differentiated
    where a first-order method (FOMAML, Reptile's comparison, Penalty's inner loop) must
    treat it as a constant (Finn et al. 2017, eq. 1-2)."""
    points = dense.gd_trajectory(f, theta, train, steps, inner_lr)
    g = dense.gradient(f, points[-1], val)
    for point in reversed(points[:-1]):
        g = (_eye(theta) - inner_lr * dense.hessian(f, point, train)) @ g
    return g


def implicit_first_order(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                         inner_lr: float, lam: float, **_: Any) -> Tensor:
    """gᵢ = b = ∇L_val(φ), φ after K proximal steps: the implicit correction (I + H/λ)⁻¹
    left out, i.e. the inner loop treated as a constant (Rajeswaran et al. 2019 §3 call
    this first-order iMAML)."""
    return _system(f, theta, train, val, steps, inner_lr, lam)[1]


def cg_without_lam(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                   inner_lr: float, lam: float, cg_iters: int, **_: Any) -> Tensor:
    """gᵢ = m CG iterations from 0 on (H(φ) + λI) x = ∇L_val(φ): the solution of the
    optimality system without the factor λ of the implicit gradient λ(H + λI)⁻¹b
    (Rajeswaran et al. 2019, eq. 6). The CG iterates on H + λI are exactly 1/λ times those
    on I + H/λ, so this is the correct value divided by λ."""
    h, b, eye = _system(f, theta, train, val, steps, inner_lr, lam)
    if cg_iters >= theta.numel():
        return torch.linalg.solve(h + lam * eye, b)
    return dense.conjugate_gradient(h + lam * eye, b, cg_iters)


def cg_stale_residual(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                      inner_lr: float, lam: float, cg_iters: int, **_: Any) -> Tensor:
    """m iterations of "CG" on (I + H(φ)/λ) x = ∇L_val(φ) whose direction update uses the
    OLD residual:

        αₖ = rₖᵀrₖ / pₖᵀApₖ;  xₖ₊₁ = xₖ + αₖpₖ;  rₖ₊₁ = rₖ − αₖApₖ;
        βₖ = rₖ₊₁ᵀrₖ₊₁ / rₖᵀrₖ;  pₖ₊₁ = rₖ + βₖpₖ   (conjugate gradient has rₖ₊₁ here).

    The first iteration is CG's (Hestenes & Stiefel 1952); from the second on the
    directions are no longer conjugate and the recursion does not converge to A⁻¹b."""
    h, b, eye = _system(f, theta, train, val, steps, inner_lr, lam)
    a = eye + h / lam
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()
    for _iteration in range(cg_iters):
        rr = r @ r
        if rr == 0:
            break
        ap = a @ p
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r_new = r - alpha * ap
        p = r + ((r_new @ r_new) / rr) * p
        r = r_new
    return x


def cg_normal_equations(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                        inner_lr: float, lam: float, cg_iters: int, **_: Any) -> Tensor:
    """m CG iterations from 0 on the normal equations AᵀA x = Aᵀb, A = I + H(φ)/λ symmetric:
    A² x = A b. The same limit A⁻¹b as iMAML's CG, different iterates (CG on the normal
    equations, "CGNR"; Saad 2003, Iterative Methods for Sparse Linear Systems §8.3)."""
    h, b, eye = _system(f, theta, train, val, steps, inner_lr, lam)
    a = eye + h / lam
    if cg_iters >= theta.numel():
        return torch.linalg.solve(a, b)
    return dense.conjugate_gradient(a @ a, a @ b, cg_iters)


def implicit_exact_solve(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                         inner_lr: float, lam: float, **_: Any) -> Tensor:
    """gᵢ = (I + H(φ)/λ)⁻¹ ∇L_val(φ) solved exactly at φ = φ⁽ᴷ⁾: the linear solver run to
    convergence (or stopped on a tolerance) instead of a fixed number of iterations."""
    h, b, eye = _system(f, theta, train, val, steps, inner_lr, lam)
    return torch.linalg.solve(eye + h / lam, b)


def implicit_plain_inner(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                         inner_lr: float, lam: float, cg_iters: int | None = None,
                         terms: int | None = None, step: float = 1.0, **_: Any) -> Tensor:
    """The implicit method's solver (m CG iterations, or the J-term Neumann series when
    ``terms`` is given) on (I + H(φ)/λ) x = ∇L_val(φ), but at φ from K *plain* GD steps
    θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇L_tr(θ⁽ᵏ⁾): the proximal term λ(φ − θ) of the inner loop forgotten
    (Rajeswaran et al. 2019, eq. 4 has it)."""
    h, b, eye = _system(f, theta, train, val, steps, inner_lr, lam, proximal=False)
    a = eye + h / lam
    if terms is not None:
        return dense.neumann_sum(a, b, terms, step)
    assert cg_iters is not None
    if cg_iters >= theta.numel():
        return torch.linalg.solve(a, b)
    return dense.conjugate_gradient(a, b, cg_iters)


def neumann_non_alternating(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                            inner_lr: float, lam: float, terms: int, step: float = 1.0,
                            **_: Any) -> Tensor:
    """x_J = η Σ_{j=0..J} (I − η(I − H(φ)/λ))ʲ ∇L_val(φ): the Neumann series of
    (I − H/λ)⁻¹, for η = 1 the non-alternating Σ (H/λ)ʲ b, where the implicit gradient
    needs (I + H/λ)⁻¹, whose series alternates, Σ (−H/λ)ʲ b (Lorraine et al. 2020, eq. 9,
    is written for (I − αH)⁻¹ with the inner step α; carried over to λ the sign flips)."""
    h, b, eye = _system(f, theta, train, val, steps, inner_lr, lam)
    return dense.neumann_sum(eye - h / lam, b, terms, step)


def neumann_without_lam(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                        inner_lr: float, lam: float, terms: int, step: float = 1.0,
                        **_: Any) -> Tensor:
    """x_J = (η/λ) Σ_{j=0..J} (I − (η/λ)(H(φ) + λI))ʲ ∇L_val(φ): the series for
    (H + λI)⁻¹b with step η/λ, without the factor λ of the implicit gradient λ(H + λI)⁻¹b;
    the correct value divided by λ."""
    h, b, eye = _system(f, theta, train, val, steps, inner_lr, lam)
    return dense.neumann_sum(h + lam * eye, b, terms, step / lam)


def penalty_without_two(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                        inner_lr: float, lam: float, **_: Any) -> Tensor:
    """gᵢ = ∇L_val(φ) + λ H(φ)∇L_tr(φ): the penalty direction with the factor 2 of
    ∇(λ‖∇L_tr‖²) = 2λH∇L_tr dropped (Mehra & Hamm 2021 differentiate λ‖∇L_tr‖²)."""
    phi = dense.gd_trajectory(f, theta, train, steps, inner_lr)[-1]
    return dense.gradient(f, phi, val) + lam * dense.hessian(f, phi, train) @ dense.gradient(
        f, phi, train)


def reptile_unscaled(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
                     inner_lr: float, **_: Any) -> Tensor:
    """gᵢ = (θ − φ)/α = Σ_{k<K} ∇L_tr(θ⁽ᵏ⁾): Reptile's displacement divided by the inner
    step (Nichol et al. 2018, Alg. 1 uses θ − φ itself)."""
    points = dense.gd_trajectory(f, theta, train, steps, inner_lr)
    g = torch.zeros_like(theta)
    for point in points[:-1]:
        g = g + dense.gradient(f, point, train)
    return g
