"""Bridges between ``nn.Module`` and metagrad's functional ``loss(params, batch)``.

Batch normalisation as MAML uses it (Finn et al. 2017, and their reference code):
in training mode every forward pass normalises with the statistics of the batch it
sees, i.e. of one task's support or query set ("transductive"), and the running
statistics are not updated inside a meta-gradient (they would mix tasks, and an
in-place update of a shared buffer cannot be batched over tasks). ``module_loss``
does exactly that for every ``BatchNorm`` layer in training mode; in eval mode the
layers use their running statistics, unchanged. To keep running statistics for
evaluation, update them outside metagrad: run the model in training mode, under
``torch.no_grad()``, with the adapted parameters and a task's data
(``functional_call(model, phi, (x,))``).

Dropout in training mode draws an independent mask per task and per call (the
batched call runs ``vmap`` with ``randomness="different"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, the module's ``BatchNorm`` layers in training mode normalise with
    batch statistics and leave their running statistics (and ``num_batches_tracked``)
    untouched; their settings are restored afterwards.

    Parameters
    ----------
    module : torch.nn.Module
        The network whose ``BatchNorm`` layers are switched for the block.
    """
    layers = [m for m in module.modules()
              if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


def module_loss(module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor]):
    """Turn ``module`` and ``criterion(prediction, target)`` into ``loss(params, batch)``.

    ``loss(params, batch) = criterion(module(x; params), y)`` for one task's batch
    ``(x, y)``: the module runs with ``params`` in place of its own parameters
    (``torch.func.functional_call``) and its buffers as they are, except that batch
    normalisation in training mode uses each batch's own statistics without updating the
    running ones (see the module docstring).

    Parameters
    ----------
    module : torch.nn.Module
        The network; its own parameters are not used by ``loss`` (pass them, or adapted
        copies, as ``params``).
    criterion : Callable[[Tensor, Tensor], Tensor]
        ``criterion(prediction, target)``, returning a 0-dim loss, e.g.
        ``torch.nn.functional.mse_loss`` or ``cross_entropy``.

    Returns
    -------
    Callable[[dict[str, Tensor], Any], Tensor]
        ``loss(params, batch)``, the functional loss every method takes. On its first
        call with a set of names it raises ``ValueError`` for a name the module does not
        have (``functional_call`` would silently ignore it).
    """

    checked: set[frozenset[str]] = set()
    pure: set[frozenset[str]] = set()

    def check_buffers(params: Mapping[str, Tensor], batch: Any) -> Tensor:
        # One forward pass that watches the module's own buffers: a module that writes into
        # them in forward() (a counter, spectral_norm's power iteration in training mode)
        # cannot be batched over tasks. Whatever the pass wrote is put back, so that a
        # refused call leaves the caller's module as it was.
        x, y = batch
        buffers = dict(module.named_buffers())
        before = {n: b.detach().clone() for n, b in buffers.items()}
        versions = {n: b._version for n, b in buffers.items()}  # counts in-place writes
        try:
            with batch_statistics(module):
                value = criterion(functional_call(module, dict(params), (x,)), y)
        finally:
            after = dict(module.named_buffers())
            written = [n for n, b in buffers.items()
                       if after.get(n) is not b or b._version != versions[n]]
            with torch.no_grad():
                for n in written:
                    if after.get(n) is not buffers[n]:  # replaced: put the original back
                        owner, _, attr = n.rpartition(".")
                        module.get_submodule(owner).register_buffer(attr, buffers[n])
                    buffers[n].copy_(before[n])
        if written:
            hint = (" (spectral_norm updates its power-iteration vectors _u and _v in "
                    "training mode: call .eval() on those layers to keep them fixed)"
                    if any(n.endswith(("._u", "._v")) for n in written) else "")
            raise ValueError(
                f"{type(module).__name__} writes into its buffer(s) {written[:5]} in forward()"
                f"{hint}; a meta-gradient needs the loss to be a pure function of the "
                "parameters (the same buffer would be written by every task). Keep such "
                "state out of forward(), or pass the buffers in params. The module's "
                "buffers were restored.")
        pure.add(frozenset(params))
        return value

    def check_names(params: Mapping[str, Tensor]) -> None:
        # functional_call ignores a name the module does not have: a typo would leave the
        # module's own tensor in place as a constant and give that name a zero gradient.
        names = frozenset(params)
        if names in checked:
            return
        known = {n for n, _ in module.named_parameters(remove_duplicate=False)}
        known |= {n for n, _ in module.named_buffers(remove_duplicate=False)}
        unknown = sorted(names - known)
        if unknown:
            raise ValueError(
                f"params has {len(unknown)} name(s) that {type(module).__name__} does not "
                f"have: {unknown[:5]}; its parameters are named {sorted(known)[:8]} (use "
                "mg.params_of(model), or keys of this model's named_parameters())")
        checked.add(names)

    def loss(params: Mapping[str, Tensor], batch: Any) -> Tensor:
        if not torch.compiler.is_compiling():  # checked on the eager first call
            check_names(params)
            if frozenset(params) not in pure and _plain_tensors(params, batch):
                return check_buffers(params, batch)
        x, y = batch
        with batch_statistics(module):
            return criterion(functional_call(module, dict(params), (x,)), y)

    return loss


def _plain_tensors(params: Mapping[str, Tensor], batch: Any) -> bool:
    """Whether the tensors are ordinary ones, not inside a ``torch.func`` transform (where
    comparing values is not possible): the buffer check runs on an eager call."""
    from torch._C._functorch import is_batchedtensor, is_gradtrackingtensor

    tensors = [*params.values(), *[x for x in batch if isinstance(x, Tensor)]]
    return not any(is_batchedtensor(t) or is_gradtrackingtensor(t) for t in tensors)


def params_of(module: nn.Module) -> dict[str, Tensor]:
    """The module's trainable parameters by name: the ``params`` every method takes.

    Parameters
    ----------
    module : torch.nn.Module
        The network.

    Returns
    -------
    dict[str, Tensor]
        ``dict(module.named_parameters())`` restricted to ``requires_grad`` tensors (the
        tensors themselves, not copies: a ``torch.optim`` step on the module moves them).
    """
    return {k: v for k, v in module.named_parameters() if v.requires_grad}


def set_grads(module: nn.Module | Mapping[str, Tensor], grad: Mapping[str, Tensor]) -> None:
    """Write a meta-gradient into ``p.grad`` so any ``torch.optim`` optimizer can step.

    Overwrites (does not accumulate), cast to each tensor's dtype and device.

    Parameters
    ----------
    module : torch.nn.Module or Mapping[str, Tensor]
        The network whose trainable parameters (:func:`params_of`) receive the gradient,
        or a dict of tensors such as learned inner step sizes
        (``mg.set_grads(rates, out.hyper_grad["inner_lr"])``).
    grad : Mapping[str, Tensor]
        A gradient by name, e.g. ``out.grad`` of a method's result; it must have an entry
        of the tensor's shape for every one of them (a ``KeyError`` names the missing
        ones, a ``ValueError`` a shape that differs).
    """
    named = params_of(module) if isinstance(module, nn.Module) else dict(module)
    missing = sorted(set(named) - set(grad))
    if missing:
        raise KeyError(f"the gradient has no entry for parameters {missing}")
    with torch.no_grad():
        for k, p in named.items():
            g = grad[k]
            if g.shape != p.shape:
                raise ValueError(
                    f"grad[{k!r}] has shape {tuple(g.shape)}, parameter {tuple(p.shape)}")
            p.grad = g.detach().to(dtype=p.dtype, device=p.device).clone()
