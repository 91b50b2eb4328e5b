"""Matrix-free linear solvers on parameter dicts for the implicit methods.

Both solve the iMAML system ``A x = b`` with ``A = I + H(φ)/λ`` and
``b = ∇L_val(φ)`` (Rajeswaran et al. 2019, eq. (7)); they only ever see
``matvec(v) = A v``. Two layers:

* the raw algorithms :func:`cg` and :func:`neumann`, ``solve(matvec, b) -> (x, info)``;
* the solver objects :class:`ConjugateGradient` and :class:`NeumannSeries`, small
  frozen dataclasses whose fields are their settings and which own everything
  else about a solver: its run, its per-task diagnostics, the checks that read
  them, and its cost in gradient-equivalents. ``mg.IMAML`` and ``mg.Neumann``
  are the implicit method with one or the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _pytree as pt
from ._pytree import Params
from ._validate import non_negative_int, positive_float, settle
from .diagnose import Finding, finite_or, tasks_of

MatVec = Callable[[Params], Params]


class _Info:
    """Solver diagnostics travel through ``vmap`` as a flat dict of tensors, with keys
    ``PREFIX + field`` (e.g. ``cg_residual_norms``); these two methods convert."""

    PREFIX: ClassVar[str] = ""

    def diagnostics(self) -> dict[str, Tensor]:
        return {self.PREFIX + f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_diagnostics(cls, diag: dict[str, Tensor]) -> Any:
        return cls(**{f.name: diag[cls.PREFIX + f.name] for f in fields(cls)})  # type: ignore[arg-type]


@dataclass
class CGInfo(_Info):
    """Per-task record of a CG run (batched over tasks after ``vmap``).

    Attributes
    ----------
    residual_norms : Tensor
        ‖b − A xᵢ‖ for i = 0 … m (recursive residuals; shape ``(m + 1,)``).
    min_curvature : Tensor
        min over iterations of pᵀAp / pᵀp; ≤ 0 means A is not positive definite.
    max_curvature : Tensor
        max over iterations of pᵀAp / pᵀp, a lower bound on λ_max(A) (tight fast, as in
        Lanczos).
    """

    residual_norms: Tensor
    min_curvature: Tensor
    max_curvature: Tensor

    PREFIX: ClassVar[str] = "cg_"


@dataclass
class NeumannInfo(_Info):
    """Per-task record of a truncated Neumann series (batched over tasks after ``vmap``).

    Attributes
    ----------
    last_term_norm : Tensor
        ‖η (I − ηA)ᴶ b‖, the size of the last term kept; growth means divergence.
    term_norms : Tensor
        ‖η (I − ηA)ʲ b‖ for j = 0 … J (shape ``(J + 1,)``).
    min_curvature : Tensor
        min over the terms t of tᵀAt / tᵀt (≤ 0: A is not positive definite).
    max_curvature : Tensor
        max over the terms t of tᵀAt / tᵀt, a lower bound on λ_max(A).
    """

    last_term_norm: Tensor
    term_norms: Tensor
    min_curvature: Tensor
    max_curvature: Tensor

    PREFIX: ClassVar[str] = "neumann_"


def _rayleigh(v: Params, Av: Params) -> Tensor:
    """vᵀAv / vᵀv, and 1 where v = 0 (no information, no alarm)."""
    vv = pt.vdot(v, v)
    zero = vv == 0
    return torch.where(zero, torch.ones_like(vv), pt.vdot(v, Av) / torch.where(zero, 1, vv))


def _extremes(curvatures: Tensor) -> tuple[Tensor, Tensor]:
    """min and max of the Rayleigh quotients met, ignoring those of iterations that had
    already broken down (NaN), so that what was seen before the breakdown still explains
    it; NaN only if every one is."""
    nan = torch.isnan(curvatures)
    low = torch.where(nan, torch.full_like(curvatures, torch.inf), curvatures).min()
    high = torch.where(nan, torch.full_like(curvatures, -torch.inf), curvatures).max()
    none = nan.all()
    return (torch.where(none, curvatures[0], low), torch.where(none, curvatures[0], high))


def cg(matvec: MatVec, b: Params, iters: int) -> tuple[Params, CGInfo]:
    """Plain conjugate gradient (Hestenes & Stiefel 1952) from x = 0, exactly ``iters`` steps.

        r₀ = p₀ = b;  αᵢ = rᵢᵀrᵢ / pᵢᵀApᵢ;  xᵢ₊₁ = xᵢ + αᵢpᵢ;  rᵢ₊₁ = rᵢ − αᵢApᵢ;
        βᵢ = rᵢ₊₁ᵀrᵢ₊₁ / rᵢᵀrᵢ;  pᵢ₊₁ = rᵢ₊₁ + βᵢpᵢ

    Parameters
    ----------
    matvec : callable
        v ↦ A v on parameter dicts (A symmetric positive definite).
    b : dict of str to Tensor
        The right-hand side.
    iters : int
        m ≥ 0, the iterations.

    Returns
    -------
    tuple of (dict of str to Tensor, CGInfo)
        x_m, and the run's record (residual norms, Rayleigh quotients).

    No data-dependent stopping (it must run under ``vmap``): once a residual is
    exactly zero the iterate is kept, instead of dividing 0 by 0.

    Each update is one fused pass per parameter tensor (``addcmul``), and from the second
    iteration on the search direction p is updated in place (``mul_``, ``add_``; x and r
    are not: ``addcmul_`` has no ``vmap`` batching rule). The first iteration is out of
    place: it makes the buffers, with the task dimension of A p under ``vmap`` (b alone
    may lack it, e.g. a parameter the validation loss does not use). Nothing is updated
    in place where b or A p is part of an autograd graph, whose backward may need the
    values.
    """
    iters = non_negative_int("iters", iters)
    graph = pt.tracks_grad(b)
    x = pt.zeros_like(b)
    r = b
    p = b
    rr = pt.vdot(r, r)
    norms = [torch.sqrt(rr)]
    curvatures = []
    for i in range(iters):
        Ap = matvec(p)
        graph = graph or pt.tracks_grad(Ap)
        inplace = i > 0 and not graph
        pAp = pt.vdot(p, Ap)
        pp = pt.vdot(p, p)
        done = rr == 0
        curvatures.append(torch.where(done, torch.ones_like(pAp), pAp / torch.where(done, 1, pp)))
        alpha = torch.where(done, torch.zeros_like(rr), rr / torch.where(done, 1, pAp))
        x = pt.axpy(alpha, p, x)
        r = pt.axpy(-alpha, Ap, r)
        rr_new = pt.vdot(r, r)
        beta = torch.where(done, torch.zeros_like(rr), rr_new / torch.where(done, 1, rr))
        p = pt.xpay_(r, beta, p) if inplace else pt.axpy(beta, p, r)
        rr = rr_new
        norms.append(torch.sqrt(rr))
    curv = torch.stack(curvatures) if curvatures else torch.ones_like(rr).reshape(1)
    return x, CGInfo(torch.stack(norms), *_extremes(curv))


def neumann(matvec: MatVec, b: Params, terms: int, step: float = 1.0) -> tuple[Params, NeumannInfo]:
    """Truncated Neumann series for ``A⁻¹ b`` (Lorraine et al. 2020, Alg. 2):

        A⁻¹ = η ∑ⱼ (I − ηA)ʲ (j ≥ 0),   x_J = η ∑ⱼ (I − ηA)ʲ b (j = 0 … J),

    exact in the limit iff the spectral radius of ``I − ηA`` is below 1; the
    error then decays like that radius^(J+1). With A = I + H/λ and η = 1 the
    terms are (−H/λ)ʲ b: the series alternates in sign.

    From the second term on, the running term and sum are updated in place, except
    where b or A t is part of an autograd graph (as in :func:`cg`).

    Parameters
    ----------
    matvec : callable
        v ↦ A v on parameter dicts.
    b : dict of str to Tensor
        The right-hand side.
    terms : int
        J ≥ 0, the terms after the first.
    step : float
        η > 0.

    Returns
    -------
    tuple of (dict of str to Tensor, NeumannInfo)
        x_J, and the series' record (term norms, Rayleigh quotients).
    """
    terms = non_negative_int("terms", terms)
    step = positive_float("step", step)
    graph = pt.tracks_grad(b)
    term = b
    total = b
    norms = [pt.norm(term)]
    curvatures = []
    for j in range(terms):
        At = matvec(term)
        graph = graph or pt.tracks_grad(At)
        # Rayleigh quotients come free with the series; they diagnose divergence.
        curvatures.append(_rayleigh(term, At))
        if j > 0 and not graph:
            pt.axpy_(-step, At, term)
            pt.axpy_(1.0, term, total)
        else:
            term = pt.axpy(-step, At, term)  # (I − ηA) term
            total = pt.add(total, term)
        norms.append(pt.norm(term))
    norms_t = step * torch.stack(norms)
    curv = torch.stack(curvatures) if curvatures else torch.ones_like(norms_t[:1])
    return pt.scale(step, total), NeumannInfo(norms_t[-1], norms_t, *_extremes(curv))


CG_RESIDUAL_WARN = 0.25
"""Relative residual ‖b − A x_m‖ / ‖b‖ above which CG is reported as unconverged."""


@dataclass(frozen=True)
class ConjugateGradient:
    """``iters`` iterations of plain conjugate gradient from x = 0 (:func:`cg`).

    In exact arithmetic the m-th iterate minimises the A-norm error over the
    Krylov space span{b, Ab, …, A^(m−1) b}, and is the solution once m ≥ d.
    Cost: one HVP (≈ 2 gradients) per iteration.

    Parameters
    ----------
    iters : int
        m ≥ 0, the iterations (IMAML's ``cg_iters``).
    """

    iters: int = 5

    description: ClassVar[str] = "CG"
    info_type: ClassVar[type[CGInfo]] = CGInfo
    log_columns: ClassVar[dict[str, str]] = {"cg_min_curvature": "min"}
    """Per-task diagnostics worth a column in a training log, with the reduction over tasks
    that flags trouble (≤ 0: I + H/λ not positive definite)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "iters", non_negative_int("cg_iters", self.iters))

    @property
    def matvecs(self) -> int:
        """Products with A per solve."""
        return self.iters

    def solve(self, matvec: MatVec, b: Params) -> tuple[Params, CGInfo]:
        return cg(matvec, b, self.iters)

    def gradient_equivalents(self) -> float:
        return 2.0 * self.matvecs

    def check(self, info: CGInfo) -> list[Finding]:
        """CG stopping with a large relative residual ‖b − A x_m‖ / ‖b‖ (with m = 0 the
        "solution" is x = 0 wherever b ≠ 0)."""
        norms = info.residual_norms
        if norms.shape[1] < 2:
            unsolved = norms[:, 0] > 0
            if not unsolved.any():
                return []
            return [Finding(
                "not_solved", "cg_iters=0: no CG iteration ran, so the meta-gradient is zero "
                "in {where} (x = 0 solves nothing); use cg_iters ≥ 1", tasks_of(unsolved))]
        rel = norms[:, -1] / torch.where(norms[:, 0] == 0, 1, norms[:, 0])
        rel = finite_or(rel, 0.0)
        bad = rel > CG_RESIDUAL_WARN
        if not bad.any():
            return []
        return [Finding(
            "cg_unconverged",
            f"CG stopped after {norms.shape[1] - 1} iterations with relative residual "
            f"{float(rel.max()):.3g} > {CG_RESIDUAL_WARN} in {{where}}; increase cg_iters",
            tasks_of(bad))]

    # -- what the audit (metagrad.testing) reads ----------------------------------------------
    @staticmethod
    def audit_curvature(lam: float) -> float:
        """‖H‖ = 2λ for the audit's problems: I + H/λ then has condition number about 3, far
        from the identity, so that m − 1, m and m + 1 iterations differ clearly."""
        return 2.0 * lam

    def rounding_amplification(self, eigenvalues: Tensor) -> float:
        """κ(A) = max|μ| / min|μ| over the eigenvalues μ of A: how much CG may amplify a
        relative rounding error in b or in the products with A."""
        mags = eigenvalues.abs()
        return float(mags.max() / mags.min())


