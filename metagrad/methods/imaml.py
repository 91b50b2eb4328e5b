"""Implicit MAML: the implicit meta-gradient by m steps of conjugate gradient.

Rajeswaran et al. 2019, Alg. 2: after K proximal inner steps (see
``_implicit``), gᵢ = x_m, the m-th conjugate-gradient iterate from x = 0 on

    (I + H(φ)/λ) x = ∇L_val(φ).

CG needs I + H/λ positive definite (λ > −λ_min(H)); the smallest curvature
pᵀAp/pᵀp seen is returned in the diagnostics. Cost K + 1 + 2m gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._hvp import Loss
from .._pytree import Params
from .._solvers import cg
from .._validate import non_negative_int
from ..diagnose import check_cg_residual
from ._base import TaskOutput
from ._implicit import ImplicitMethod


@dataclass(frozen=True)
class IMAML(ImplicitMethod):
    cg_iters: int = 5

    name = "imaml"

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative_int("cg_iters", self.cg_iters)

    def gradient_equivalents(self) -> float:
        return self.steps + 1 + 2 * self.cg_iters

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        inner, b, post, matvec = self._setup(loss, theta, train, val)
        x, info = cg(matvec, b, self.cg_iters)
        diag = {
            "inner_losses": inner.inner_losses,
            "cg_residual_norms": info.residual_norms,
            "cg_min_curvature": info.min_curvature,
            "cg_max_curvature": info.max_curvature,
        }
        return TaskOutput(x, inner.pre_update_loss, post, diag)

    def _problems(self, loss, theta, tasks, diag) -> list[str]:
        problems = super()._problems(loss, theta, tasks, diag)
        problems += self._solver_problems(diag, "cg", "CG", self.cg_iters)
        return problems + check_cg_residual(diag["cg_residual_norms"])
