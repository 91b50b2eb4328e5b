"""First-order MAML: drop every Hessian from the MAML chain rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import grad_and_value

from .. import _batched
from .. import _pytree as pt
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

    With learned rates (``inner_lr`` tensors) the call also returns their first-order
    meta-gradient, ``out.hyper_grad``: the inner gradients held constant, as the loop is.

    Parameters
    ----------
    steps : int
        K ≥ 0, the inner steps per task.
    inner_lr : float, Tensor or dict of str to Tensor
        The inner step size α > 0, or learned rates: a 0-dim tensor, or one tensor per
        adapted parameter (per tensor, per entry, per step; see :class:`InnerLoop`).
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

    name: ClassVar[str] = "fomaml"
    title: ClassVar[str] = "first-order MAML"
    paper: ClassVar[str] = ("Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for "
                            "Fast Adaptation of Deep Networks (ICML), section 5.2")
    gradient_of: ClassVar[str | None] = "val_at_phi"
    hyper_gradient: ClassVar[str | None] = "first_order"

    def gradient_equivalents(self) -> float:
        return self.inner_loop.gradient_equivalents() + 1

    def batched_from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                           inner: InnerResult, dims: tuple[Any, Any]
                           ) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        # gᵢ = ∇L_val(φᵢ) for every task by one reverse pass on the stacked φ
        with torch.enable_grad():
            phi = {k: v.detach().requires_grad_(True) for k, v in inner.phi.items()}
            post = _batched.values(loss, phi, val, dims[1])
            g = dict(zip(phi, _batched.grads(post.sum(), list(phi.values()))))
        check = (loss, inner.phi, train, dims[0]) if self.diagnose != "off" else ()
        diag = _batched.diagnostics({"inner_losses": inner.inner_losses},
                                    inner.pre_update_loss, post, g, *check)
        return pt.mean0(g), {}, diag

    def _from_inner(self, loss: Loss, theta: Params, train: Any, val: Any,
                    inner: InnerResult) -> TaskOutput:
        g, post = grad_and_value(loss)(inner.phi, val)
        return TaskOutput(g, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses},
                          inner.phi)

    audit_family: ClassVar[tuple[str, dict[str, Any]] | None] = (
        "unrolled", {"output": "maml", "graph": "none"})
    audit_mistakes: ClassVar[tuple[str, ...]] = ("second_order", "last_step_squared",
                                                 "last_step_doubled")