@dataclass(frozen=True)
class NeumannSeries:
    """The truncated series x_J = η ∑ⱼ (I − ηA)ʲ b, j = 0 … J, with ``terms`` = J and
    ``step`` = η (:func:`neumann`). Cost: one HVP (≈ 2 gradients) per term after the first.

    Parameters
    ----------
    terms : int
        J ≥ 0.
    step : float
        η > 0.
    """

    terms: int = 5
    step: float = 1.0

    description: ClassVar[str] = "the Neumann series"
    info_type: ClassVar[type[NeumannInfo]] = NeumannInfo
    log_columns: ClassVar[dict[str, str]] = {"neumann_last_term_norm": "max"}
    """Per-task diagnostics worth a column in a training log (growing: the series diverges)."""

    def __post_init__(self) -> None:
        settle(self, "terms", non_negative_int)
        settle(self, "step", positive_float)

    @property
    def matvecs(self) -> int:
        """Products with A per solve."""
        return self.terms

    def solve(self, matvec: MatVec, b: Params) -> tuple[Params, NeumannInfo]:
        return neumann(matvec, b, self.terms, self.step)

    def gradient_equivalents(self) -> float:
        return 2.0 * self.matvecs

    def check(self, info: NeumannInfo) -> list[Finding]:
        """A series whose terms grow diverges. For symmetric M = I − ηA the ratio of
        successive term norms ‖Mʲ⁺¹b‖/‖Mʲb‖ never decreases with j (Cauchy–Schwarz:
        ‖Mʲ⁺¹b‖² = ⟨Mʲb, Mʲ⁺²b⟩ ≤ ‖Mʲb‖‖Mʲ⁺²b‖) and tends to the spectral radius seen by
        b, so a last ratio above 1 proves ρ(M) > 1. Only growth beyond rounding counts:
        terms that are exactly zero (a series that has converged) or whose ratio rounds to 1
        are no divergence. Which side of the spectrum is at fault decides the advice:
        ρ = max(|1 − ημ_max|, |1 − ημ_min|) over eigenvalues μ of A, so growth with
        η μ_max < 2 can only come from μ_min ≤ 0 (A indefinite: raise λ)."""
        norms, step = info.term_norms, self.step
        if norms.shape[1] < 2:
            if not (norms[:, 0] > 0).any():
                return []
            return [Finding(
                "not_solved", "terms=0: the Neumann series was cut after its first term "
                "(x = step·b), so nothing checks that it converges in {where}; use terms ≥ 1",
                tasks_of(norms[:, 0] > 0))]
        rounding = 8 * torch.finfo(norms.dtype).eps
        growing = (norms[:, -2] > 0) & (norms[:, -1] > norms[:, -2] * (1 + rounding))
        ratio = norms[:, -1] / torch.where(norms[:, -2] == 0, 1, norms[:, -2])
        ratio = finite_or(ratio, 0.0)
        mu_max = float(finite_or(info.max_curvature, 0.0).max())
        if not growing.any():
            return self._truncation(norms, ratio, mu_max)
        worst = int(torch.argmax(ratio))
        head = (f"the Neumann series diverges in {{where}}: its terms grow (last ratio "
                f"{float(ratio[worst]):.3g}), so the spectral radius of I − step·(I + H/λ) "
                f"is ≥ 1 with step = {step:g}; ")
        if step * mu_max >= 2:
            advice = (f"λ_max(I + H/λ) ≥ {mu_max:.4g}, so use step < {2 / mu_max:.3g} "
                      f"(e.g. step={1 / mu_max:.3g})")
        else:
            # |1 − η μ| > 1 with η μ < 2 forces μ < 0: the system is indefinite.
            implied = (1 - float(ratio[worst])) / step
            advice = (f"step·λ_max is below 2, so the growth comes from an eigenvalue "
                      f"μ ≈ {implied:.3g} ≤ 0 of I + H/λ: the system is not positive definite "
                      f"and no step helps; use a larger lam")
        return [Finding("neumann_divergence", head + advice, tasks_of(growing))]

    def _truncation(self, norms: Tensor, ratio: Tensor, mu_max: float) -> list[Finding]:
        """A series that does not grow but is cut far from its limit. With M = I − ηA and
        x_J = η Σ_{j≤J} Mʲb, the residual is b − A x_J = Mᴶ⁺¹b: the next term, estimated as
        the last term times the last ratio, ‖Mᴶb‖·(‖Mᴶb‖/‖Mᴶ⁻¹b‖). Relative to ‖b‖ above
        the threshold CG uses, the truncated sum is not the solve it stands for (a ratio of
        exactly 1, terms that alternate in sign, gives 0 or 2b)."""
        first = norms[:, 0]
        rel = finite_or(norms[:, -1] * ratio / torch.where(first == 0, 1, first), 0.0)
        bad = (first > 0) & (rel > CG_RESIDUAL_WARN)
        if not bad.any():
            return []
        worst = int(torch.argmax(torch.where(bad, rel, 0)))
        shrink = float(ratio[worst])
        how = (f"its terms do not shrink (ratio {shrink:.3g})" if shrink >= 1 else
               f"its terms shrink by only {shrink:.3g} per term")
        advice = "increase terms"
        if mu_max > 0 and self.step < 1 / mu_max:
            advice += (f", or a larger step (it may go up to 2/λ_max(I + H/λ) ≈ "
                       f"{2 / mu_max:.3g})")
        return [Finding(
            "neumann_unconverged",
            f"the Neumann series stopped after {norms.shape[1] - 1} terms with an estimated "
            f"relative residual {float(rel[worst]):.3g} > {CG_RESIDUAL_WARN} in {{where}}: "
            f"{how}, so the sum is not yet the solve it stands for; {advice}",
            tasks_of(bad))]

    # -- what the audit (metagrad.testing) reads ----------------------------------------------
    def audit_curvature(self, lam: float) -> float:
        """‖H‖ for the audit's problems: the spectral radius of I − η(I + H/λ) about 1/2 (at
        most 2λ), so that J − 1, J and J + 1 terms differ clearly."""
        if self.step >= 2:
            return 0.5 * lam
        return lam * min(2.0, 0.5 * (2 / self.step - 1))

    def rounding_amplification(self, eigenvalues: Tensor) -> float:
        """η (1 + ρ + ρ² + … + ρᴶ), ρ = max |1 − ημ| over the eigenvalues μ of A: the norm of the
        truncated series operator, which multiplies a relative rounding error in b."""
        rho = float((1 - self.step * eigenvalues).abs().max())
        return self.step * sum(rho ** j for j in range(self.terms + 1))
