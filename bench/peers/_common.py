"""Pieces the per-task adapters share: the task loop, a plain conjugate-gradient loop on
lists of tensors (for libraries without one), and the proximal inner step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Vec = list[Tensor]


def dot(a: Vec, b: Vec) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]


def cg(matvec: Callable[[Vec], Vec], b: Vec, iters: int) -> Vec:
    """``iters`` steps of plain CG from x = 0 on A x = b (Hestenes & Stiefel 1952)."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = dot(r, r)
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rr_new = dot(r, r)
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p)]
        rr = rr_new
    return x


def mean_over_tasks(per_task: Callable[[int], Vec], num_tasks: int) -> Vec:
    total: Vec | None = None
    for i in range(num_tasks):
        g = [t.detach() for t in per_task(i)]
        total = g if total is None else [a + b for a, b in zip(total, g)]
    assert total is not None
    return [t / num_tasks for t in total]


def imaml_from_phi(loss_at: Callable[[Vec, object], Tensor], phi: Vec, train, val,
                   lam: float, iters: int) -> Vec:
    """x_m = CG_m on (I + H(φ)/λ) x = ∇L_val(φ), HVPs by double backward."""
    phi = [p.detach().requires_grad_(True) for p in phi]
    g_tr = torch.autograd.grad(loss_at(phi, train), phi, create_graph=True)
    b = list(torch.autograd.grad(loss_at(phi, val), phi))

    def matvec(v: Vec) -> Vec:
        hv = torch.autograd.grad(g_tr, phi, grad_outputs=v, retain_graph=True)
        return [vi + hvi / lam for vi, hvi in zip(v, hv)]

    return cg(matvec, b, iters)
