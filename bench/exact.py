"""Exact (bilevel) targets for the error columns, dense and in float64.

Kept apart from metagrad's methods on purpose — plain ``torch.autograd`` loops over
tasks and dense ``torch.func.hessian`` / ``torch.linalg`` on flattened parameters — so
an error column measures approximation, not shared bugs. Used on the sinusoid MLP
(d = 1761); too costly for the conv net, whose error column is NaN.

Targets (DESIGN.md, "What each method computes"), each the mean over tasks:

* ``maml_target``: the exact MAML meta-gradient ∇_θ L_val(θ⁽ᴷ⁾(θ)), K steps of GD with
  step α (Finn et al. 2017, eq. 1), by reverse-mode through the unrolled loop in
  float64. The target of MAML, FOMAML, Reptile and Penalty at the same K and α.
* ``implicit_target``: λ (H(φ*) + λI)⁻¹ ∇L_val(φ*) with φ* = argmin L_tr(φ) + λ/2‖φ − θ‖²
  found by Newton's method to machine precision (Rajeswaran et al. 2019, eq. 5-7), the
  target of IMAML and Neumann at the same λ (it does not depend on K or α). A task whose
  Newton iteration does not converge, or whose H(φ*) + λI is not positive definite
  (φ* not a minimiser), gives NaN: the implicit gradient is then undefined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import hessian

import metagrad as mg
from metagrad import _pytree as pt

FlatLoss = Callable[[Tensor, Any], Tensor]


def _flat(loss, like: dict[str, Tensor]) -> FlatLoss:
    return lambda w, batch: loss(pt.unflatten(w, like), batch)


def _check64(params: dict[str, Tensor]) -> Tensor:
    theta = pt.flatten({k: v.detach() for k, v in params.items()})
    if theta.dtype != torch.float64:
        raise TypeError(f"exact targets are computed in float64; params are {theta.dtype}")
    return theta


def maml_target(loss, params: dict[str, Tensor], tasks: mg.Task, steps: int,
                inner_lr: float) -> Tensor:
    """Mean over tasks of ∇_θ L_val(θ⁽ᴷ⁾(θ)), flattened, float64."""
    theta = _check64(params)
    f = _flat(loss, params)
    total = torch.zeros_like(theta)
    for i in range(tasks.num_tasks):
        train, val = tasks.task(i)
        w = theta.clone().requires_grad_(True)
        phi = w
        for _ in range(steps):
            (g,) = torch.autograd.grad(f(phi, train), phi, create_graph=True)
            phi = phi - inner_lr * g
        (gi,) = torch.autograd.grad(f(phi, val), w, allow_unused=True)
        total += gi if gi is not None else torch.zeros_like(theta)
    return total / tasks.num_tasks


def proximal_minimiser(f: FlatLoss, theta: Tensor, train: Any, lam: float, *,
                       max_iters: int = 10, rtol: float = 1e-12) -> tuple[Tensor, Tensor, bool]:
    """φ* = argmin_φ L_tr(φ) + λ/2‖φ − θ‖² by damped Newton with dense Hessians.

    L-BFGS first, then Newton polishing to machine precision. Needs a smooth loss: with
    ReLU the minimiser typically sits on a kink, where the gradient does not vanish and
    Newton cycles (seen on the ReLU sinusoid MLP), hence the tanh ``sinusoid-tanh``
    problem for implicit targets. Returns (φ*, H(φ*), converged): converged means
    ‖∇‖ ≤ rtol·(1 + ‖∇L_tr(θ)‖) and
    H(φ*) + λI positive definite, i.e. φ* is a strict local minimiser.
    """
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)

    def objective(phi: Tensor) -> Tensor:
        return f(phi, train) + 0.5 * lam * (phi - theta).pow(2).sum()

    def gradient(phi: Tensor) -> Tensor:
        p = phi.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(p), p)
        return g

    # Phase 1: L-BFGS from θ to a small gradient (cheap: gradients only), so that
    # phase 2, Newton with dense Hessians, starts in its quadratic-convergence region.
    phi = theta.clone().requires_grad_(True)
    lbfgs = torch.optim.LBFGS([phi], lr=1.0, max_iter=2000, tolerance_grad=1e-9,
                              tolerance_change=0.0, history_size=50,
                              line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        lbfgs.zero_grad()
        value = objective(phi)
        value.backward()
        return value

    scale = 1.0 + float(gradient(theta).norm())
    lbfgs.step(closure)
    phi = phi.detach()
    g = gradient(phi)
    for _ in range(max_iters):
        h = hessian(f)(phi, train)
        a = h + lam * eye
        # Newton step; where a is indefinite, shift it (Levenberg) to get a descent step.
        shift = 0.0
        while True:
            chol, info = torch.linalg.cholesky_ex(a + shift * eye)
            if int(info) == 0:
                break
            shift = max(2 * shift, 1e-6 * (1 + float(a.abs().max())))
        step = torch.cholesky_solve(-g.unsqueeze(1), chol).squeeze(1)
        f0, t = float(objective(phi)), 1.0
        # Near φ* objective differences drown in rounding: take full steps there.
        slope = float(g @ step)
        while (float(g.norm()) > 1e-6 * scale and t > 1e-10
               and float(objective(phi + t * step)) > f0 + 1e-4 * t * slope):
            t *= 0.5
        phi = phi + t * step
        g = gradient(phi)
        if float(g.norm()) <= rtol * scale:
            break
    h = hessian(f)(phi, train)
    # A minimiser needs H(φ*) + λI ⪰ 0; Cholesky succeeds iff it is positive definite.
    positive_definite = int(torch.linalg.cholesky_ex(h + lam * eye)[1]) == 0
    converged = float(g.norm()) <= rtol * scale * 100 and positive_definite
    return phi, h, converged


def implicit_target(loss, params: dict[str, Tensor], tasks: mg.Task, lam: float) -> Tensor:
    """Mean over tasks of λ (H(φ*) + λI)⁻¹ ∇L_val(φ*), flattened, float64 (NaN if undefined)."""
    theta = _check64(params)
    f = _flat(loss, params)
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    total = torch.zeros_like(theta)
    for i in range(tasks.num_tasks):
        train, val = tasks.task(i)
        phi, h, converged = proximal_minimiser(f, theta, train, lam)
        if not converged:
            return torch.full_like(theta, math.nan)
        p = phi.detach().requires_grad_(True)
        (b,) = torch.autograd.grad(f(p, val), p)
        total += lam * torch.linalg.solve(h + lam * eye, b)
    return total / tasks.num_tasks


def target(family: str, loss, params, tasks, *, steps: int, inner_lr: float,
           lam: float | None = None) -> Tensor:
    """The bilevel-exact target for a method family (see module docstring)."""
    if family in ("imaml", "neumann"):
        assert lam is not None
        return implicit_target(loss, params, tasks, lam)
    return maml_target(loss, params, tasks, steps, inner_lr)


def rel_error(grad: dict[str, Tensor], exact: Tensor) -> float:
    """‖g − g*‖ / ‖g*‖ of the flattened mean meta-gradient, in float64."""
    g = pt.flatten(grad).detach().to(torch.float64)
    return float((g - exact).norm() / exact.norm())
