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
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap
from torch.utils import _pytree as torch_pytree

from .. import _pytree as pt
from .. import _rates
from .._hvp import Loss, hvp
from .._inner import InnerLoop
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

    def per_task(self, loss: Loss, theta: Params, train: Any, val: Any, loop: InnerLoop,
                 hvp_mode: str, hyper: dict[str, Any] | None = None,
                 weights: tuple[float, ...] | None = None) -> TaskOutput:
        """Autograd through the loop: gᵢ = ∇_θ F and, with meta-parameters in ``hyper``,
        ∇_hyper F; F = L_val(φ), or Σₖ wₖ L_val(θ⁽ᵏ⁾) over k = 1 … K with ``weights``."""

        def objective(theta: Params, hyper: dict[str, Any]):
            inner = loop.run(loss, theta, train, keep_every=1 if weights else 0,
                             hyper=hyper or None)
            post = loss(inner.phi, val)
            extra = {}
            value = post
            if weights:  # MAML++'s multi-step loss: the val loss after every step, weighted
                step_losses = torch.stack([loss(p, val) for p in (inner.trajectory or [])[1:]]
                                          + [post])
                value = (step_losses * torch.tensor(weights, dtype=post.dtype,
                                                    device=post.device)).sum()
                extra = {"step_val_losses": step_losses}
            return value, (inner.pre_update_loss, post, inner.inner_losses, inner.phi, extra)

        if hyper:
            (g, hyper_grad), aux = grad(objective, argnums=(0, 1), has_aux=True)(theta, hyper)
        else:
            g, aux = grad(lambda t: objective(t, {}), has_aux=True)(theta)
            hyper_grad = {}
        pre, post, inner_losses, phi, extra = aux
        return TaskOutput(g, pre, post, {"inner_losses": inner_losses, **extra}, phi,
                          hyper_grad)


    def batched(self, loss: Loss, theta: Params, train: Any, val: Any, loop: InnerLoop,
                hyper: dict[str, Any], weights: tuple[float, ...] | None, dims: tuple[Any, Any],
                final_loss: bool) -> tuple[Params, dict[str, Any], dict[str, Tensor]]:
        """:meth:`per_task` for every task at once by reverse mode on the task-batched
        parameters (``metagrad._batched``): (mean gᵢ, mean meta-parameter gradients,
        per-task diagnostics), with L_tr(φ) per task as ``final_inner_loss`` when
        ``final_loss``. gᵢ is the gradient with respect to task i's copy of θ of the sum
        over tasks of the objectives, which is task i's own objective's."""
        from .. import _batched

        train_dims, val_dims = dims
        num_tasks = next(int(x.shape[0]) for x in torch_pytree.tree_leaves(train)
                         if isinstance(x, Tensor))
        flat_hyper, spec = torch_pytree.tree_flatten(hyper)
        with torch.enable_grad():
            start = _batched.leaves(theta, num_tasks)
            live = [h.detach().requires_grad_(True) for h in flat_hyper]
            inner = loop.run_batched(loss, theta, train, train_dims, start=start,
                                     hyper=torch_pytree.tree_unflatten(live, spec),
                                     keep_every=1 if weights else 0)
            post = _batched.values(loss, inner.phi, val, val_dims)
            objective, extra = post, {}
            if weights:  # MAML++'s multi-step loss: the val loss after every step, weighted
                step_losses = torch.stack(
                    [_batched.values(loss, p, val, val_dims) for p in (inner.trajectory or [])[1:]]
                    + [post], dim=1)
                objective = (step_losses * torch.tensor(weights, dtype=post.dtype,
                                                        device=post.device)).sum(1)
                extra = {"step_val_losses": step_losses.detach()}
            found = _batched.grads(objective.sum(), [*start.values(), *live])
        g = dict(zip(start, found[:len(start)]))
        hyper_grad = torch_pytree.tree_unflatten([h / num_tasks for h in found[len(start):]],
                                                 spec)
        diag = _batched.diagnostics({"inner_losses": inner.inner_losses, **extra},
                                    inner.pre_update_loss, post, g,
                                    *((loss, inner.phi, train, train_dims) if final_loss else ()))
        return pt.mean0(g), hyper_grad, diag


@dataclass(frozen=True)
class Trajectory:
    """The reverse sweep with Hessian-vector products over stored iterates; with
    ``checkpoint=c``, every c-th iterate stored and the segments recomputed.

    Parameters
    ----------
    checkpoint : int or None
        c ≥ 1: keep every c-th iterate and recompute the rest (None: keep every one).
    """

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

    def per_task(self, loss: Loss, theta: Params, train: Any, val: Any, loop: InnerLoop,
                 hvp_mode: str) -> TaskOutput:
        every = self.checkpoint or 1
        steps, inner_lr = loop.steps, _rates.number(loop.inner_lr)  # checked by MAML
        inner = loop.run(loss, theta, train, keep_every=every)
        v, post = grad_and_value(loss)(inner.phi, val)
        stored = inner.trajectory or []
        for index in reversed(range(len(stored))):
            start = index * every
            length = min(every, steps - start)
            if length == 1:
                segment = [stored[index]]
            else:  # recompute θ⁽ˢᵗᵃʳᵗ⁾ … θ⁽ˢᵗᵃʳᵗ⁺ˡᵉⁿᵍᵗʰ⁻¹⁾ from the stored checkpoint
                run = replace(loop, steps=length - 1).run(loss, stored[index], train,
                                                          keep_every=1)
                segment = (run.trajectory or []) + [run.phi]
            for point in reversed(segment):
                v = pt.axpy(-inner_lr, hvp(loss, point, train, v, hvp_mode), v)
        return TaskOutput(v, inner.pre_update_loss, post, {"inner_losses": inner.inner_losses},
                          inner.phi)


def sweep_step(loss: Loss, train: Any, point: Params, v: Params, inner_lr: float,
               hvp_mode: str) -> Params:
    """One step of the reverse sweep for every task at once: v ← v − αH(θ⁽ᵏ⁾)v, the
    iterates ``point`` and ``v`` stacked over tasks."""

    def one(p, b, w):
        return pt.axpy(-inner_lr, hvp(loss, p, b, w, hvp_mode), w)

    return vmap(one)(point, train, v)


def sweep_scanned(loss: Loss, train: Any, trajectory: Params, v: Params, inner_lr: float,
                  hvp_mode: str) -> Params:
    """The reverse sweep v ← v − αH(θ⁽ᵏ⁾)v, k = K−1 … 0, over the stored iterates of every
    task at once (``trajectory``: leaves ``(K, T, …)``, ``v``: ``(T, …)``), as one torch
    ``scan`` of :func:`sweep_step` whose body is traced once: the compiled form of
    :class:`Trajectory`'s sweep."""
    from torch._higher_order_ops.scan import scan

    def back(u, point):
        new = sweep_step(loss, train, point, u, inner_lr, hvp_mode)
        return new, torch.zeros((), device=next(iter(u.values())).device)

    v, _ = scan(back, v, trajectory, reverse=True)
    return v


BACKWARD_MODES: dict[str, type[Unrolled] | type[Trajectory]] = {
    Unrolled.name: Unrolled, Trajectory.name: Trajectory}
