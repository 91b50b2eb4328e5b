"""Neumann-series implicit gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .._solvers import NeumannSeries
from .._validate import non_negative_int, positive_float, settle
from ._implicit import ImplicitMethod


@dataclass(frozen=True)
class Neumann(ImplicitMethod):
    """Neumann-series implicit gradient (Lorraine, Vicol & Duvenaud 2020, "Optimizing
    Millions of Hyperparameters by Implicit Differentiation", Alg. 2-3).

    The inner problem and linear system of :class:`IMAML` (K proximal GD steps, then
    (I + H(φ)/λ) x = ∇L_val(φ) = b), solved by the truncated series

        gᵢ = x_J = η Σ_{j=0..J} (I − η(I + H/λ))ʲ b     (η = 1: x_J = Σ_{j=0..J} (−H/λ)ʲ b).

    It converges iff the spectral radius ρ of I − η(I + H/λ) is below 1, with error
    ∝ ρ^(J+1). The series for (I + H/λ)⁻¹ alternates in sign: writing it as
    Σ (H/λ)ʲ, as one might from (I − αH)⁻¹, is a sign error. Growing terms are
    reported with a ``step`` that converges, or the advice to raise ``lam`` when
    no step can help (I + H/λ indefinite). Cost K + 1 + 2J gradient-equivalents.

    Diagnostics: ``inner_losses``, ``neumann_term_norms``, ``neumann_last_term_norm``,
    ``neumann_min_curvature``, ``neumann_max_curvature``.

    Parameters
    ----------
    steps : int
        K ≥ 0, the proximal inner steps per task.
    inner_lr : float, Tensor or dict of str to Tensor
        The inner step size α > 0, or fixed rate tensors (every parameter adapted).
    lam : float
        λ > 0 of the proximal inner problem.
    terms : int
        J ≥ 0, the terms of the series after the first.
    step : float
        η > 0 (default 1).
    inner : GD, Momentum, Adam or str
        The inner update rule: ``mg.GD()`` (default), ``mg.Momentum(beta)``, ``mg.Adam()``,
        or its name.
    batching : {"vmap", "loop"}
        All tasks at once with ``torch.func.vmap`` (default), or a Python loop over them.
    hvp : {"auto", "revrev", "fwdrev"}
        How Hessian-vector products are taken (``"auto"``: the measured default).
    diagnose : {"warn", "error", "record", "off"}
        What the numerical checks do with a problem they find (``metagrad.diagnose``).
    """

    terms: int = 5
    step: float = 1.0

    name: ClassVar[str] = "neumann"
    title: ClassVar[str] = "Neumann-series implicit gradient"
    paper: ClassVar[str] = ("Lorraine, Vicol & Duvenaud 2020, Optimizing Millions of "
                            "Hyperparameters by Implicit Differentiation (AISTATS)")
    log_columns: ClassVar[dict[str, str]] = NeumannSeries.log_columns

    @classmethod
    def verify_plan(cls, inner_lr: float, lam: float) -> list[dict[str, Any]]:
        # a short series, and a long one with a step below 1
        return [dict(steps=5, inner_lr=inner_lr, lam=lam, terms=3),
                dict(steps=20, inner_lr=inner_lr, lam=2 * lam, terms=10, step=0.5)]

    @classmethod
    def test_plan(cls, inner_lr: float, lam: float, dim: int,
                  steps: tuple[int, ...] = (0, 1, 3, 10)) -> list[dict[str, Any]]:
        return [dict(steps=0, inner_lr=inner_lr, lam=lam, terms=0),
                dict(steps=3, inner_lr=inner_lr, lam=lam, terms=2),
                dict(steps=10, inner_lr=inner_lr, lam=2 * lam, terms=8, step=0.5),
                dict(steps=10, inner_lr=inner_lr, lam=lam, terms=20, step=0.3)]

    def __post_init__(self) -> None:
        super().__post_init__()
        settle(self, "terms", non_negative_int)
        settle(self, "step", positive_float)

    @property
    def solver(self) -> NeumannSeries:
        return NeumannSeries(self.terms, self.step)

    # Meta-training on sinusoids (bench/results/train_defaults): ρ(H/λ) < 1 along training.
    train_settings: ClassVar[dict[str, Any]] = {"lam": 1000.0}
    tuning_grid: ClassVar[dict[str, tuple]] = {"lam": (300.0, 1000.0, 3000.0),
                                               "step": (0.5, 1.0)}

    @classmethod
    def solver_settings(cls, lam: float, curvature: tuple[float, float],
                        tol: float) -> dict[str, Any]:
        """The optimal step η = 2/(a_μ + a_L) for the spectrum [a_μ, a_L] = 1 + [μ, L]/λ of
        I + H/λ, and J terms with ρᴶ ≤ tol, ρ = (a_L − a_μ)/(a_L + a_μ)."""
        lo, hi = curvature
        a_lo, a_hi = 1 + lo / lam, 1 + hi / lam
        r = (a_hi - a_lo) / (a_hi + a_lo)
        return {"step": 2.0 / (a_lo + a_hi),
                "terms": max(1, math.ceil(math.log(tol) / math.log(r)))}

    audit_family: ClassVar[tuple[str, dict[str, Any]] | None] = (
        "implicit", {"solver": "neumann"})
    audit_mistakes: ClassVar[tuple[str, ...]] = (
        "no_solve", "no_lam", "non_alternating", "exact_solve", "plain_inner", "pullback")
