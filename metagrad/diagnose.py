"""Numerical diagnostics: a meta-gradient is never silently wrong.

Every method returns per-task diagnostics (inner losses, solver curvatures and
residuals). The checks here read them after the batched call, and only when
something looks wrong do they spend extra work (a few power iterations on
Hessian-vector products) to say *why* and *what to change*.

Conditions checked (DESIGN.md, "Conditions worth knowing"):

* non-finite losses or meta-gradients, naming the task and inner step;
* inner-loop blow-up; plain GD on L_tr converges only for α L < 2, proximal
  GD only for α (λ + L) < 2, with L = λ_max(∇²L_tr);
* CG on A = I + H/λ needs A positive definite (pᵀAp > 0, i.e. λ > −λ_min(H));
  CG stopping with a large relative residual;
* the Neumann series converges iff ρ(I − ηA) < 1: growing terms mean it diverges.

``method(..., diagnose="warn")`` (default) emits a :class:`MetaGradientWarning`
per problem, ``"error"`` raises :class:`NumericalError`, ``"off"`` skips the
checks (for compiled or benchmarked calls). The messages also travel back as
``MetaGradient.warnings``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from . import _pytree as pt
from ._hvp import Loss, hvp
from ._pytree import Params

DIAGNOSE_MODES = ("warn", "error", "off")

CG_RESIDUAL_WARN = 0.25
"""Relative residual ‖b − A x_m‖ / ‖b‖ above which CG is reported as unconverged."""

RISE_TOL = 1e-4
"""Relative rise of an inner loss above L_tr(θ) that counts as non-descent (well above
float32 rounding). Descent lemma: a GD step with α < 2/L never raises an L-smooth loss,
and a proximal step with α(λ + L) < 2 never raises L_tr above L_tr(θ) (it lowers
L_tr(φ) + λ/2‖φ − θ‖², which starts at L_tr(θ) and bounds L_tr(φ) from above)."""


class MetaGradientWarning(UserWarning):
    """A numerical problem that makes a meta-gradient unreliable."""


class NumericalError(ArithmeticError):
    """Raised instead of :class:`MetaGradientWarning` under ``diagnose="error"``."""


def emit(problems: list[str], mode: str, method: str) -> None:
    for msg in problems:
        if mode == "error":
            raise NumericalError(f"{method}: {msg}")
        warnings.warn(f"{method}: {msg}", MetaGradientWarning, stacklevel=4)


def _where(mask: Tensor) -> str:
    idx = torch.nonzero(mask.reshape(mask.shape[0], -1).any(1)).flatten().tolist()
    return f"task {idx[0]}" + (f" and {len(idx) - 1} other(s)" if len(idx) > 1 else "")


def _finite(x: Tensor, fill: float) -> Tensor:
    """``x`` with non-finite entries replaced by ``fill``: tasks that already failed with
    NaN are reported by :func:`check_finite` and must not hide the others' numbers."""
    return torch.where(torch.isfinite(x), x, torch.full_like(x, fill))


def largest_curvature(loss: Loss, params: Params, train: Any, iters: int = 20,
                      mode: str = "auto") -> Tensor:
    """Per-task estimate of L = max |eigenvalue| of ∇²L_tr(params) by power iteration.

    Used only to explain a problem already detected, so its cost (``iters`` HVPs
    per task) is not paid on healthy calls. Deterministic start vector.
    """
    gen = torch.Generator().manual_seed(0)
    start = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
             for k, v in params.items()}

    def one(batch: Any) -> Tensor:
        v = pt.scale(1.0 / pt.norm(start), start)
        estimate = torch.zeros((), dtype=next(iter(params.values())).dtype)
        for _ in range(iters):
            hv = hvp(loss, params, batch, v, mode)
            estimate = pt.norm(hv)
            v = pt.scale(1.0 / torch.where(estimate == 0, 1, estimate), hv)
        return estimate

    return vmap(one)(train)


def check_finite(diag: dict[str, Tensor]) -> list[str]:
    problems = []
    inner = diag.get("inner_losses")
    if inner is not None and inner.numel() and not torch.isfinite(inner).all():
        bad = ~torch.isfinite(inner)
        task, step = (int(i) for i in torch.nonzero(bad)[0])
        problems.append(
            f"non-finite inner-loop loss L_tr(θ⁽{step}⁾) at inner step {step} of task {task} "
            f"({int(bad.any(1).sum())} task(s) affected): the inner loop diverged"
        )
    for key, what in (("pre_update_loss", "pre-update loss"),
                      ("post_update_loss", "post-update loss"),
                      ("grad_norm", "meta-gradient")):
        value = diag[key]
        if not torch.isfinite(value).all():
            problems.append(f"non-finite {what} in {_where(~torch.isfinite(value))}")
    return problems


