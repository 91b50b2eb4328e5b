"""Dense building blocks: gradients, Hessians, inner loops, Newton, CG and Neumann.

All on flat float64 vectors; every matrix is formed explicitly, every loop is a
plain Python loop. Nothing is shared with metagrad's matrix-free code paths.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class ProximalSolution:
    """The proximal minimiser φ* and whether it was reached."""

    phi: Tensor
    converged: bool
    """‖∇L_tr(φ) + λ(φ − θ)‖ ≤ 100·rtol·(1 + ‖∇L_tr(θ)‖) and H(φ) + λI positive definite:
    φ is a strict local minimiser to machine precision."""
    grad_norm: float
    """‖∇L_tr(φ) + λ(φ − θ)‖ at the returned φ."""


def proximal_minimiser(f: FlatLoss, theta: Tensor, batch: Any, lam: float, *,
                       warm_start: bool = True, newton_iters: int = 20,
                       rtol: float = 1e-12) -> ProximalSolution:
    """φ* = argmin_φ L_tr(φ) + λ/2 ‖φ − θ‖² for problems of any size, with a verdict.

    Two phases. L-BFGS (gradients only; Liu & Nocedal 1989, with a strong-Wolfe line
    search) from θ to a small gradient, so that the second phase, Newton's method with
    dense Hessians, starts in its region of quadratic convergence and needs one to
    three Hessians instead of many (the difference between seconds and minutes at
    d ≈ 2000). Where H + λI is indefinite the Newton step is shifted (Levenberg) to
    stay a descent direction. The result is *not* raised on failure but flagged:
    ``converged`` is false when the gradient did not vanish to roundoff (e.g. a ReLU
    net whose minimiser sits on a kink, where Newton cycles) or when H(φ) + λI is not
    positive definite (φ is then no strict minimiser and the implicit gradient is
    undefined).
    """
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)

    def objective(phi: Tensor) -> Tensor:
        return f(phi, batch) + 0.5 * lam * (phi - theta).pow(2).sum()

    def gradient_at(phi: Tensor) -> Tensor:
        return gradient(f, phi, batch) + lam * (phi - theta)

    scale = 1.0 + float(torch.linalg.vector_norm(gradient(f, theta, batch)))
    phi = theta.detach().clone()
    if warm_start:
        phi.requires_grad_(True)
        lbfgs = torch.optim.LBFGS([phi], lr=1.0, max_iter=2000, tolerance_grad=1e-9,
                                  tolerance_change=0.0, history_size=50,
                                  line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            lbfgs.zero_grad()
            value = objective(phi)
            value.backward()
            return value

        lbfgs.step(closure)
        phi = phi.detach()
    g = gradient_at(phi)
    for _ in range(newton_iters):
        if float(torch.linalg.vector_norm(g)) <= rtol * scale:
            break
        a = hessian(f, phi, batch) + lam * eye
        shift = 0.0
        while True:  # the smallest Levenberg shift that makes the step a descent direction
            chol, info = torch.linalg.cholesky_ex(a + shift * eye)
            if int(info) == 0:
                break
            shift = max(2 * shift, 1e-6 * (1 + float(a.abs().max())))
        step = torch.cholesky_solve(-g[:, None], chol)[:, 0]
        current, slope, t = float(objective(phi).detach()), float(g @ step), 1.0
        # Near φ* objective differences drown in rounding: take full steps there.
        while (float(torch.linalg.vector_norm(g)) > 1e-6 * scale and t > 1e-10
               and float(objective(phi + t * step).detach()) > current + 1e-4 * t * slope):
            t *= 0.5
        phi = phi + t * step
        g = gradient_at(phi)
    norm = float(torch.linalg.vector_norm(g))
    positive_definite = int(torch.linalg.cholesky_ex(hessian(f, phi, batch) + lam * eye)[1]) == 0
    return ProximalSolution(phi, norm <= 100 * rtol * scale and positive_definite, norm)


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
