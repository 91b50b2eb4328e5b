"""Per-task gradients of task-batched parameters with one ``vmap``-ed forward pass and one
call of ``torch.autograd.grad``: the eager methods' fast path.

With φ stacked over tasks (leading dim T) and the task losses Lᵢ(φᵢ) computed together by
``vmap(loss)`` (the forward pass only), the gradient of Σᵢ Lᵢ with respect to the stacked φ
is the stack of the per-task gradients ∇Lᵢ(φᵢ), since Lᵢ depends on φᵢ alone. This is the
number ``vmap(grad(loss))`` gives, computed by plain reverse mode on the batched graph
instead of by ``torch.func``'s nested transforms: every backward operation runs once on
the batched tensors rather than through a ``grad`` and a ``vmap`` layer of the dispatcher,
and ``torch._dynamo``, which ``torch.func.grad`` imports on its first call (seconds), is
never imported. With ``create_graph=True`` the gradients are themselves differentiable,
which is how MAML differentiates through its inner loop (Finn et al. 2017, eq. (1)-(2)).

``torch.compile`` does not trace ``torch.autograd.grad``, so the compiled path keeps the
``torch.func`` form (``Method.batched``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from ._hvp import Loss
from ._pytree import Params


def task_dims(batch: Any) -> Any:
    """``vmap``'s ``in_dims`` for one split: 0 for tensors (the task dim), None otherwise."""
    from torch.utils import _pytree as torch_pytree

    return torch_pytree.tree_map(lambda x: 0 if isinstance(x, Tensor) else None, batch)


def values(loss: Loss, phi: Mapping[str, Tensor], batch: Any, dims: Any,
           batched: Sequence[str] | None = None) -> Tensor:
    """Lᵢ(φᵢ) for every task, shape (T,): ``loss`` under ``vmap`` over the task dim of the
    names in ``batched`` (default: every parameter) and of the batch's tensors; random
    operations draw independently per task, as in a loop over tasks."""
    names = set(phi) if batched is None else set(batched)
    param_dims = {k: (0 if k in names else None) for k in phi}
    return vmap(loss, in_dims=(param_dims, dims), randomness="different")(dict(phi), batch)


def grads(total: Tensor, inputs: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    """∂ total / ∂ inputs, a zero tensor where ``total`` does not depend on an input."""
    if not total.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    found = torch.autograd.grad(total, list(inputs), create_graph=create_graph,
                                allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, found)]


def stacked(theta: Params, num_tasks: int, names: Sequence[str] | None = None) -> Params:
    """θ repeated over a leading task dim (views, no copy) for ``names`` (default: all);
    the other entries as they are."""
    keep = set(theta) if names is None else set(names)
    return {k: (v.expand(num_tasks, *v.shape) if k in keep else v) for k, v in theta.items()}


def leaves(theta: Params, num_tasks: int) -> Params:
    """Per-task copies of θ, stacked, each a leaf that requires grad: the inputs whose
    gradient is every task's meta-gradient gᵢ."""
    return {k: v.detach().expand(num_tasks, *v.shape).clone().requires_grad_(True)
            for k, v in theta.items()}


def norm_per_task(g: Params, at_least: torch.dtype = torch.float64) -> Tensor:
    """The Euclidean norm of each task's slice of the stacked gradients, shape (T,),
    accumulated in at least ``at_least`` (as ``metagrad._pytree.norm`` per task)."""
    first = next(iter(g.values()))
    acc = torch.promote_types(first.dtype, at_least)
    parts = [torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1, dtype=acc)
             for v in g.values()]
    return torch.linalg.vector_norm(torch.stack(parts), dim=0)


def diagnostics(own: dict[str, Tensor], pre: Tensor, post: Tensor, g: Params,
                loss: Loss | None = None, phi: Params | None = None, train: Any = None,
                dims: Any = None) -> dict[str, Tensor]:
    """A batched call's per-task diagnostics, as ``Method._task_result`` assembles them:
    the method's own, the pre- and post-update losses, ‖gᵢ‖ (float64) and, when ``loss``
    is given (the checks are on), L_tr(φ) per task as ``final_inner_loss``."""
    diag = {**own, "pre_update_loss": pre.detach(), "post_update_loss": post.detach(),
            "grad_norm": norm_per_task(g)}
    if loss is not None:
        assert phi is not None
        with torch.no_grad():
            diag["final_inner_loss"] = values(loss, {k: v.detach() for k, v in phi.items()},
                                              train, dims)
    return diag
