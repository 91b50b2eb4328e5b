"""The exact quantity each metagrad method computes, per task, densely.

Notation: θ⁽⁰⁾ = θ, θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇L_tr(θ⁽ᵏ⁾), φ = θ⁽ᴷ⁾,
H(φ) = ∇²L_tr(φ). Each function takes a flat loss ``f``, the flat θ, one
task's ``train`` and ``val`` batches and the method's settings (metagrad's
names: ``steps``, ``inner_lr``, ``lam``, ``cg_iters``, ``terms``, ``step``),
and returns a :class:`RefResult`. :func:`meta_batch` averages over tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import dense
from .flat import FlatLoss


@dataclass
class RefResult:
    grad: Tensor
    """gᵢ, flat."""
    pre_update_loss: Tensor
    """L_tr(θ)."""
    post_update_loss: Tensor
    """L_val(φ)."""


def _eye(theta: Tensor) -> Tensor:
    return torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)


def maml(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
         inner_lr: float, **_: Any) -> RefResult:
    """gᵢ = (I − αH(θ⁽⁰⁾)) ⋯ (I − αH(θ⁽ᴷ⁻¹⁾)) ∇L_val(φ)  (Finn et al. 2017, eq. 1-2, chain rule),
    the matrix product formed explicitly from dense Hessians."""
    points = dense.gd_trajectory(f, theta, train, steps, inner_lr)
    g = dense.gradient(f, points[-1], val)
    for point in reversed(points[:-1]):
        g = (_eye(theta) - inner_lr * dense.hessian(f, point, train)) @ g
    return RefResult(g, dense.value(f, theta, train), dense.value(f, points[-1], val))


def fomaml(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
           inner_lr: float, **_: Any) -> RefResult:
    """gᵢ = ∇L_val(φ) (Finn et al. 2017, §5.2)."""
    phi = dense.gd_trajectory(f, theta, train, steps, inner_lr)[-1]
    return RefResult(dense.gradient(f, phi, val), dense.value(f, theta, train),
                     dense.value(f, phi, val))


def reptile(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int,
            inner_lr: float, **_: Any) -> RefResult:
    """gᵢ = θ − φ = α Σₖ ∇L_tr(θ⁽ᵏ⁾), k = 0, …, K − 1 (Nichol et al. 2018, Alg. 1), as the
    explicit sum."""
    points = dense.gd_trajectory(f, theta, train, steps, inner_lr)
    g = torch.zeros_like(theta)
    for point in points[:-1]:
        g = g + inner_lr * dense.gradient(f, point, train)
    return RefResult(g, dense.value(f, theta, train), dense.value(f, points[-1], val))


def _implicit_system(f: FlatLoss, theta: Tensor, train: Any, val: Any, steps: int,
                     inner_lr: float, lam: float):
    """K proximal GD steps, then A = I + H(φ)/λ and b = ∇L_val(φ)
    (Rajeswaran et al. 2019, eq. 7)."""
    phi = dense.proximal_gd(f, theta, train, steps, inner_lr, lam)[-1]
    A = _eye(theta) + dense.hessian(f, phi, train) / lam
    return phi, A, dense.gradient(f, phi, val)


def _pre_update_loss(f: FlatLoss, theta: Tensor, train: Any) -> Tensor:
    return dense.value(f, theta, train)


def imaml(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int, inner_lr: float,
          lam: float, cg_iters: int, **_: Any) -> RefResult:
    """gᵢ = x_m, m steps of CG from 0 on (I + H(φ)/λ) x = ∇L_val(φ) (Rajeswaran et al. 2019,
    Alg. 2). For m ≥ d CG is exact in exact arithmetic, so the dense solve is the reference."""
    phi, A, b = _implicit_system(f, theta, train, val, steps, inner_lr, lam)
    if cg_iters >= theta.numel():
        x = torch.linalg.solve(A, b)
    else:
        x = dense.conjugate_gradient(A, b, cg_iters)
    return RefResult(x, _pre_update_loss(f, theta, train), dense.value(f, phi, val))


def neumann(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int, inner_lr: float,
            lam: float, terms: int, step: float = 1.0, **_: Any) -> RefResult:
    """gᵢ = η Σⱼ (I − η(I + H(φ)/λ))ʲ ∇L_val(φ), j = 0, …, J (Lorraine et al. 2020,
    Alg. 2-3)."""
    phi, A, b = _implicit_system(f, theta, train, val, steps, inner_lr, lam)
    x = dense.neumann_sum(A, b, terms, step)
    return RefResult(x, _pre_update_loss(f, theta, train), dense.value(f, phi, val))


def penalty(f: FlatLoss, theta: Tensor, train: Any, val: Any, *, steps: int, inner_lr: float,
            lam: float, **_: Any) -> RefResult:
    """gᵢ = ∇L_val(φ) + 2λ H(φ) ∇L_tr(φ): the gradient of L_val(φ) + λ‖∇L_tr(φ)‖² in φ
    (Mehra & Hamm 2021), the inner loop treated as constant."""
    phi = dense.gd_trajectory(f, theta, train, steps, inner_lr)[-1]
    g = dense.gradient(f, phi, val) + 2 * lam * dense.hessian(f, phi, train) @ dense.gradient(
        f, phi, train)
    return RefResult(g, dense.value(f, theta, train), dense.value(f, phi, val))


METHODS: dict[str, Callable[..., RefResult]] = {
    "maml": maml,
    "fomaml": fomaml,
    "reptile": reptile,
    "imaml": imaml,
    "neumann": neumann,
    "penalty": penalty,
}


def meta_batch(method: str | Callable[..., RefResult], f: FlatLoss, theta: Tensor,
               tasks: Sequence[tuple[Any, Any]], **settings: Any) -> RefResult:
    """Mean over tasks of the per-task results (``tasks`` is a list of ``(train, val)``)."""
    fn = METHODS[method] if isinstance(method, str) else method
    outs = [fn(f, theta, train, val, **settings) for train, val in tasks]
    if not outs:
        raise ValueError("no tasks")
    return RefResult(
        torch.stack([o.grad for o in outs]).mean(0),
        torch.stack([o.pre_update_loss for o in outs]).mean(),
        torch.stack([o.post_update_loss for o in outs]).mean(),
    )
