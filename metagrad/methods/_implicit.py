"""Shared front half of the implicit methods (IMAML, Neumann).

Inner problem (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with
Implicit Gradients", eq. (4)): φ ≈ argmin L_tr(φ) + λ/2 ‖φ − θ‖², by K steps
of proximal GD from φ = θ. At the exact minimiser the implicit function
theorem gives the meta-gradient (their eq. (6)-(7))

    gᵢ = (I + H(φ)/λ)⁻¹ ∇L_val(φ) = λ (H(φ) + λI)⁻¹ ∇L_val(φ),

which the subclasses approximate with a linear solver on A = I + H(φ)/λ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.func import grad_and_value

from .. import _pytree as pt
from .._hvp import Loss, hvp
from .._inner import InnerResult, adapt
from .._pytree import Params
from .._validate import positive_float
from ..diagnose import check_positive_definite, check_proximal_rate
from ._base import Method


@dataclass(frozen=True)
class ImplicitMethod(Method):
    lam: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_float("lam", self.lam)

    def _inner_lam(self) -> float | None:
        return self.lam

    def _solver_problems(self, diag: dict, prefix: str, solver: str, iters: int) -> list[str]:
        """Checks shared by the two solvers of A x = b, A = I + H(φ)/λ."""
        problems = check_positive_definite(self.lam, diag[f"{prefix}_min_curvature"], solver)
        if iters > 0 and self.steps > 0:
            problems += check_proximal_rate(self.inner_lr, self.lam,
                                            diag[f"{prefix}_max_curvature"])
        return problems

    def _setup(self, loss: Loss, theta: Params, train: Any, val: Any):
        """Adapt, then return (inner result, b = ∇L_val(φ), L_val(φ), v ↦ (I + H(φ)/λ) v)."""
        inner: InnerResult = adapt(loss, theta, train, self.steps, self.inner_lr, lam=self.lam)
        b, post = grad_and_value(loss)(inner.phi, val)

        def matvec(v: Params) -> Params:
            return pt.axpy(1.0 / self.lam, hvp(loss, inner.phi, train, v, self.hvp), v)

        return inner, b, post, matvec
