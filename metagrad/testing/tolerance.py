"""Tolerances of the audit: float64 from :mod:`metagrad.verify.compare`, float32 derived
from float32's unit roundoff.

float64: a meta-gradient must match its dense float64 reference to ``REF_RTOL`` = 1e-9
(implementation exactness) and central finite differences of the objective it is the
gradient of to ``FD_RTOL`` = 1e-7.

float32 (not tuned; the derivation of the float32 accuracy tests). With unit roundoff
u = ε₃₂/2 ≈ 6.0e-8, a length-n reduction (matrix product, batch mean, inner product of two
parameter vectors) has relative error ≲ √n·u with high probability (Higham & Mary 2019,
"A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput.; the worst
case is n·u, Higham 2002, Accuracy and Stability of Numerical Algorithms, §3.1). A
meta-gradient is a chain of G such passes, G = the method's cost in gradient-equivalents
(``mg.METHODS[name](**settings).gradient_equivalents()``: one forward + backward pass per
gradient, two per Hessian-vector product), whose first-order errors add. Inner-loop steps
with α·|λ(H)| < 1 do not amplify the error; the implicit methods' linear solve does, by
κ(A) for CG and, for the truncated Neumann series, by η Σ_{j≤J} ρʲ (ρ = ρ(I − ηA)), the
norm of the series operator, A = I + H(φ)/λ. Hence

    tol = amplification · G · √n · u,   n = max(d, batch size, widest tensor dimension),

with the amplification evaluated densely in float64 on the same problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from metagrad_reference import dense
from torch import Tensor

from ..methods import method_class
from ..verify.compare import FD_RTOL, REF_RTOL

U32 = torch.finfo(torch.float32).eps / 2
"""Unit roundoff of float32, u = ε₃₂/2."""

__all__ = ["FD_RTOL", "REF_RTOL", "U32", "amplification", "float32_tolerance", "reduction_length"]


def amplification(method: str, settings: dict[str, Any], f, theta: Tensor,
                  tasks: Sequence[tuple[Any, Any]]) -> float:
    """How much the method's linear solve can amplify a relative rounding error: 1 for the
    methods without one; for those with a solver (``method.solver``), the worst over tasks
    of the solver's own factor (``rounding_amplification``: κ(A) for CG, η Σ_{j≤J} ρ(I − ηA)ʲ
    for the Neumann series) at A = I + H(φ)/λ, φ after K proximal steps (dense, float64)."""
    instance = method_class(method)(**settings)
    amplify = getattr(getattr(instance, "solver", None), "rounding_amplification", None)
    if amplify is None:
        return 1.0
    s, lam = settings, settings["lam"]
    worst = 1.0
    for train, _ in tasks:
        phi = dense.proximal_gd(f, theta, train, s["steps"], s["inner_lr"], lam)[-1]
        worst = max(worst, amplify(1 + torch.linalg.eigvalsh(dense.hessian(f, phi, train)) / lam))
    return worst


def reduction_length(params: dict[str, Tensor], batches: Sequence[Any]) -> int:
    """n = max(d, the largest batch size, the widest tensor dimension)."""
    dim = sum(v.numel() for v in params.values())
    widest = max((max(v.shape) for v in params.values() if v.dim() > 0), default=1)
    batch = max((int(x.shape[0]) for b in batches for x in _tensors(b) if x.dim() > 0),
                default=1)
    return max(dim, widest, batch)


def _tensors(batch: Any) -> list[Tensor]:
    from torch.utils import _pytree

    return [x for x in _pytree.tree_leaves(batch) if isinstance(x, Tensor)]


def float32_tolerance(method: str, settings: dict[str, Any], f, theta: Tensor,
                      tasks: Sequence[tuple[Any, Any]], n: int) -> float:
    """tol = amplification · G · √n · u (module docstring); ``f``, ``theta`` and ``tasks``
    are the float64 twin of the float32 problem (per-task ``(train, val)`` pairs)."""
    # at least one pass (Reptile at K = 0 costs nothing and returns exact zeros)
    cost = max(method_class(method)(**settings).gradient_equivalents(), 1)
    return amplification(method, settings, f, theta, tasks) * cost * math.sqrt(n) * U32
