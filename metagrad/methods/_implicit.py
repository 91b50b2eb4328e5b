"""The implicit methods (IMAML, Neumann): one inner problem, one linear system, a
swappable solver.

Inner problem (Rajeswaran, Finn, Kakade & Levine 2019, "Meta-Learning with
Implicit Gradients", eq. (4)): φ ≈ argmin L_tr(φ) + λ/2 ‖φ − θ‖², by K steps
of proximal GD from φ = θ. At the exact minimiser the implicit function
theorem gives the meta-gradient (their eq. (6)-(7))

    gᵢ = (I + H(φ)/λ)⁻¹ ∇L_val(φ) = λ (H(φ) + λI)⁻¹ ∇L_val(φ),

which a linear solver approximates on A = I + H(φ)/λ, b = ∇L_val(φ). A
subclass says which solver (``solver``, a ``metagrad._solvers`` object built
from its own fields) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from torch import Tensor
from torch.func import grad_and_value

from .. import _pytree as pt
from .. import _rates
from .._hvp import Loss, hvp_operator
from .._inner import InnerLoop, InnerResult
from .._pytree import Params
from .._rules import GD
from .._solvers import ConjugateGradient, NeumannSeries
from .._task import Task
from .._validate import positive_float, settle
from ..diagnose import Finding, check_positive_definite, check_proximal_rate, check_singular
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class ImplicitMethod(Method):
    lam: float = 1.0

    target: ClassVar[str] = "implicit"
    hyper_gradient_note: ClassVar[str] = (
        "the implicit gradient is taken at the minimiser of the proximal inner problem, "
        "which neither the inner optimizer nor its step sizes move, so their meta-gradient "
        "is zero.")

    def __post_init__(self) -> None:
        super().__post_init__()
        settle(self, "lam", positive_float)

    @property
    def solver(self) -> ConjugateGradient | NeumannSeries:
        """The linear solver for (I + H(φ)/λ) x = ∇L_val(φ), configured from this method."""
        raise NotImplementedError

    def build_inner_loop(self) -> InnerLoop:
        """K steps of the update rule (default: gradient descent) on the proximal inner
        problem L_tr(φ) + λ/2‖φ − θ‖² from φ = θ."""
        assert not isinstance(self.inner, str)  # normalised in __post_init__
        return InnerLoop(self.steps, self.inner_lr, self.inner, lam=self.lam)

    def _check_hyper(self, loop: InnerLoop, theta: Params) -> None:
        super()._check_hyper(loop, theta)
        if not loop.adapts_all(theta):
            # The implicit gradient of a partially adapted model needs the cross-curvature
            # of the adapted and the fixed parameters, which these solvers do not form.
            raise ValueError(
                f"{self.name} adapts every parameter: inner_lr as a dict must give a rate for "
                f"each one (it leaves out some); partial adaptation (ANIL) is supported by "
                f"MAML, FOMAML, Reptile and Penalty")

    def gradient_equivalents(self) -> float:
        return self.inner_loop.gradient_equivalents() + 1 + self.solver.gradient_equivalents()

    def _from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                    inner: InnerResult) -> TaskOutput:
        b, post = grad_and_value(loss)(inner.phi, val)

        hessian = hvp_operator(loss, inner.phi, train, self.hvp)  # v ↦ H(φ) v, built once

        def matvec(v: Params) -> Params:  # v ↦ (I + H(φ)/λ) v
            return pt.axpy(1.0 / self.lam, hessian(v), v)

        x, info = self.solver.solve(matvec, b)
        return TaskOutput(x, inner.pre_update_loss, post,
                          {"inner_losses": inner.inner_losses, **info.diagnostics()}, inner.phi)

    def _findings(self, loss: Loss, theta: Params, tasks: Task,
                  diag: dict[str, Tensor]) -> list[Finding]:
        solver = self.solver
        info = solver.info_type.from_diagnostics(diag)
        found = super()._findings(loss, theta, tasks, diag)
        system = (check_positive_definite(self.lam, info.min_curvature, solver.description)
                  + check_singular(self.lam, info.min_curvature, info.max_curvature,
                                   solver.description))
        found += system
        if self.steps == 0:
            found.append(Finding(
                "not_solved", "steps=0: the proximal inner problem was not solved (φ = θ), so "
                "the result is the implicit-gradient formula at θ, not at the minimiser φ* "
                "in {where}; use steps ≥ 1 with inner_lr·(lam + L) < 2",
                tuple(range(tasks.num_tasks))))
        if solver.matvecs > 0 and self.steps > 0 and isinstance(self.inner, GD):
            # The solver's Rayleigh quotients bound λ_max(H) from below for free; the rate
            # condition α(λ + L) < 2 is proximal gradient descent's.
            found += check_proximal_rate(_rates.largest(self.inner_lr), self.lam,
                                         info.max_curvature)
        # Where the system itself is at fault, "increase cg_iters / terms" cannot help.
        hopeless = {t for f in system for t in f.tasks}
        for finding in solver.check(info):
            if finding.kind in ("cg_unconverged", "neumann_unconverged"):
                kept = tuple(t for t in finding.tasks if t not in hopeless)
                if not kept:
                    continue
                finding = replace(finding, tasks=kept)
            found.append(finding)
        return found

    # Meta-training: the "solved" regime of a study (proximal problem and linear system
    # solved for a Hessian spectrum assumed in [μ, L]) tries these λ on validation tasks.
    solved_tuning_grid: ClassVar[dict[str, tuple]] = {"lam": (300.0, 1000.0, 3000.0)}

    @classmethod
    def solver_settings(cls, lam: float, curvature: tuple[float, float],
                        tol: float) -> dict[str, Any]:
        """The solver's settings that solve (I + H/λ) x = b to relative error ``tol`` for
        every H with spectrum in ``curvature`` = [μ, L] (λ + μ > 0)."""
        raise NotImplementedError

    def audit_curvature(self) -> float:
        """The solver's choice (:meth:`ConjugateGradient.audit_curvature`), kept where the
        proximal loop converges, α(λ + ‖H‖) ≤ 1, and at least λ/4."""
        s = self.solver.audit_curvature(self.lam)
        return max(min(s, 1 / _rates.largest(self.inner_lr) - self.lam), 0.25 * self.lam)
