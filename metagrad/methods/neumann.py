"""Neumann-series implicit gradient.

Lorraine, Vicol & Duvenaud 2020, "Optimizing Millions of Hyperparameters by
Implicit Differentiation", Alg. 2-3: the iMAML system of ``_implicit``,
(I + H(φ)/λ) x = ∇L_val(φ) = b, solved by the truncated series

    x_J = η Σ_{j=0..J} (I − η(I + H/λ))ʲ b,    (η = 1: x_J = Σ_{j=0..J} (−H/λ)ʲ b).

It converges iff ρ(I − η(I + H/λ)) < 1, with error ∝ ρ^(J+1). The seed notes'
(I − αH)⁻¹ ≈ Σ (αH)ʲ has the sign wrong: the series for (I + H/λ)⁻¹
alternates. Cost K + 1 + 2J gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._hvp import Loss
from .._pytree import Params
from .._solvers import neumann
from .._validate import non_negative_int, positive_float
from ..diagnose import check_neumann
from ._base import TaskOutput
from ._implicit import ImplicitMethod


@dataclass(frozen=True)
class Neumann(ImplicitMethod):
    terms: int = 5
    step: float = 1.0

    name = "neumann"

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative_int("terms", self.terms)
        positive_float("step", self.step)

    def gradient_equivalents(self) -> float:
        return self.steps + 1 + 2 * self.terms

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        inner, b, post, matvec = self._setup(loss, theta, train, val)
        x, info = neumann(matvec, b, self.terms, self.step)
        diag = {
            "inner_losses": inner.inner_losses,
            "neumann_term_norms": info.term_norms,
            "neumann_last_term_norm": info.last_term_norm,
            "neumann_min_curvature": info.min_curvature,
            "neumann_max_curvature": info.max_curvature,
        }
        return TaskOutput(x, inner.pre_update_loss, post, diag)

    def _problems(self, loss, theta, tasks, diag) -> list[str]:
        problems = super()._problems(loss, theta, tasks, diag)
        problems += self._solver_problems(diag, "neumann", "the Neumann series", self.terms)
        return problems + check_neumann(diag["neumann_term_norms"], self.step,
                                        diag["neumann_max_curvature"])
