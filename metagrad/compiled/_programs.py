"""The programs ``mg.compile`` hands to ``torch.compile``: the method's batched computation
with its inner loop unrolled (K copies of the step), scanned (one ``scan`` whose body is
the step, traced once) or stepwise (a Python loop over one compiled step, the rest compiled
in pieces), plus the two values every call needs from inside the graph (all task data
finite, the task means of the losses)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils import _pytree as torch_pytree

from .._inner import InnerResult
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


def stepwise(method: Method, compile_piece: Callable[[Callable], Callable]) -> Callable:
    """The same computation as :func:`scanned`, with the K inner steps as a Python loop over
    one compiled step (:meth:`metagrad.InnerLoop.step`, ``vmap`` over tasks), then the rest
    of each task's work compiled once more (:meth:`metagrad.Method.batched_from_scan`), or,
    for a method that sweeps back over the iterates (MAML), its sweep's start, step (called
    K times) and finish compiled one by one. Each piece is small, has no loop in it and is
    the same for every K, so it compiles in a fraction of the time of the whole and is kept
    by torch's on-disk caches for any K. ``compile_piece`` compiles one piece."""
    loop = method.inner_loop

    def step(loss, theta, phi, state, train, k):
        def one(p, s, b):
            return loop.step(loss, theta, p, s, b, k)

        return vmap(one)(phi, state, train)

    step_c = compile_piece(step)
    if method.scan_needs_trajectory:
        def start(loss, phi, train, val):
            v, post = method.sweep_start(loss, phi, val)
            return v, post, all_finite(train, val)

        def back(loss, point, train, v):
            return method.sweep_step(loss, point, train, v)

        def finish(loss, train, phi, losses, v, post):
            inner = InnerResult(phi, losses[:, 0], losses)
            grad, hyper_grad, diag = method.sweep_finish(loss, train, inner, v, post)
            return grad, hyper_grad, diag, _means(diag)

        start_c, back_c, finish_c = (compile_piece(f) for f in (start, back, finish))
    else:
        def rest(loss, theta, train, val, phi, losses):
            inner = InnerResult(phi, losses[:, 0], losses)
            grad, hyper_grad, diag = method.batched_from_scan(loss, theta, train, val, inner,
                                                              None)
            return grad, hyper_grad, diag, all_finite(train, val), _means(diag)

        rest_c = compile_piece(rest)

    compiled_once: list[bool] = []

    def repeats():
        # A piece's guards are checked on its first call of every meta-gradient; its
        # repeats within the call get inputs of the same kind (the previous call's
        # outputs) under the same global and loss state, so their guards would pass.
        # Checking them (about 0.1-0.2 ms a call here) would double the cost of a small
        # step. Not before the first meta-gradient has run: its repeats may still compile.
        return _unguarded() if compiled_once else contextlib.nullcontext()

    def run(loss, theta, train, val, hyper):
        num_tasks = torch_pytree.tree_leaves(train)[0].shape[0]
        phi = {k: v.expand(num_tasks, *v.shape).clone() for k, v in theta.items()}
        state = loop.init(phi)  # zeros shaped like φ carry the task dim too
        device = next(iter(phi.values())).device
        counter = torch.arange(loop.steps, device=device)
        trajectory = [phi]
        phi, state, value = step_c(loss, theta, phi, state, train, counter[0])
        values = [value]
        with repeats():
            for k in range(1, loop.steps):
                trajectory.append(phi)
                phi, state, value = step_c(loss, theta, phi, state, train, counter[k])
                values.append(value)
        losses = torch.stack(values, dim=1)
        if not method.scan_needs_trajectory:
            out = rest_c(loss, theta, train, val, phi, losses)
        else:
            v, post, finite = start_c(loss, phi, train, val)
            v = back_c(loss, trajectory[-1], train, v)
            with repeats():
                for point in reversed(trajectory[:-1]):
                    v = back_c(loss, point, train, v)
            grad, hyper_grad, diag, means = finish_c(loss, train, phi, losses, v, post)
            out = grad, hyper_grad, diag, finite, means
        compiled_once.append(True)
        del compiled_once[1:]
        return out

    return run


def _unguarded() -> contextlib.AbstractContextManager:
    """torch.compile's guards skipped (only those that tell cached graphs apart checked),
    where this torch can (``torch.compiler.set_stance``, torch ≥ 2.7)."""
    try:
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
    except (AttributeError, TypeError):
        return contextlib.nullcontext()
