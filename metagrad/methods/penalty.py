"""Gradient-norm penalty method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch.func import grad, grad_and_value

from .. import _pytree as pt
from .._hvp import Loss, hvp
from .._inner import InnerResult
from .._pytree import Params
from .._validate import non_negative_float, settle
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class Penalty(Method):
    """Gradient-norm penalty method: a bilevel relaxation that replaces the inner
    optimality condition ∇L_tr(φ) = 0 by a penalty (Mehra & Hamm 2021, "Penalty
    Method for Inversion-Free Deep Bilevel Optimization"). The meta-objective

        L_val(φ) + λ ‖∇L_tr(φ)‖²,   φ = θ⁽ᴷ⁾ (K plain GD steps),

    is differentiated with the inner loop treated first order:

        gᵢ = ∇L_val(φ) + 2λ H(φ) ∇L_tr(φ),   H = ∇²L_tr.

    For K = 0 (φ = θ) this is the exact gradient of L_val(θ) + λ‖∇L_tr(θ)‖²; λ = 0
    gives FOMAML. Cost K + 4 gradient-equivalents per task.

    Diagnostics: ``inner_losses``, ``penalty`` (‖∇L_tr(φ)‖² per task). With learned rates
    the call also returns their first-order meta-gradient, ``out.hyper_grad``.

    Parameters
    ----------
    steps : int
        K ≥ 0, the inner steps per task.
    inner_lr : float, Tensor or dict of str to Tensor
        The inner step size α > 0, or learned rates: a 0-dim tensor, or one tensor per
        adapted parameter (per tensor, per entry, per step; see :class:`InnerLoop`).
    lam : float
        λ ≥ 0, the weight of the penalty ‖∇L_tr(φ)‖².
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

    lam: float = 0.1

    name: ClassVar[str] = "penalty"
    title: ClassVar[str] = "gradient-norm penalty"
    paper: ClassVar[str] = ("Mehra & Hamm 2021, Penalty Method for Inversion-Free Deep "
                            "Bilevel Optimization (ACML)")
    gradient_of: ClassVar[str | None] = "penalty_at_phi"
    hyper_gradient: ClassVar[str | None] = "first_order"
    log_columns: ClassVar[dict[str, str]] = {"penalty": "mean"}

    @classmethod
    def verify_plan(cls, inner_lr: float, lam: float) -> list[dict[str, Any]]:
        # K = 0 (the exact gradient of the penalised objective) and a few steps
        return [dict(steps=0, inner_lr=inner_lr, lam=0.1), dict(steps=3, inner_lr=inner_lr,
                                                                 lam=0.01)]

    @classmethod
    def test_plan(cls, inner_lr: float, lam: float, dim: int,
                  steps: tuple[int, ...] = (0, 1, 3, 10)) -> list[dict[str, Any]]:
        # λ = 0 is FOMAML, a limiting case
        return [dict(steps=0, inner_lr=inner_lr, lam=0.1),
                dict(steps=0, inner_lr=inner_lr, lam=0.0),
                dict(steps=3, inner_lr=inner_lr, lam=1.0),
                dict(steps=10, inner_lr=inner_lr, lam=0.01)]

    def __post_init__(self) -> None:
        super().__post_init__()
        # λ = 0 is allowed here: it is FOMAML, a useful limiting case.
        settle(self, "lam", non_negative_float)

    def gradient_equivalents(self) -> float:
        return self.inner_loop.gradient_equivalents() + 4

    def _from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                    inner: InnerResult) -> TaskOutput:
        g_val, post = grad_and_value(loss)(inner.phi, val)
        g_tr = grad(loss)(inner.phi, train)
        curvature = hvp(loss, inner.phi, train, g_tr, self.hvp)
        g = pt.axpy(2 * self.lam, curvature, g_val)
        diag = {"inner_losses": inner.inner_losses, "penalty": pt.vdot(g_tr, g_tr)}
        return TaskOutput(g, inner.pre_update_loss, post, diag, inner.phi)

    # Meta-training on sinusoids (bench/results/train_defaults): ‖∇L_tr‖² is 1-20 there.
    train_settings: ClassVar[dict[str, Any]] = {"lam": 0.001}
    tuning_grid: ClassVar[dict[str, tuple]] = {"lam": (1e-4, 1e-3, 1e-2)}

    audit_family: ClassVar[tuple[str, dict[str, Any]] | None] = (
        "unrolled", {"output": "penalty"})
    audit_mistakes: ClassVar[tuple[str, ...]] = ("no_penalty_term", "penalty_no_two",
                                                 "last_step_squared", "last_step_doubled")
