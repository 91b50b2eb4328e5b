"""Closed forms for the linear-regression (quadratic) family.

Loss of one task with design X (n × d) and targets y (n × 1), on w ∈ R^d:

    L(w) = (1/n) ‖X w − y‖²,   ∇L(w) = H w − c,   H = (2/n) XᵀX,   c = (2/n) Xᵀ y.

H is constant, so the inner loops are affine maps and every method is matrix
algebra, with no autograd at all: an oracle independent of the dense-Hessian
one in :mod:`metagrad_reference.dense`. ``theta`` here is the flat w (``w[:, 0]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor]
"""One task's (X, y), y flat."""


def quadratic(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(H, c) of L(w) = (1/n)‖Xw − y‖²."""
    n = x.shape[0]
    return (2.0 / n) * x.T @ x, (2.0 / n) * x.T @ y.reshape(-1)


def loss(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    return torch.mean((x @ w - y.reshape(-1)) ** 2)


def _grad(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    H, c = quadratic(x, y)
    return H @ w - c


def _eye(d: int, like: Tensor) -> Tensor:
    return torch.eye(d, dtype=like.dtype, device=like.device)


def adapted(x: Tensor, y: Tensor, theta: Tensor, steps: int, inner_lr: float) -> Tensor:
    """φ = θ⁽ᴷ⁾ = w* + (I − αH)ᴷ (θ − w*) when H is invertible; in general
    (I − αH)ᴷ θ + Σ_{j<K} (I − αH)ʲ α c (the affine recursion unrolled)."""
    H, c = quadratic(x, y)
    M = _eye(theta.numel(), theta) - inner_lr * H
    acc = torch.zeros_like(theta)
    for j in range(steps):
        acc = acc + torch.linalg.matrix_power(M, j) @ (inner_lr * c)
    return torch.linalg.matrix_power(M, steps) @ theta + acc


def maml(train: Batch, val: Batch, theta: Tensor, steps: int, inner_lr: float, **_unused) -> Tensor:
    """(I − αH)ᴷ ∇L_val(φ)."""
    H, _ = quadratic(*train)
    M = _eye(theta.numel(), theta) - inner_lr * H
    phi = adapted(*train, theta, steps, inner_lr)
    return torch.linalg.matrix_power(M, steps) @ _grad(*val, phi)


def fomaml(train: Batch, val: Batch, theta: Tensor, steps: int, inner_lr: float,
           **_unused) -> Tensor:
    return _grad(*val, adapted(*train, theta, steps, inner_lr))


def reptile(train: Batch, val: Batch, theta: Tensor, steps: int, inner_lr: float,
            **_unused) -> Tensor:
    return theta - adapted(*train, theta, steps, inner_lr)


def penalty(train: Batch, val: Batch, theta: Tensor, steps: int, inner_lr: float, lam: float,
            **_unused) -> Tensor:
    """∇L_val(φ) + 2λ H (Hφ − c)."""
    H, _ = quadratic(*train)
    phi = adapted(*train, theta, steps, inner_lr)
    return _grad(*val, phi) + 2 * lam * H @ _grad(*train, phi)


def proximal_minimiser(x: Tensor, y: Tensor, theta: Tensor, lam: float) -> Tensor:
    """φ* = (H + λI)⁻¹ (c + λθ), from ∇L(φ*) + λ(φ* − θ) = 0."""
    H, c = quadratic(x, y)
    return torch.linalg.solve(H + lam * _eye(theta.numel(), theta), c + lam * theta)


def proximal_adapted(x: Tensor, y: Tensor, theta: Tensor, steps: int, inner_lr: float,
                     lam: float) -> Tensor:
    """K proximal GD steps: φ⁽ᴷ⁾ = φ* + (I − α(H + λI))ᴷ (θ − φ*)."""
    H, _ = quadratic(x, y)
    star = proximal_minimiser(x, y, theta, lam)
    M = _eye(theta.numel(), theta) - inner_lr * (H + lam * _eye(theta.numel(), theta))
    return star + torch.linalg.matrix_power(M, steps) @ (theta - star)


def implicit_gradient(train: Batch, val: Batch, theta: Tensor, lam: float) -> Tensor:
    """∇_θ L_val(φ*(θ)) = λ(H + λI)⁻¹ ∇L_val(φ*): dφ*/dθ = λ(H + λI)⁻¹ exactly here."""
    H, _ = quadratic(*train)
    star = proximal_minimiser(*train, theta, lam)
    return lam * torch.linalg.solve(H + lam * _eye(theta.numel(), theta), _grad(*val, star))


def implicit_system(train: Batch, val: Batch, theta: Tensor, steps: int, inner_lr: float,
                    lam: float) -> tuple[Tensor, Tensor]:
    """(A, b) = (I + H/λ, ∇L_val(φ⁽ᴷ⁾)) of the iMAML system after K proximal steps."""
    H, _ = quadratic(*train)
    phi = proximal_adapted(*train, theta, steps, inner_lr, lam)
    return _eye(theta.numel(), theta) + H / lam, _grad(*val, phi)


def krylov_solution(A: Tensor, b: Tensor, iters: int) -> Tensor:
    """The m-th CG iterate in closed form: the minimiser of the A-norm error over the Krylov
    space K_m = span{b, Ab, …, A^(m−1) b}, x_m = Q (QᵀAQ)⁻¹ Qᵀ b with Q an orthonormal basis
    of K_m (Hestenes & Stiefel 1952; Saad, Iterative Methods, Prop. 6.18)."""
    if iters == 0:
        return torch.zeros_like(b)
    cols, v = [], b
    for _ in range(iters):
        cols.append(v)
        v = A @ v
    Q, _ = torch.linalg.qr(torch.stack(cols, 1))
    return Q @ torch.linalg.solve(Q.T @ A @ Q, Q.T @ b)


def imaml(train: Batch, val: Batch, theta: Tensor, steps: int, inner_lr: float, lam: float,
          cg_iters: int, **_unused) -> Tensor:
    A, b = implicit_system(train, val, theta, steps, inner_lr, lam)
    if cg_iters >= theta.numel():
        return torch.linalg.solve(A, b)
    return krylov_solution(A, b, cg_iters)


def neumann(train: Batch, val: Batch, theta: Tensor, steps: int, inner_lr: float, lam: float,
            terms: int, step: float = 1.0, **_unused) -> Tensor:
    """x_J = A⁻¹ (I − (I − ηA)^(J+1)) b: the geometric sum η Σ_{j≤J} (I − ηA)ʲ in closed form."""
    A, b = implicit_system(train, val, theta, steps, inner_lr, lam)
    eye = _eye(theta.numel(), theta)
    return torch.linalg.solve(A, (eye - torch.linalg.matrix_power(eye - step * A, terms + 1)) @ b)


METHODS: dict[str, Callable[..., Tensor]] = {
    "maml": maml,
    "fomaml": fomaml,
    "reptile": reptile,
    "imaml": imaml,
    "neumann": neumann,
    "penalty": penalty,
}
