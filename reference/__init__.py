"""The exact oracle for metagrad: dense float64 linear algebra, finite differences, closed forms.

Independent of metagrad by construction (an oracle that shares code with what it
checks checks nothing): nothing here imports ``metagrad``, and it is installed as
its own top-level package, ``metagrad_reference``. Every
function works on *flattened* parameter vectors ``theta`` (1-D tensors) and a
scalar loss ``f(theta, batch)``; :func:`flat_loss` builds one from a loss on a
parameter dict. Dense Hessians come from ``torch.func`` (reverse over reverse),
linear algebra from ``torch.linalg``, inner loops are plain Python loops.

Modules:

* :mod:`metagrad_reference.flat`: dict ↔ vector, ``flat_loss``.
* :mod:`metagrad_reference.dense`: gradients, dense Hessians, the inner loops, Newton on
  the proximal problem, dense CG and the truncated Neumann sum.
* :mod:`metagrad_reference.methods`: the exact quantity each metagrad method computes.
* :mod:`metagrad_reference.targets`: the bilevel-exact targets and the scalar objectives
  whose gradients they are.
* :mod:`metagrad_reference.finite_diff`: central differences (with Richardson extrapolation).
* :mod:`metagrad_reference.closed_form`: closed forms for the linear-regression family.
* :mod:`metagrad_reference.variants`: the usual wrong meta-gradients (first order, stale-residual
  CG, a non-alternating Neumann series, …), for diagnosing a failing implementation.
"""

from . import closed_form, dense, finite_diff, methods, targets, variants
from .dense import gradient, hessian
from .finite_diff import central_difference, directional_difference
from .flat import flat_loss, flatten, unflatten
from .methods import METHODS, RefResult, meta_batch
from .targets import (
    implicit_gradient,
    implicit_objective,
    maml_gradient,
    maml_objective,
    penalty_objective,
)

__all__ = [
    "METHODS",
    "RefResult",
    "central_difference",
    "closed_form",
    "dense",
    "directional_difference",
    "finite_diff",
    "flat_loss",
    "flatten",
    "gradient",
    "hessian",
    "implicit_gradient",
    "implicit_objective",
    "maml_gradient",
    "maml_objective",
    "meta_batch",
    "methods",
    "penalty_objective",
    "targets",
    "unflatten",
    "variants",
]
