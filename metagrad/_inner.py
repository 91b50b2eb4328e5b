"""The inner loop (task adaptation) as an object shared by every method.

An :class:`InnerLoop` is K steps of an update rule on the task's train loss, started at
θ, with step size α:

    φ⁽⁰⁾ = θ,   gₖ = ∇L_tr(φ⁽ᵏ⁾) [+ λ(φ⁽ᵏ⁾ − θ)],   φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α uₖ,   φ = φ⁽ᴷ⁾,

where uₖ is the rule's direction (plain gradient descent: uₖ = gₖ, Finn et al. 2017,
eq. (1)) and the bracketed term is present when the loop is *proximal*: gradient descent
on the iMAML inner problem ``min_φ L_tr(φ) + λ/2 ‖φ − θ‖²`` (Rajeswaran et al. 2019,
eq. (4)). The loop is a frozen dataclass, as the solvers are: its fields are its whole
configuration, and it owns everything about the inner loop that the rest of the library
asks for:

* :meth:`InnerLoop.run`, one task's loop (what the methods call, and what MAML
  differentiates through: called inside ``torch.func.grad`` with respect to θ the loop is
  differentiated exactly; called outside it is first order and keeps no graph);
* :meth:`InnerLoop.step`, one step, and :meth:`InnerLoop.scan`, all tasks' loops as one
  torch ``scan`` whose body is that step (what ``mg.compile`` compiles);
* :meth:`InnerLoop.check`, the numerical checks of the loop (non-descent explained by the
  step size and the curvature), and :meth:`InnerLoop.gradient_equivalents`, its cost.

The update rule is an object too (:class:`GD`, the default), with the shape of an optax
gradient transformation: ``init(θ) -> state`` and ``update(...) -> (φ, state)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils import _pytree as torch_pytree

from . import _pytree as pt
from ._hvp import Loss
from ._pytree import Params
from ._validate import non_negative_float, non_negative_int, positive_float, settle

State = tuple[Params, ...]
"""An update rule's per-task state: a tuple of parameter-shaped dicts (empty for GD)."""


@dataclass
class InnerResult:
    """One task's inner loop (or all tasks', batched, from :meth:`InnerLoop.scan`)."""

    phi: Params
    """Adapted parameters φ = θ⁽ᴷ⁾."""
    pre_update_loss: Tensor
    """L_tr(θ), the loss before adaptation."""
    inner_losses: Tensor
    """L_tr(θ⁽ᵏ⁾) for k = 0 … K−1 (shape ``(K,)``; empty for K = 0)."""
    trajectory: list[Params] | None = None
    """θ⁽⁰⁾, θ⁽ᶜ⁾, θ⁽²ᶜ⁾, … (k < K) when ``keep_every=c`` is asked for (memory-lean MAML)."""


@dataclass(frozen=True)
class GD:
    """Plain gradient descent: the direction is the gradient itself, uₖ = gₖ, and the rule
    keeps no state (Finn et al. 2017, eq. (1))."""

    name: ClassVar[str] = "gd"

    def init(self, theta: Params) -> State:
        """The rule's state at φ⁽⁰⁾ = θ: none."""
        return ()

    def update(self, phi: Params, g: Params, state: State, inner_lr: float, theta: Params,
               lam: float | None) -> tuple[Params, State]:
        """``φ − α∇L(φ)``, or with ``lam`` the proximal step ``φ − α(∇L(φ) + λ(φ − θ))``."""
        if lam is None:
            return {k: torch.add(phi[k], g[k], alpha=-inner_lr) for k in phi}, state
        # φ − αλ(φ − θ) − α∇L = lerp(φ, θ, αλ) − α∇L: two fused passes instead of five.
        shrink = inner_lr * lam
        return {k: torch.add(torch.lerp(phi[k], theta[k], shrink), g[k], alpha=-inner_lr)
                for k in phi}, state


