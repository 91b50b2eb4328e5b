"""Pieces the audit adapters share: turning a functional ``loss(params, batch)`` into the
``nn.Module`` the peer libraries want (``metagrad.testing.LossModule``), checking the
settings a factory is given, and the mean over tasks.

An audit *target* is ``target(loss, params, tasks) -> dict[str, Tensor]``: the mean over
the meta-batch of one method's per-task meta-gradient, computed by a peer library's own
machinery, keyed and ordered like ``params``. Each peer module maps metagrad's method
names to factories ``AUDIT_TARGETS[name](**settings) -> target`` in metagrad's vocabulary
(``steps``, ``inner_lr``, ``lam``, ``cg_iters``, ``terms``, ``step``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from metagrad.testing import LossModule

Loss = Callable[[Mapping[str, Tensor], Any], Tensor]
Target = Callable[[Loss, Mapping[str, Tensor], Any], dict[str, Tensor]]


ParamModule = LossModule
"""The functional loss as an ``nn.Module`` whose ``forward(batch)`` is the loss: the public
:class:`metagrad.testing.LossModule` (parameters ``p0, p1, …``, ``keys`` the original names),
which higher, learn2learn and torchopt patch and betty optimises."""


def proximal(phi: Sequence[Tensor], theta: Sequence[Tensor], lam: float) -> Tensor:
    """λ/2 ‖φ − θ‖², the iMAML proximal term (Rajeswaran et al. 2019, eq. (4))."""
    return 0.5 * lam * sum(((p - t) ** 2).sum() for p, t in zip(phi, theta))


def mean_over_tasks(per_task: Callable[[int], Sequence[Tensor]], tasks: Any,
                    keys: Sequence[str]) -> dict[str, Tensor]:
    """(1/T) Σᵢ gᵢ as a dict in ``keys`` order; ``per_task(i)`` gives task i's gᵢ as a list."""
    total: list[Tensor] | None = None
    for i in range(tasks.num_tasks):
        g = [t.detach() for t in per_task(i)]
        if len(g) != len(keys):
            raise RuntimeError(f"task {i}: {len(g)} gradient tensors for {len(keys)} parameters")
        total = g if total is None else [a + b for a, b in zip(total, g)]
    assert total is not None
    return {k: t / tasks.num_tasks for k, t in zip(keys, total)}


def check_settings(method: str, given: Mapping[str, Any], required: Sequence[str],
                   optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings a factory takes, with ``optional`` defaults filled in.

    Unknown or missing names raise ``TypeError`` naming them; a non-integer or negative
    count and a non-positive rate raise ``ValueError`` naming the value.
    """
    optional = dict(optional or {})
    unknown = sorted(set(given) - set(required) - set(optional))
    if unknown:
        raise TypeError(f"{method}: unknown setting(s) {unknown}; "
                        f"takes {sorted([*required, *optional])}")
    missing = [k for k in required if k not in given]
    if missing:
        raise TypeError(f"{method}: missing setting(s) {missing}")
    out = {**optional, **given}
    for k in ("steps", "cg_iters", "terms"):
        if k in out and (isinstance(out[k], bool) or not isinstance(out[k], int) or out[k] < 0):
            raise ValueError(f"{method}: {k} must be a non-negative int, got {out[k]!r}")
    for k in ("inner_lr", "lam", "step"):
        if k in out and not (isinstance(out[k], (int, float)) and out[k] > 0):
            raise ValueError(f"{method}: {k} must be a positive number, got {out[k]!r}")
    return out


def one_scalar_grad(value: Tensor, wrt: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """∂value/∂wrt, zeros for tensors value does not depend on."""
    grads = torch.autograd.grad(value, list(wrt), allow_unused=True)
    return tuple(torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt))
