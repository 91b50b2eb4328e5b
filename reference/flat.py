"""Parameter dicts as one flat float vector (the oracle's only parameter format)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

FlatLoss = Callable[[Tensor, Any], Tensor]


def flatten(params: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the leaves in key order into one vector."""
    return torch.cat([v.detach().reshape(-1) for v in params.values()])


def unflatten(vec: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten`; shapes (and key order) are taken from ``like``."""
    out, start = {}, 0
    for key, value in like.items():
        n = value.numel()
        out[key] = vec[start : start + n].reshape(value.shape)
        start += n
    if start != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, the parameters {start}")
    return out


def flat_loss(loss: Callable[[dict[str, Tensor], Any], Tensor],
              like: Mapping[str, Tensor]) -> FlatLoss:
    """``f(theta, batch) = loss(unflatten(theta), batch)`` for a loss on parameter dicts."""
    shapes = {k: v.detach() for k, v in like.items()}

    def f(theta: Tensor, batch: Any) -> Tensor:
        return loss(unflatten(theta, shapes), batch)

    return f