@dataclass(frozen=True)
class InnerLoop:
    """K steps of an update rule on a task's train loss from θ (see the module docstring).

    Parameters
    ----------
    steps : int
        K ≥ 0, the number of inner steps.
    inner_lr : float
        α > 0, the inner step size.
    rule : GD
        The update rule (default: plain gradient descent).
    lam : float or None
        λ ≥ 0 of the proximal term λ/2‖φ − θ‖² (None: no proximal term).
    """

    steps: int
    inner_lr: float
    rule: GD = GD()
    lam: float | None = None

    def __post_init__(self) -> None:
        settle(self, "steps", non_negative_int)
        settle(self, "inner_lr", positive_float)
        if self.lam is not None:
            settle(self, "lam", non_negative_float)

    # -- the loop ----------------------------------------------------------------------------
    @property
    def proximal(self) -> bool:
        """Whether each step includes the pull λ(φ − θ) back to θ."""
        return self.lam is not None

    def init(self, theta: Params) -> State:
        """The update rule's state at φ⁽⁰⁾ = θ."""
        return self.rule.init(theta)

    def step(self, loss: Loss, theta: Params, phi: Params, state: State,
             batch: Any) -> tuple[Params, State, Tensor]:
        """One step from φ: ``(φ⁽ᵏ⁺¹⁾, the rule's new state, L(φ⁽ᵏ⁾))``, L the loss on ``batch``."""
        g, value = grad_and_value(loss)(phi, batch)
        phi, state = self.rule.update(phi, g, state, self.inner_lr, theta, self.lam)
        return phi, state, value

    def run(self, loss: Loss, theta: Params, batch: Any, keep_every: int = 0) -> InnerResult:
        """One task's loop from θ. ``keep_every=c > 0`` keeps every c-th iterate θ⁽ᵏ⁾, k < K,
        as ``trajectory``."""
        phi, state = theta, self.init(theta)
        losses: list[Tensor] = []
        trajectory: list[Params] | None = [] if keep_every > 0 else None
        for k in range(self.steps):
            if trajectory is not None and k % keep_every == 0:
                trajectory.append(phi)
            phi, state, value = self.step(loss, theta, phi, state, batch)
            losses.append(value)
        if losses:
            pre = losses[0]
            inner_losses = torch.stack(losses)
        else:
            pre = loss(theta, batch)
            inner_losses = pre.new_zeros((0,))
        return InnerResult(phi, pre, inner_losses, trajectory)

    def scan(self, loss: Loss, theta: Params, train: Any,
             keep_trajectory: bool = False) -> tuple[InnerResult, Params | None]:
        """Every task's loop at once, as one torch ``scan`` over the K steps whose body (one
        step, ``vmap`` over tasks) is traced once: what ``mg.compile`` compiles does not grow
        with K. Returns the batched result (leading task dim T) and, with
        ``keep_trajectory``, the iterates θ⁽ᵏ⁾, k < K, stacked as ``(K, T, …)``."""
        from torch._higher_order_ops.scan import scan

        num_tasks = torch_pytree.tree_leaves(train)[0].shape[0]
        phi0 = {k: v.expand(num_tasks, *v.shape).clone() for k, v in theta.items()}
        state0 = self.init(phi0)  # zeros shaped like φ carry the task dim too

        def body(carry, _):
            phi, state = carry

            def one(p, s, b):
                return self.step(loss, theta, p, s, b)

            new, new_state, value = vmap(one)(phi, state, train)
            # scan's outputs may not alias its carry: the stored iterate is a copy.
            return (new, new_state), ((value, pt.clone(phi)) if keep_trajectory else value)

        ticks = torch.zeros(self.steps, device=next(iter(phi0.values())).device)
        (phi, _), outputs = scan(body, (phi0, state0), ticks)
        values, trajectory = outputs if keep_trajectory else (outputs, None)
        inner_losses = values.transpose(0, 1)
        return InnerResult(phi, inner_losses[:, 0], inner_losses), trajectory

    # -- what the rest of the library asks ---------------------------------------------------
    def gradient_equivalents(self) -> float:
        """Cost per task: one gradient of the train loss per step."""
        return float(self.steps)

    def check(self, diag: dict[str, Tensor], loss: Loss, theta: Params, tasks: Any,
              hvp_mode: str, batching: str = "vmap") -> list:
        """The loop's numerical checks on a call's per-task diagnostics: a rise of the inner
        loss, explained by the step size and the curvature (``metagrad.diagnose``)."""
        from .diagnose import check_inner_loop

        return check_inner_loop(diag, loss, theta, tasks, self.inner_lr, self.lam, hvp_mode,
                                batching)


def adapt(
    loss: Loss,
    theta: Params,
    batch: Any,
    steps: int,
    inner_lr: float,
    lam: float | None = None,
    keep_every: int = 0,
) -> InnerResult:
    """Run ``steps`` steps of (proximal, if ``lam`` is given) gradient descent from θ:
    ``InnerLoop(steps, inner_lr, lam=lam).run(loss, theta, batch, keep_every)``.

    Parameters
    ----------
    loss : callable
        ``loss(params, batch) -> 0-dim tensor``.
    theta : dict[str, Tensor]
        The starting point θ.
    batch
        One task's train batch.
    steps : int
        K ≥ 0.
    inner_lr : float
        α > 0.
    lam : float or None
        λ of the proximal inner problem L(φ) + λ/2‖φ − θ‖² (None: plain gradient descent).
    keep_every : int
        c > 0 keeps every c-th iterate θ⁽ᵏ⁾, k < K, as ``trajectory``.

    Returns
    -------
    InnerResult
        φ, L(θ), the inner losses and the kept iterates.
    """
    keep_every = non_negative_int("keep_every", keep_every)
    return InnerLoop(steps, inner_lr, lam=lam).run(loss, theta, batch, keep_every)
