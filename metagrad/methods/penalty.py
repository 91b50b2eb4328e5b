"""Gradient-norm penalty method.

A bilevel relaxation that replaces the inner optimality condition
∇L_tr(φ) = 0 by a penalty (e.g. Mehra & Hamm 2021, "Penalty Method for
Inversion-Free Deep Bilevel Optimization"): the meta-objective

    L_val(φ) + λ ‖∇L_tr(φ)‖²,    φ = θ⁽ᴷ⁾,

differentiated with the inner loop treated first order:

    gᵢ = ∇L_val(φ) + 2λ H(φ) ∇L_tr(φ).

For K = 0 (φ = θ) this is the exact gradient of L_val(θ) + λ‖∇L_tr(θ)‖²;
λ = 0 gives FOMAML. Cost K + 4 gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.func import grad, grad_and_value

from .. import _pytree as pt
from .._hvp import Loss, hvp
from .._inner import adapt
from .._pytree import Params
from .._validate import non_negative_float
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class Penalty(Method):
    lam: float = 0.1

    name = "penalty"

    def __post_init__(self) -> None:
        super().__post_init__()
        # λ = 0 is allowed here: it is FOMAML, a useful limiting case.
        non_negative_float("lam", self.lam)

    def gradient_equivalents(self) -> float:
        return self.steps + 4

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        inner = adapt(loss, theta, train, self.steps, self.inner_lr)
        g_val, post = grad_and_value(loss)(inner.phi, val)
        g_tr = grad(loss)(inner.phi, train)
        curvature = hvp(loss, inner.phi, train, g_tr, self.hvp)
        g = pt.axpy(2 * self.lam, curvature, g_val)
        diag = {"inner_losses": inner.inner_losses, "penalty": pt.vdot(g_tr, g_tr)}
        return TaskOutput(g, inner.pre_update_loss, post, diag)
