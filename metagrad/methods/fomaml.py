"""First-order MAML: drop every Hessian from the MAML chain rule.

Finn et al. 2017, section 5.2: gᵢ = ∇L_val(φ), φ = θ⁽ᴷ⁾, the inner loop treated
as a constant. Cost K + 1 gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.func import grad_and_value

from .._hvp import Loss
from .._inner import adapt
from .._pytree import Params
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class FOMAML(Method):
    name = "fomaml"

    def gradient_equivalents(self) -> float:
        return self.steps + 1

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        inner = adapt(loss, theta, train, self.steps, self.inner_lr)
        g, post = grad_and_value(loss)(inner.phi, val)
        return TaskOutput(g, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses})
