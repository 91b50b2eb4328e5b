"""First-order MAML: drop every Hessian from the MAML chain rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch.func import grad_and_value

from .._hvp import Loss
from .._inner import InnerResult
from .._pytree import Params
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class FOMAML(Method):
    """First-order MAML (Finn, Abbeel & Levine 2017, §5.2).

    The inner loop θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α ∇L_tr(θ⁽ᵏ⁾) is treated as a constant:

        gᵢ = ∇L_val(φ),   φ = θ⁽ᴷ⁾,

    i.e. MAML's product of (I − αH(θ⁽ᵏ⁾)) factors replaced by the identity; exact
    MAML for K = 0. Cost K + 1 gradient-equivalents per task.

    Fields: ``steps`` (K), ``inner_lr`` (α), and the options ``batching``, ``hvp``,
    ``diagnose`` of :class:`metagrad.Method`.
    """

    name: ClassVar[str] = "fomaml"
    title: ClassVar[str] = "first-order MAML"
    paper: ClassVar[str] = ("Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for "
                            "Fast Adaptation of Deep Networks (ICML), section 5.2")
    gradient_of: ClassVar[str | None] = "val_at_phi"
    hyper_gradient: ClassVar[str | None] = "first_order"

    def gradient_equivalents(self) -> float:
        return self.inner_loop.gradient_equivalents() + 1

    def _from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                    inner: InnerResult) -> TaskOutput:
        g, post = grad_and_value(loss)(inner.phi, val)
        return TaskOutput(g, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses},
                          inner.phi)
