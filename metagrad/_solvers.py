"""Matrix-free linear solvers on parameter dicts: ``solve(matvec, b)``.

Both solve the iMAML system ``A x = b`` with ``A = I + H/λ`` (Rajeswaran et
al. 2019, eq. (7)); they only ever see ``matvec(v) = A v``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _pytree as pt
from ._pytree import Params

MatVec = Callable[[Params], Params]


@dataclass
class CGInfo:
    residual_norms: Tensor
    """‖b − A xᵢ‖ for i = 0 … m (recursive residuals; shape ``(m + 1,)``)."""
    min_curvature: Tensor
    """min over iterations of pᵀAp / pᵀp; ≤ 0 means A is not positive definite."""
    max_curvature: Tensor
    """max over iterations of pᵀAp / pᵀp, a lower bound on λ_max(A) (Lanczos: tight fast)."""


def cg(matvec: MatVec, b: Params, iters: int) -> tuple[Params, CGInfo]:
    """Plain conjugate gradient (Hestenes & Stiefel 1952) from x = 0, exactly ``iters`` steps.

        r₀ = p₀ = b;  αᵢ = rᵢᵀrᵢ / pᵢᵀApᵢ;  xᵢ₊₁ = xᵢ + αᵢpᵢ;  rᵢ₊₁ = rᵢ − αᵢApᵢ;
        βᵢ = rᵢ₊₁ᵀrᵢ₊₁ / rᵢᵀrᵢ;  pᵢ₊₁ = rᵢ₊₁ + βᵢpᵢ

    No data-dependent stopping (it must run under ``vmap``): once a residual is
    exactly zero the iterate is kept, instead of dividing 0 by 0.
    """
    x = pt.zeros_like(b)
    r = b
    p = b
    rr = pt.vdot(r, r)
    norms = [torch.sqrt(rr)]
    curvatures = []
    for _ in range(iters):
        Ap = matvec(p)
        pAp = pt.vdot(p, Ap)
        pp = pt.vdot(p, p)
        done = rr == 0
        curvatures.append(torch.where(done, torch.ones_like(pAp), pAp / torch.where(done, 1, pp)))
        alpha = torch.where(done, torch.zeros_like(rr), rr / torch.where(done, 1, pAp))
        x = pt.axpy(alpha, p, x)
        r = pt.axpy(-alpha, Ap, r)
        rr_new = pt.vdot(r, r)
        beta = torch.where(done, torch.zeros_like(rr), rr_new / torch.where(done, 1, rr))
        p = pt.axpy(beta, p, r)
        rr = rr_new
        norms.append(torch.sqrt(rr))
    curv = torch.stack(curvatures) if curvatures else torch.ones_like(rr).reshape(1)
    return x, CGInfo(torch.stack(norms), curv.min(), curv.max())


@dataclass
class NeumannInfo:
    last_term_norm: Tensor
    """‖η (I − ηA)ᴶ b‖, the size of the last term kept; growth means divergence."""
    term_norms: Tensor
    """‖η (I − ηA)ʲ b‖ for j = 0 … J (shape ``(J + 1,)``)."""
    min_curvature: Tensor
    """min over the terms t of tᵀAt / tᵀt (≤ 0: A is not positive definite)."""
    max_curvature: Tensor
    """max over the terms t of tᵀAt / tᵀt, a lower bound on λ_max(A)."""


def neumann(matvec: MatVec, b: Params, terms: int, step: float = 1.0) -> tuple[Params, NeumannInfo]:
    """Truncated Neumann series for ``A⁻¹ b`` (Lorraine et al. 2020, Alg. 2):

        A⁻¹ = η Σ_{j≥0} (I − ηA)ʲ,   x_J = η Σ_{j=0..J} (I − ηA)ʲ b,

    exact in the limit iff the spectral radius of ``I − ηA`` is below 1; the
    error then decays like that radius^(J+1). With A = I + H/λ and η = 1 the
    terms are (−H/λ)ʲ b: the series alternates in sign.
    """
    term = b
    total = b
    norms = [pt.norm(term)]
    curvatures = []
    for _ in range(terms):
        At = matvec(term)
        tt = pt.vdot(term, term)
        # Rayleigh quotients come free with the series; they diagnose divergence.
        curvatures.append(torch.where(tt == 0, torch.ones_like(tt),
                                      pt.vdot(term, At) / torch.where(tt == 0, 1, tt)))
        term = pt.axpy(-step, At, term)  # (I − ηA) term
        total = pt.add(total, term)
        norms.append(pt.norm(term))
    norms_t = step * torch.stack(norms)
    curv = torch.stack(curvatures) if curvatures else torch.ones_like(norms_t[:1])
    return pt.scale(step, total), NeumannInfo(norms_t[-1], norms_t, curv.min(), curv.max())
