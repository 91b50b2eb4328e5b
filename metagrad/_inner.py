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

One step is :func:`gd_step`; :func:`adapt` repeats it. The compiled path
(``metagrad.compiled``, ``loop="scan"``) runs the same step as the body of a torch
``scan`` loop, batched over tasks, and hands the result to the method as a
:class:`KnownInnerLoop`, so that the method's remaining per-task code runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value

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


def gd_step(loss: Loss, theta: Params, phi: Params, batch: Any, inner_lr: float,
            lam: float | None = None) -> tuple[Params, Tensor, Params]:
    """One step from φ: ``(φ − α∇L(φ), L(φ), ∇L(φ))``, or with ``lam`` the proximal step
    ``φ − α(∇L(φ) + λ(φ − θ))`` first, L the loss on ``batch``."""
    g, value = grad_and_value(loss)(phi, batch)
    if lam is None:
        return {k: torch.add(phi[k], g[k], alpha=-inner_lr) for k in phi}, value, g
    # φ − αλ(φ − θ) − α∇L = lerp(φ, θ, αλ) − α∇L: two fused passes instead of five.
    shrink = inner_lr * lam
    return {k: torch.add(torch.lerp(phi[k], theta[k], shrink), g[k], alpha=-inner_lr)
            for k in phi}, value, g


@dataclass(frozen=True)
class KnownInnerLoop:
    """A task loss whose inner loop has already been run.

    Called, it is ``loss(params, batch)``; :func:`adapt` given one returns ``result``
    instead of running the loop again (after checking that the loop asked for is the one
    that was run). The compiled path uses it to run the K inner steps as one ``scan``
    loop whose body is traced once, instead of tracing K copies of the step.
    """

    loss: Loss
    result: InnerResult
    steps: int
    inner_lr: float
    lam: float | None

    def __call__(self, params: Params, batch: Any) -> Tensor:
        return self.loss(params, batch)


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
    if isinstance(loss, KnownInnerLoop):
        if (steps, inner_lr, lam, keep_every) != (loss.steps, loss.inner_lr, loss.lam, 0):
            raise ValueError(
                f"the inner loop was run with steps={loss.steps}, inner_lr={loss.inner_lr}, "
                f"lam={loss.lam}; asked for steps={steps}, inner_lr={inner_lr}, lam={lam}, "
                f"keep_every={keep_every}")
        return loss.result
    phi = theta
    losses: list[Tensor] = []
    trajectory: list[Params] | None = [] if keep_every > 0 else None
    for k in range(steps):
        if trajectory is not None and k % keep_every == 0:
            trajectory.append(phi)
        phi, value, _ = gd_step(loss, theta, phi, batch, inner_lr, lam)
        losses.append(value)
    if losses:
        pre = losses[0]
        inner_losses = torch.stack(losses)
    else:
        pre = loss(theta, batch)
        inner_losses = pre.new_zeros((0,))
    return InnerResult(phi, pre, inner_losses, trajectory)
