"""Implicit MAML: the implicit meta-gradient by m steps of conjugate gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .._solvers import ConjugateGradient
from .._validate import non_negative_int, settle
from ._implicit import ImplicitMethod


@dataclass(frozen=True)
class IMAML(ImplicitMethod):
    """Implicit MAML (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with Implicit
    Gradients", Alg. 2).

    For each task, K steps of proximal gradient descent from φ = θ on the inner problem

        φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α (∇L_tr(φ⁽ᵏ⁾) + λ (φ⁽ᵏ⁾ − θ)),   φ = φ⁽ᴷ⁾,

    then gᵢ = x_m, exactly m iterations of plain conjugate gradient from x = 0 on

        (I + H(φ)/λ) x = ∇L_val(φ),   H = ∇²L_tr.

    At the exact minimiser φ* of L_tr(φ) + λ/2‖φ − θ‖² and for m ≥ d this is the
    implicit gradient ∇_θ L_val(φ*(θ)) = λ(H(φ*) + λI)⁻¹ ∇L_val(φ*). CG needs
    I + H/λ positive definite (λ > −λ_min(H)), and the proximal loop converges only
    for α(λ + L) < 2 (L = λ_max(H)); both are checked from the solver's Rayleigh
    quotients. Cost K + 1 + 2m gradient-equivalents per task.

    Diagnostics: ``inner_losses``, ``cg_residual_norms``, ``cg_min_curvature``,
    ``cg_max_curvature`` (per task).

    Parameters
    ----------
    steps : int
        K ≥ 0, the proximal inner steps per task.
    inner_lr : float, Tensor or dict of str to Tensor
        The inner step size α > 0, or fixed rate tensors (every parameter adapted).
    lam : float
        λ > 0 of the proximal inner problem.
    cg_iters : int
        m ≥ 0, the conjugate-gradient iterations.
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

    cg_iters: int = 5

    name: ClassVar[str] = "imaml"
    title: ClassVar[str] = "implicit MAML"
    paper: ClassVar[str] = ("Rajeswaran, Finn, Kakade & Levine 2019, Meta-Learning with "
                            "Implicit Gradients (NeurIPS)")
    log_columns: ClassVar[dict[str, str]] = ConjugateGradient.log_columns

    @classmethod
    def verify_plan(cls, inner_lr: float, lam: float) -> list[dict[str, Any]]:
        # CG stopped short of the solution, and run long enough to solve it
        return [dict(steps=5, inner_lr=inner_lr, lam=lam, cg_iters=3),
                dict(steps=20, inner_lr=inner_lr, lam=lam, cg_iters=10)]

    @classmethod
    def test_plan(cls, inner_lr: float, lam: float, dim: int,
                  steps: tuple[int, ...] = (0, 1, 3, 10)) -> list[dict[str, Any]]:
        return [dict(steps=0, inner_lr=inner_lr, lam=lam, cg_iters=1),
                dict(steps=3, inner_lr=inner_lr, lam=lam, cg_iters=2),
                dict(steps=10, inner_lr=inner_lr, lam=lam, cg_iters=5),
                # m ≥ d: the reference is the dense solve (m = d on the sinusoid MLP, d = 141,
                # would cost 141 HVP rounds for no extra coverage, so 30 there)
                dict(steps=10, inner_lr=inner_lr, lam=4 * lam, cg_iters=dim if dim <= 60 else 30),
                dict(steps=3, inner_lr=inner_lr, lam=lam, cg_iters=0)]

    def __post_init__(self) -> None:
        super().__post_init__()
        settle(self, "cg_iters", non_negative_int)

    @property
    def solver(self) -> ConjugateGradient:
        return ConjugateGradient(self.cg_iters)

    # Meta-training on sinusoids (bench/results/train_defaults): λ above −λ_min(H) ≈ 75.
    train_settings: ClassVar[dict[str, Any]] = {"lam": 300.0}
    tuning_grid: ClassVar[dict[str, tuple]] = {"lam": (100.0, 300.0, 1000.0, 3000.0)}

    @classmethod
    def solver_settings(cls, lam: float, curvature: tuple[float, float],
                        tol: float) -> dict[str, Any]:
        """CG iterations m with 2((√κ − 1)/(√κ + 1))ᵐ ≤ tol, κ = (λ + L)/(λ + μ) the
        condition number of I + H/λ (the classical CG bound)."""
        lo, hi = curvature
        root = math.sqrt((lam + hi) / (lam + lo))
        r = (root - 1) / (root + 1)
        return {"cg_iters": max(1, math.ceil(math.log(tol / 2) / math.log(r))) if r > 0 else 1}

    audit_family: ClassVar[tuple[str, dict[str, Any]] | None] = ("implicit", {"solver": "cg"})
    audit_mistakes: ClassVar[tuple[str, ...]] = (
        "no_solve", "no_lam", "damped", "exact_solve", "cg_stale", "cg_normal",
        "cg_warm_start", "cg_tolerance", "cg_tolerance_previous", "plain_inner", "pullback")
