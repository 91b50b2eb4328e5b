"""Arithmetic on parameter pytrees: ``dict[str, Tensor]`` treated as one vector.

Every solver and method in metagrad works on these dicts rather than on a
flattened vector, so that ``torch.func`` transforms (``vmap``, ``grad``,
``jvp``) see the original parameter shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

Params = dict[str, Tensor]


def tree_map(fn: Callable[..., Tensor], *trees: Mapping[str, Tensor]) -> Params:
    """Apply ``fn`` leaf-wise over dicts that share their keys."""
    first = trees[0]
    return {k: fn(*(t[k] for t in trees)) for k in first}


def add(a: Params, b: Params) -> Params:
    return {k: a[k] + b[k] for k in a}


def sub(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def scale(c: float | Tensor, a: Params) -> Params:
    return {k: c * a[k] for k in a}


def axpy(c: float | Tensor, x: Params, y: Params) -> Params:
    """``y + c x``."""
    return {k: y[k] + c * x[k] for k in y}


def vdot(a: Params, b: Params) -> Tensor:
    """Euclidean inner product ``<a, b>`` of the flattened dicts (a 0-dim tensor)."""
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def norm(a: Params) -> Tensor:
    """Euclidean norm of the flattened dict, accumulated in at least float32: squares of
    float16 entries overflow at 256, so a half-precision meta-gradient with finite entries
    would otherwise read as infinite. The result has that accumulation dtype."""
    first = next(iter(a.values()))
    acc = torch.promote_types(first.dtype, torch.float32)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(v, dtype=acc) for v in a.values()]))


def zeros_like(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def detach(a: Mapping[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in a.items()}


def mean0(a: Params) -> Params:
    """Mean over the leading (task) dimension of every leaf."""
    return {k: v.mean(0) for k, v in a.items()}


def flatten(a: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the leaves (in key order) into one vector."""
    return torch.cat([v.reshape(-1) for v in a.values()])


def unflatten(vec: Tensor, like: Mapping[str, Tensor]) -> Params:
    """Inverse of :func:`flatten`, with shapes taken from ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vec[i : i + n].reshape(v.shape)
        i += n
    return out


def numel(a: Mapping[str, Tensor]) -> int:
    return sum(v.numel() for v in a.values())