def check_inner_loop(diag: dict[str, Tensor], loss: Loss, theta: Params, tasks: Any,
                     inner_lr: float, lam: float | None, hvp_mode: str) -> list[str]:
    """Non-descent of the inner loop, explained by α(λ + L) ≥ 2 with L by power iteration."""
    inner = diag["inner_losses"]
    if inner.numel() == 0:
        return []
    first = inner[:, :1]
    scale = inner.abs().amax(1, keepdim=True)
    blown = ~torch.isfinite(inner) | (inner > first + RISE_TOL * scale)
    if not blown.any():
        return []
    L = largest_curvature(loss, pt.detach(theta), tasks.train, mode=hvp_mode).detach()
    worst = int(torch.argmax(torch.where(torch.isfinite(L), L, torch.inf)))
    shift = lam or 0.0
    rate = inner_lr * (shift + float(L[worst]))
    what = "proximal gradient descent" if lam is not None else "gradient descent"
    cond = "inner_lr·(lam + L)" if lam is not None else "inner_lr·L"
    msg = (f"the inner loss rose above L_tr(θ) in {_where(blown)}: "
           f"{what} converges only if {cond} < 2, and here L ≈ {float(L[worst]):.4g} "
           f"(largest Hessian eigenvalue at θ, power iteration) gives {cond} ≈ {rate:.3g}")
    if rate >= 2:
        msg += f"; use inner_lr < {2 / (shift + float(L[worst])):.3g}"
    else:
        msg += "; the curvature grows along the path: lower inner_lr or steps"
    return [msg]


def check_proximal_rate(inner_lr: float, lam: float, max_curvature: Tensor) -> list[str]:
    """α(λ + L) ≥ 2 with L ≥ λ (max Rayleigh quotient of A − 1), read off the solver."""
    L = lam * (_finite(max_curvature, 1.0) - 1.0)
    rate = inner_lr * (lam + L)
    bad = rate >= 2
    if not bad.any():
        return []
    worst = int(torch.argmax(rate))
    bound = float(L[worst])
    return [
        f"the proximal inner loop cannot converge in {_where(bad)}: inner_lr·(lam + L) ≥ "
        f"{float(rate[worst]):.3g} ≥ 2, with L ≥ {bound:.4g} (largest Hessian eigenvalue, a "
        f"lower bound from the solver's Rayleigh quotients); use inner_lr < "
        f"{2 / (lam + bound):.3g}, e.g. inner_lr={1 / (lam + bound):.3g}, or a smaller lam"
    ]


def check_positive_definite(lam: float, min_curvature: Tensor, solver: str) -> list[str]:
    """A = I + H/λ must be positive definite: λ_min(H) > −λ."""
    min_curvature = _finite(min_curvature, 1.0)
    bad = min_curvature <= 0
    if not bad.any():
        return []
    worst = int(torch.argmin(min_curvature))
    # pᵀAp/pᵀp = 1 + pᵀHp/(λ pᵀp) ≤ 0 means λ_min(H) ≤ λ (c − 1).
    h_min = lam * (float(min_curvature[worst]) - 1.0)
    return [
        f"{solver} met non-positive curvature pᵀ(I + H/λ)p ≤ 0 in {_where(bad)}: the system "
        f"is not positive definite (λ_min(H) ≤ {h_min:.4g} < −lam), so its solution is "
        f"not the implicit gradient; use lam > {-h_min:.4g}"
    ]


def check_cg_residual(residual_norms: Tensor) -> list[str]:
    rel = residual_norms[:, -1] / torch.where(residual_norms[:, 0] == 0, 1, residual_norms[:, 0])
    rel = _finite(rel, 0.0)
    bad = rel > CG_RESIDUAL_WARN
    if residual_norms.shape[1] < 2 or not bad.any():
        return []
    return [
        f"CG stopped after {residual_norms.shape[1] - 1} iterations with relative residual "
        f"{float(rel.max()):.3g} > {CG_RESIDUAL_WARN} in {_where(bad)}; increase cg_iters"
    ]


def check_neumann(term_norms: Tensor, step: float, max_curvature: Tensor) -> list[str]:
    """Growing terms mean ρ(I − ηA) ≥ 1. Which side of the spectrum is at fault decides
    the advice: ρ = max(|1 − ημ_max|, |1 − ημ_min|) over eigenvalues μ of A, so growth
    with η μ_max < 2 can only come from μ_min ≤ 0 (A indefinite: raise λ)."""
    if term_norms.shape[1] < 2:
        return []
    growing = term_norms[:, -1] >= term_norms[:, -2]
    if not growing.any():
        return []
    ratio = term_norms[:, -1] / torch.where(term_norms[:, -2] == 0, 1, term_norms[:, -2])
    ratio = _finite(ratio, 0.0)
    worst = int(torch.argmax(ratio))
    mu_max = float(_finite(max_curvature, 0.0).max())
    head = (f"the Neumann series diverges in {_where(growing)}: its terms grow (last ratio "
            f"{float(ratio[worst]):.3g}), so the spectral radius of I − step·(I + H/λ) is ≥ 1 "
            f"with step = {step:g}; ")
    if step * mu_max >= 2:
        return [head + f"λ_max(I + H/λ) ≥ {mu_max:.4g}, so use step < {2 / mu_max:.3g} "
                f"(e.g. step={1 / mu_max:.3g})"]
    # |1 − η μ| > 1 with η μ < 2 forces μ < 0: the system is indefinite.
    implied = (1 - float(ratio[worst])) / step
    return [head + f"step·λ_max is below 2, so the growth comes from an eigenvalue "
            f"μ ≈ {implied:.3g} ≤ 0 of I + H/λ: the system is not positive definite and no "
            f"step helps; use a larger lam"]
