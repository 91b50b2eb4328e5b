"""How MAML differentiates through its inner loop: one small object per backward mode.

Both modes compute the same exact meta-gradient (Finn et al. 2017, eq. (1)-(2))

    gᵢ = (I − αH(θ⁽⁰⁾)) (I − αH(θ⁽¹⁾)) ⋯ (I − αH(θ⁽ᴷ⁻¹⁾)) ∇L_val(φ),

and differ only in memory and time:

* :class:`Unrolled`: ``torch.func.grad`` through the whole inner loop; the K inner
  graphs stay alive until the backward pass.
* :class:`Trajectory`: keep the iterates θ⁽ᵏ⁾, k < K, and sweep back with
  Hessian-vector products, v ← v − α H(θ⁽ᵏ⁾) v for k = K−1 … 0 from v = ∇L_val(φ):
  K parameter copies and one HVP graph at a time. With ``checkpoint=c`` only every
  c-th iterate is kept and each segment is recomputed from it during the sweep
  (Griewank & Walther 2000, "Algorithm 799: revolve", in its simplest uniform form):
  about K/c + c copies for K − ⌈K/c⌉ more gradient evaluations; c ≈ √K balances them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch.func import grad, grad_and_value

from .. import _pytree as pt
from .._hvp import Loss, hvp
from .._inner import adapt
from .._pytree import Params
from .._validate import positive_int, settle
from ._base import TaskOutput


@dataclass(frozen=True)
class Unrolled:
    """Reverse mode through the unrolled inner loop (the default)."""

    name: ClassVar[str] = "unrolled"

    def recomputed_gradients(self, steps: int) -> int:
        """Inner-loop gradients evaluated a second time during the backward pass."""
        return 0

    def per_task(self, loss: Loss, theta: Params, train: Any, val: Any, steps: int,
                 inner_lr: float, hvp_mode: str) -> TaskOutput:
        def objective(theta: Params):
            inner = adapt(loss, theta, train, steps, inner_lr)
            post = loss(inner.phi, val)
            return post, (inner.pre_update_loss, post, inner.inner_losses, inner.phi)

        g, (pre, post, inner_losses, phi) = grad(objective, has_aux=True)(theta)
        return TaskOutput(g, pre, post, {"inner_losses": inner_losses}, phi)


@dataclass(frozen=True)
class Trajectory:
    """The reverse sweep with Hessian-vector products over stored iterates; with
    ``checkpoint=c``, every c-th iterate stored and the segments recomputed."""

    checkpoint: int | None = None

    name: ClassVar[str] = "trajectory"

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            settle(self, "checkpoint", positive_int)

    def recomputed_gradients(self, steps: int) -> int:
        """Inner-loop gradients evaluated a second time during the backward pass: each
        stored segment of length ℓ is rerun for ℓ − 1 steps, K − ⌈K/c⌉ in all."""
        every = self.checkpoint or 1
        return steps - math.ceil(steps / every)

    def per_task(self, loss: Loss, theta: Params, train: Any, val: Any, steps: int,
                 inner_lr: float, hvp_mode: str) -> TaskOutput:
        every = self.checkpoint or 1
        inner = adapt(loss, theta, train, steps, inner_lr, keep_every=every)
        v, post = grad_and_value(loss)(inner.phi, val)
        stored = inner.trajectory or []
        for index in reversed(range(len(stored))):
            start = index * every
            length = min(every, steps - start)
            if length == 1:
                segment = [stored[index]]
            else:  # recompute θ⁽ˢᵗᵃʳᵗ⁾ … θ⁽ˢᵗᵃʳᵗ⁺ˡᵉⁿᵍᵗʰ⁻¹⁾ from the stored checkpoint
                run = adapt(loss, stored[index], train, length - 1, inner_lr, keep_every=1)
                segment = (run.trajectory or []) + [run.phi]
            for point in reversed(segment):
                v = pt.axpy(-inner_lr, hvp(loss, point, train, v, hvp_mode), v)
        return TaskOutput(v, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses},
                          inner.phi)


BACKWARD_MODES: dict[str, type[Unrolled] | type[Trajectory]] = {
    Unrolled.name: Unrolled, Trajectory.name: Trajectory}
