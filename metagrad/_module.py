"""Bridges between ``nn.Module`` and metagrad's functional ``loss(params, batch)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


def module_loss(module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor]):
    """Turn ``module`` and ``criterion(prediction, target)`` into ``loss(params, batch)``.

    ``batch`` is one task's ``(x, y)``; the module runs with ``params`` in place
    of its own parameters (``torch.func.functional_call``), its buffers as they are.
    """

    def loss(params: Mapping[str, Tensor], batch: Any) -> Tensor:
        x, y = batch
        return criterion(functional_call(module, dict(params), (x,)), y)

    return loss


def params_of(module: nn.Module) -> dict[str, Tensor]:
    """``dict(module.named_parameters())`` of the trainable parameters."""
    return {k: v for k, v in module.named_parameters() if v.requires_grad}


def set_grads(module: nn.Module, grad: Mapping[str, Tensor]) -> None:
    """Write a meta-gradient into ``p.grad`` so any ``torch.optim`` optimizer can step.

    Overwrites (does not accumulate); every trainable parameter must have an entry.
    """
    named = params_of(module)
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
