"""Dense building blocks: gradients, Hessians, inner loops, Newton, CG and Neumann.

All on flat float64 vectors; every matrix is formed explicitly, every loop is a
plain Python loop. Nothing is shared with metagrad's matrix-free code paths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jacrev

from .flat import FlatLoss


def value(f: FlatLoss, theta: Tensor, batch: Any) -> Tensor:
    return f(theta, batch).detach()


def gradient(f: FlatLoss, theta: Tensor, batch: Any) -> Tensor:
    """∇f(θ) by reverse mode."""
    return grad(f)(theta, batch).detach()


def hessian(f: FlatLoss, theta: Tensor, batch: Any) -> Tensor:
    """Dense ∇²f(θ), reverse over reverse (works for any differentiable loss,
    including those whose backward has no forward-mode rule), symmetrised to
    remove the last-bit asymmetry of the two reverse passes."""
    h = jacrev(grad(f))(theta, batch).detach()
    return 0.5 * (h + h.T)


def gd_trajectory(f: FlatLoss, theta: Tensor, batch: Any, steps: int,
                  inner_lr: float) -> list[Tensor]:
    """θ⁽⁰⁾ … θ⁽ᴷ⁾ of θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α∇L_tr(θ⁽ᵏ⁾) (Finn et al. 2017, eq. 1)."""
    points = [theta]
    for _ in range(steps):
        points.append(points[-1] - inner_lr * gradient(f, points[-1], batch))
    return points


def proximal_gd(f: FlatLoss, theta: Tensor, batch: Any, steps: int, inner_lr: float,
                lam: float) -> list[Tensor]:
    """φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α(∇L_tr(φ⁽ᵏ⁾) + λ(φ⁽ᵏ⁾ − θ)), φ⁽⁰⁾ = θ (Rajeswaran et al. 2019, eq. 4).

    Returns the whole trajectory (its first loss values are the pre-update losses)."""
    points = [theta]
    for _ in range(steps):
        phi = points[-1]
        points.append(phi - inner_lr * (gradient(f, phi, batch) + lam * (phi - theta)))
    return points


def proximal_newton(f: FlatLoss, theta: Tensor, batch: Any, lam: float,
                    max_iter: int = 100, start: Tensor | None = None) -> Tensor:
    """φ* = argmin_φ L_tr(φ) + λ/2 ‖φ − θ‖², by Newton's method to machine precision.

    Newton step φ ← φ − (H(φ) + λI)⁻¹ (∇L_tr(φ) + λ(φ − θ)), with a Cholesky
    factorisation that doubles as the check that the proximal problem is
    strongly convex where we are (else φ* is not the well-defined, locally
    unique minimiser the implicit gradient assumes). Halving the step keeps
    the objective decreasing far from φ*; near φ* full steps converge
    quadratically, and we stop once the step no longer shrinks (roundoff).
    ``start`` (default θ) warm-starts the iteration, e.g. from φ* at a nearby θ.
    """
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)

    def objective(phi: Tensor) -> Tensor:
        return value(f, phi, batch) + 0.5 * lam * torch.sum((phi - theta) ** 2)

    phi = (theta if start is None else start).clone()
    last_step = float("inf")
    for _ in range(max_iter):
        g = gradient(f, phi, batch) + lam * (phi - theta)
        chol, info = torch.linalg.cholesky_ex(hessian(f, phi, batch) + lam * eye)
        if int(info) != 0:
            raise ValueError(
                f"H + λI is not positive definite at the current iterate (λ = {lam}); "
                "the proximal inner problem has no locally unique minimiser here. "
                "Increase lam.")
        step = torch.cholesky_solve(g[:, None], chol)[:, 0]
        t, current = 1.0, objective(phi)
        while t > 1e-4 and objective(phi - t * step) > current + 1e-12 * abs(current):
            t *= 0.5
        phi = phi - t * step
        size = float(torch.linalg.vector_norm(step))
        scale = 1.0 + float(torch.linalg.vector_norm(phi))
        if size <= 1e-15 * scale or (t == 1.0 and size >= 0.5 * last_step and
                                     size < 1e-10 * scale):
            break
        last_step = size
    else:
        raise RuntimeError(f"Newton on the proximal problem did not converge in {max_iter} steps")
    return phi


def conjugate_gradient(A: Tensor, b: Tensor, iters: int) -> Tensor:
    """Textbook CG (Hestenes & Stiefel 1952) on a dense SPD matrix, x₀ = 0, exactly ``iters`` steps.

        r₀ = p₀ = b;  αᵢ = rᵢᵀrᵢ / pᵢᵀApᵢ;  xᵢ₊₁ = xᵢ + αᵢpᵢ;  rᵢ₊₁ = rᵢ − αᵢApᵢ;
        βᵢ = rᵢ₊₁ᵀrᵢ₊₁ / rᵢᵀrᵢ;  pᵢ₊₁ = rᵢ₊₁ + βᵢpᵢ.

    An exactly zero residual ends the recursion (the iterate is the solution).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr == 0:
            break
        Ap = A @ p
        alpha = rr / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def neumann_sum(A: Tensor, b: Tensor, terms: int, step: float = 1.0) -> Tensor:
    """x_J = η Σ_{j=0..J} (I − ηA)ʲ b, summed term by term with the dense matrix."""
    M = torch.eye(A.shape[0], dtype=A.dtype, device=A.device) - step * A
    term, total = b.clone(), b.clone()
    for _ in range(terms):
        term = M @ term
        total = total + term
    return step * total


def spectral_radius(M: Tensor) -> float:
    """ρ(M) for symmetric M: the largest |eigenvalue|."""
    return float(torch.linalg.eigvalsh(0.5 * (M + M.T)).abs().max())
