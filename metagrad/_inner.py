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

The update rule is an object too (``metagrad._rules``: :class:`GD`, the default,
``Momentum``, ``Adam``), with the shape of an optax gradient transformation:
``init(θ) -> state`` and ``update(...) -> (φ, state)``. The step sizes may be learned
tensors, per parameter tensor, per entry and per step, and may leave parameters out
(``metagrad._rates``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils import _pytree as torch_pytree

from . import _pytree as pt
from . import _rates
from ._hvp import Loss
from ._pytree import Params
from ._rates import Rates
from ._rules import GD, Adam, Momentum, State
from ._validate import non_negative_float, non_negative_int, settle

Rule = GD | Momentum | Adam
RULE_TYPES = (GD, Momentum, Adam)


@dataclass
class InnerResult:
    """One task's inner loop (or all tasks', batched, from :meth:`InnerLoop.scan`).

    Attributes
    ----------
    phi : dict of str to Tensor
        The adapted parameters φ = θ⁽ᴷ⁾.
    pre_update_loss : Tensor
        L_tr(θ), the loss before adaptation.
    inner_losses : Tensor
        L_tr(θ⁽ᵏ⁾) for k = 0 … K−1 (shape ``(K,)``; empty for K = 0).
    trajectory : list of dict or None
        θ⁽⁰⁾, θ⁽ᶜ⁾, θ⁽²ᶜ⁾, … (k < K) when ``keep_every=c`` is asked for (memory-lean MAML).
    states : list or None
        The update rule's state at the kept iterates, when asked for.
    """

    phi: Params
    pre_update_loss: Tensor
    inner_losses: Tensor
    trajectory: list[Params] | None = None
    states: list[State] | None = None


@dataclass(frozen=True)
class InnerLoop:
    """K steps of an update rule on a task's train loss from θ (see the module docstring).

    Parameters
    ----------
    steps : int
        K ≥ 0, the number of inner steps.
    inner_lr : float, Tensor or mapping of str to Tensor
        The step sizes: a positive number, a 0-dim tensor (learnable), or rate tensors per
        adapted parameter (per tensor, per entry, per step; a parameter left out is not
        adapted). See ``metagrad._rates``.
    rule : GD, Momentum or Adam
        The update rule (default: plain gradient descent).
    lam : float or None
        λ ≥ 0 of the proximal term λ/2‖φ − θ‖² (None: no proximal term).
    """

    steps: int
    inner_lr: float | Tensor | Rates
    rule: Rule = GD()
    lam: float | None = None

    def __post_init__(self) -> None:
        settle(self, "steps", non_negative_int)
        object.__setattr__(self, "inner_lr", _rates.normalise(self.inner_lr))
        if not isinstance(self.rule, RULE_TYPES):
            raise TypeError(f"inner must be an update rule (mg.GD(), mg.Momentum(...), "
                            f"mg.Adam(...)), got {self.rule!r:.80}")
        if self.lam is not None:
            settle(self, "lam", non_negative_float)

    # -- the loop ----------------------------------------------------------------------------
    @property
    def proximal(self) -> bool:
        """Whether each step includes the pull λ(φ − θ) back to θ."""
        return self.lam is not None

    def adapts_all(self, theta: Params) -> bool:
        """Whether every parameter of ``theta`` is adapted (no name left out of the rates)."""
        return len(_rates.adapted(self.inner_lr, theta)) == len(theta)

    def hyper(self) -> dict[str, Any]:
        """The loop's meta-parameters, by name: ``inner_lr`` when it is a tensor or a mapping of
        tensors, the rule's tensors (momentum's ``beta``) when given as tensors."""
        out: dict[str, Any] = {}
        if isinstance(self.inner_lr, (Tensor, Rates)):
            out["inner_lr"] = self.inner_lr
        return {**out, **self.rule.hyper()}

    def check_params(self, theta: Params) -> None:
        """The rates against the parameters they step (known names, shapes that fit)."""
        _rates.check(self.inner_lr, theta, self.steps)

    def init(self, theta: Params) -> State:
        """The update rule's state at φ⁽⁰⁾ = θ."""
        return self.rule.init(theta)

    def step(self, loss: Loss, theta: Params, phi: Params, state: State, batch: Any,
             k: Any = 0, hyper: dict[str, Any] | None = None,
             first_order: bool = False) -> tuple[Params, State, Tensor]:
        """Step k from φ: ``(φ⁽ᵏ⁺¹⁾, the rule's new state, L(φ⁽ᵏ⁾))``, L the loss on ``batch``.

        ``hyper`` replaces the loop's meta-parameters by the tensors given (those a
        derivative is taken with respect to); ``first_order`` treats the gradient as a
        constant (no derivative flows through it)."""
        hyper = hyper or {}
        rates = hyper.get("inner_lr", self.inner_lr)
        names = _rates.adapted(self.inner_lr, phi)
        if len(names) == len(phi):
            g, value = grad_and_value(loss)(phi, batch)
        else:  # only the adapted parameters' gradient is needed (and computed)
            def restricted(sub: Params) -> Tensor:
                return loss({n: sub.get(n, phi[n]) for n in phi}, batch)

            g, value = grad_and_value(restricted)({n: phi[n] for n in names})
        if first_order:
            g = pt.detach(g)
        rule_hyper = {n: v for n, v in hyper.items() if n != "inner_lr"}
        phi, state = self.rule.update(phi, g, state, _rates.at_step(rates, k, theta), k, theta,
                                      self.lam, rule_hyper)
        return phi, state, value

    def run(self, loss: Loss, theta: Params, batch: Any, keep_every: int = 0,
            hyper: dict[str, Any] | None = None, first_order: bool = False,
            keep_states: bool = False) -> InnerResult:
        """One task's loop from θ. ``keep_every=c > 0`` keeps every c-th iterate θ⁽ᵏ⁾, k < K,
        as ``trajectory`` (with ``keep_states``, the rule's state there too, as
        ``states``); ``hyper`` and ``first_order`` as in :meth:`step`."""
        phi, state = theta, self.init(theta)
        losses: list[Tensor] = []
        trajectory: list[Params] | None = [] if keep_every > 0 else None
        states: list[State] | None = [] if keep_every > 0 and keep_states else None
        for k in range(self.steps):
            if trajectory is not None and k % keep_every == 0:
                trajectory.append(phi)
                if states is not None:
                    states.append(state)
            phi, state, value = self.step(loss, theta, phi, state, batch, k, hyper, first_order)
            losses.append(value)
        if losses:
            pre = losses[0]
            inner_losses = torch.stack(losses)
        else:
            pre = loss(theta, batch)
            inner_losses = pre.new_zeros((0,))
        return InnerResult(phi, pre, inner_losses, trajectory, states)

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

        def body(carry, k):
            phi, state = carry

            def one(p, s, b):
                return self.step(loss, theta, p, s, b, k)

            new, new_state, value = vmap(one)(phi, state, train)
            # scan's outputs may not alias its carry: the stored iterate is a copy.
            return (new, new_state), ((value, pt.clone(phi)) if keep_trajectory else value)

        device = next(iter(phi0.values())).device
        (phi, _), outputs = scan(body, (phi0, state0), torch.arange(self.steps, device=device))
        values, trajectory = outputs if keep_trajectory else (outputs, None)
        inner_losses = values.transpose(0, 1)
        return InnerResult(phi, inner_losses[:, 0], inner_losses), trajectory

    def run_batched(self, loss: Loss, theta: Params, train: Any, dims: Any,
                    start: Params | None = None, hyper: dict[str, Any] | None = None,
                    keep_every: int = 0) -> InnerResult:
        """Every task's loop at once, eagerly, by reverse mode on the task-batched
        parameters (``metagrad._batched``): the numbers of :meth:`run` under ``vmap``.

        Without ``start`` the loop is a constant (first order: each step's gradient is
        taken and dropped, no graph is kept); with ``start``, per-task leaves of θ stacked
        over tasks (``metagrad._batched.leaves``), every step stays differentiable with
        respect to them and to the tensors in ``hyper`` (MAML). ``dims``: ``vmap``'s
        ``in_dims`` of the train batch. φ comes back stacked over tasks for every
        parameter; ``keep_every`` as in :meth:`run`."""
        from . import _batched

        num_tasks = _num_tasks(train)
        names = _rates.adapted(self.inner_lr, theta)
        differentiable = start is not None
        hyper = hyper or {}
        rates = hyper.get("inner_lr", self.inner_lr)
        rule_hyper = {n: v for n, v in hyper.items() if n != "inner_lr"}
        # The proximal term's θ: the differentiated per-task copies when there are any.
        base = start if start is not None else theta
        phi = dict(start) if start is not None else _batched.stacked(theta, num_tasks, names)
        stacked = list(phi) if differentiable else names
        state = self.rule.init({n: phi[n] for n in names})
        losses: list[Tensor] = []
        trajectory: list[Params] | None = [] if keep_every > 0 else None
        for k in range(self.steps):
            if trajectory is not None and k % keep_every == 0:
                trajectory.append(phi)
            if differentiable:
                value = _batched.values(loss, phi, train, dims, stacked)
                g = _batched.grads(value.sum(), [phi[n] for n in names], create_graph=True)
                phi, state = self.rule.update(phi, dict(zip(names, g)), state,
                                              _rates.at_step(rates, k, theta), k, base,
                                              self.lam, rule_hyper)
            else:
                with torch.enable_grad():
                    live = {**phi, **{n: phi[n].detach().requires_grad_(True) for n in names}}
                    value = _batched.values(loss, live, train, dims, stacked)
                    g = _batched.grads(value.sum(), [live[n] for n in names])
                with torch.no_grad():
                    phi, state = self.rule.update(phi, dict(zip(names, g)), state,
                                                  _rates.at_step(rates, k, theta), k, base,
                                                  self.lam, rule_hyper)
            losses.append(value.detach())
        if losses:
            inner_losses = torch.stack(losses, dim=1)
            pre = inner_losses[:, 0]
        else:
            with torch.no_grad():
                pre = _batched.values(loss, phi, train, dims, stacked)
            inner_losses = pre.new_zeros((num_tasks, 0))
        phi = _batched.stacked(phi, num_tasks, [n for n in phi if n not in stacked])
        return InnerResult(phi, pre, inner_losses, trajectory)

    # -- what the rest of the library asks ---------------------------------------------------
    def gradient_equivalents(self) -> float:
        """Cost per task: one gradient of the train loss per step."""
        return float(self.steps)

    def check(self, diag: dict[str, Tensor], loss: Loss, theta: Params, tasks: Any,
              hvp_mode: str, batching: str = "vmap", memo: dict[str, Any] | None = None
              ) -> list:
        """The loop's numerical checks on a call's per-task diagnostics: a rise of the inner
        loss, explained by the step size and the curvature (``metagrad.diagnose``; ``memo``
        keeps the explaining measurements across calls)."""
        from .diagnose import check_inner_loop

        return check_inner_loop(diag, loss, theta, tasks, _rates.largest(self.inner_lr),
                                self.lam, hvp_mode, batching, monotone=self.rule.monotone,
                                memo=memo)


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


def _num_tasks(batch: Any) -> int:
    """T, the size of the task dim of a batch's tensors (every tensor has one)."""
    for leaf in torch_pytree.tree_leaves(batch):
        if isinstance(leaf, Tensor):
            return int(leaf.shape[0])
    raise ValueError("the batch holds no tensor with a task dimension")
