"""Reptile: the displacement of the inner loop as the meta-direction.

Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms",
Alg. 1: gᵢ = θ − φ = α Σ_{k=0..K−1} ∇L_tr(θ⁽ᵏ⁾). The outer SGD step with rate
ε is then θ ← θ − ε g = θ + ε(φ − θ). Cost K gradients (plus one forward
pass on the val batch, for the post-update loss only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import _pytree as pt
from .._hvp import Loss
from .._inner import adapt
from .._pytree import Params
from ._base import Method, TaskOutput


@dataclass(frozen=True)
class Reptile(Method):
    name = "reptile"

    def gradient_equivalents(self) -> float:
        return self.steps

    def _per_task(self, loss: Loss, theta: Params, train: Any, val: Any) -> TaskOutput:
        inner = adapt(loss, theta, train, self.steps, self.inner_lr)
        post = loss(inner.phi, val)
        g = pt.sub(theta, inner.phi)
        return TaskOutput(g, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses})
