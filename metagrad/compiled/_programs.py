"""The programs ``mg.compile`` hands to ``torch.compile``: the method's batched computation
with its inner loop unrolled (K copies of the step) or scanned (one ``scan`` whose body is
the step, traced once), plus the two values every call needs from inside the graph (all
task data finite, the task means of the losses)."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as torch_pytree

from ..methods._base import Method


def all_finite(train: Any, val: Any, theta: Any = None) -> Tensor:
    """One 0-dim bool: every floating-point task tensor and parameter is finite (computed in
    a graph: the values are what can change between calls of one signature)."""
    flags = [torch.isfinite(x).all() for x in torch_pytree.tree_leaves((train, val, theta))
             if isinstance(x, Tensor) and x.is_floating_point()]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)


def _means(diag: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The task means of the pre- and post-update losses (MetaGradient's two scalars)."""
    return diag["pre_update_loss"].mean(), diag["post_update_loss"].mean()


def own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own. torch.compile keeps its compiled entries, and
    counts recompilations against ``recompile_limit``, per code object: closures made by
    one factory share one, so without this every signature of every compiled method would
    count against one limit of 8 (and the 9th would fail)."""
    assert isinstance(fn, types.FunctionType)
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


@functools.cache
def scan_available() -> bool:
    """torch's ``scan`` higher-order operator with ``reverse`` (a prototype in torch 2.13)."""
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError:
        return False
    return "reverse" in inspect.signature(scan).parameters


def unrolled(method: Method) -> Callable:
    """(loss, θ, train, val, hyper) ↦ (mean gᵢ, mean meta-parameter gradients, per-task
    diagnostics, all task data finite, the mean pre- and post-update losses), the batched
    computation as it runs eagerly."""

    def whole(loss, theta, train, val, hyper):
        grad, hyper_grad, diag = method.batched(loss)(theta, train, val, hyper)
        return grad, hyper_grad, diag, all_finite(train, val, theta), _means(diag)

    return whole


def scanned(method: Method) -> Callable:
    """The same, with the K inner steps as one torch ``scan`` over all tasks
    (:meth:`metagrad.InnerLoop.scan`) and the rest of each task's work after it
    (:meth:`metagrad.Method.batched_from_scan`: MAML's reverse sweep is a second ``scan``):
    what is compiled does not grow with K."""
    loop = method.inner_loop

    def run(loss, theta, train, val, hyper):
        inner, trajectory = loop.scan(loss, theta, train, method.scan_needs_trajectory)
        grad, hyper_grad, diag = method.batched_from_scan(loss, theta, train, val, inner,
                                                          trajectory)
        return grad, hyper_grad, diag, all_finite(train, val, theta), _means(diag)

    return run
