"""The inner loop (task adaptation) shared by all six methods.

Plain gradient descent, Finn et al. 2017 (MAML), eq. (1):

    θ⁽⁰⁾ = θ,   θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ − α ∇L_tr(θ⁽ᵏ⁾),   φ = θ⁽ᴷ⁾

and proximal gradient descent on the iMAML inner problem (Rajeswaran et al.
2019, eq. (4)), ``min_φ L_tr(φ) + λ/2 ‖φ − θ‖²`` started at φ = θ:

    φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α (∇L_tr(φ⁽ᵏ⁾) + λ (φ⁽ᵏ⁾ − θ)).

Whether the outer gradient flows through the loop is decided by the caller:
called inside ``torch.func.grad`` w.r.t. θ, the loop is differentiated
exactly (second order, as MAML needs); called outside, it is first order and
keeps no graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value

from . import _pytree as pt
from ._hvp import Loss
from ._pytree import Params


@dataclass
class InnerResult:
    phi: Params
    """Adapted parameters θ⁽ᴷ⁾."""
    pre_update_loss: Tensor
    """L_tr(θ), the loss before adaptation."""
    inner_losses: Tensor
    """L_tr(θ⁽ᵏ⁾) for k = 0 … K−1 (shape ``(K,)``; empty for K = 0)."""
    trajectory: list[Params] | None = None
    """θ⁽⁰⁾, θ⁽ᶜ⁾, θ⁽²ᶜ⁾, … (k < K) when ``keep_every=c`` is asked for (memory-lean MAML)."""


def adapt(
    loss: Loss,
    theta: Params,
    batch: Any,
    steps: int,
    inner_lr: float,
    lam: float | None = None,
    keep_every: int = 0,
) -> InnerResult:
    """Run ``steps`` steps of (proximal, if ``lam`` is given) gradient descent from θ.

    ``keep_every=c > 0`` keeps every c-th iterate θ⁽ᵏ⁾, k < K, as ``trajectory``.
    """
    step = grad_and_value(loss)
    phi = theta
    losses: list[Tensor] = []
    trajectory: list[Params] | None = [] if keep_every > 0 else None
    for k in range(steps):
        if trajectory is not None and k % keep_every == 0:
            trajectory.append(phi)
        g, value = step(phi, batch)
        losses.append(value)
        if lam is not None:
            # gradient of the proximal term λ/2 ‖φ − θ‖²
            g = pt.axpy(lam, pt.sub(phi, theta), g)
        phi = pt.axpy(-inner_lr, g, phi)
    if losses:
        pre = losses[0]
        inner_losses = torch.stack(losses)
    else:
        pre = loss(theta, batch)
        inner_losses = pre.new_zeros((0,))
    return InnerResult(phi, pre, inner_losses, trajectory)
