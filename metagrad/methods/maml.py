"""MAML: the exact second-order meta-gradient through K inner steps.

Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation
of Deep Networks", eq. (1)-(2). For one task,

    gᵢ = ∇_θ L_val(θ⁽ᴷ⁾(θ))
       = (I − αH(θ⁽⁰⁾)) (I − αH(θ⁽¹⁾)) ⋯ (I − αH(θ⁽ᴷ⁻¹⁾)) ∇L_val(φ),   H = ∇²L_tr.

Two exact backward modes (same number, different memory):

* ``"unrolled"``: ``torch.func.grad`` through the whole inner loop; keeps the
  K inner graphs alive.
* ``"trajectory"``: keep only θ⁽⁰⁾ … θ⁽ᴷ⁻¹⁾ and sweep back with Hessian-vector
  products, v ← v − α H(θ⁽ᵏ⁾) v for k = K−1 … 0, starting from v = ∇L_val(φ);
  memory is K parameter copies and one HVP graph at a time. With
  ``checkpoint=c`` only every c-th iterate is kept and each segment is
  recomputed during the sweep (Griewank & Walther 2000, "Algorithm 799:
  revolve", in its simplest uniform form): about K/c + c copies for K more
  gradient evaluations; c ≈ √K balances the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.func import grad, grad_and_value

from .. import _pytree as pt
from .._hvp import Loss, hvp
from .._inner import adapt
from .._pytree import Params
from .._validate import positive_int
from ._base import Method, TaskOutput

BACKWARD_MODES = ("unrolled", "trajectory")


@dataclass(frozen=True)
class MAML(Method):
    backward: str = field(default="unrolled", kw_only=True)
    checkpoint: int | None = field(default=None, kw_only=True)

    name = "maml"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backward not in BACKWARD_MODES:
            raise ValueError(f"backward must be one of {BACKWARD_MODES}, got {self.backward!r}")
        if self.checkpoint is not None:
            positive_int("checkpoint", self.checkpoint)
            if self.backward != "trajectory":
                raise ValueError("checkpoint=... applies to backward='trajectory' only, "
                                 f"got backward={self.backward!r}")

    def gradient_equivalents(self) -> float:
        return 3 * self.steps + 1

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        if self.backward == "unrolled":
            return self._unrolled(loss, theta, train, val)
        return self._trajectory(loss, theta, train, val)

    def _unrolled(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        def objective(theta: Params):
            inner = adapt(loss, theta, train, self.steps, self.inner_lr)
            post = loss(inner.phi, val)
            return post, (inner.pre_update_loss, post, inner.inner_losses)

        g, (pre, post, inner_losses) = grad(objective, has_aux=True)(theta)
        return TaskOutput(g, pre, post, {"inner_losses": inner_losses})

    def _trajectory(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        every = self.checkpoint or 1
        inner = adapt(loss, theta, train, self.steps, self.inner_lr, keep_every=every)
        v, post = grad_and_value(loss)(inner.phi, val)
        for index in reversed(range(len(inner.trajectory or []))):
            start = index * every
            stored = inner.trajectory[index]  # type: ignore[index]
            length = min(every, self.steps - start)
            if length == 1:
                segment = [stored]
            else:  # recompute θ⁽ˢᵗᵃʳᵗ⁾ … θ⁽ˢᵗᵃʳᵗ⁺ˡᵉⁿᵍᵗʰ⁻¹⁾ from the stored checkpoint
                run = adapt(loss, stored, train, length - 1, self.inner_lr, keep_every=1)
                segment = (run.trajectory or []) + [run.phi]
            for point in reversed(segment):
                v = pt.axpy(-self.inner_lr, hvp(loss, point, train, v, self.hvp), v)
        return TaskOutput(v, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses})
