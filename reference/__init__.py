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
* :mod:`metagrad_reference.rates` and :mod:`metagrad_reference.inner_loops`: the inner loops
  people meta-learn (learned step sizes one per tensor, per entry as in Meta-SGD or per step
  as in MAML++; parameters left out as in ANIL; momentum, Nesterov and Adam inner loops;
  MAML++'s multi-step loss) and every method's exact quantity for them, MAML's derivatives
  in θ, the rates and the momentum β by forward accumulation of dense Jacobians.
* :mod:`metagrad_reference.variants`: the wrong meta-gradients code ships (first order, one
  tensor detached, the query batch in the inner loop, a damped or warm-started iMAML system,
  a non-alternating Neumann series, …), alone or combined, for diagnosing an implementation.
* :mod:`metagrad_reference.inner_variants`: the wrong meta-gradients and rate-gradients of
  the inner-loop variants (a rate-gradient without its second-order term, rates one step
  late, optimizer state not reset between tasks, Adam without bias correction, …).
"""

from . import closed_form, dense, finite_diff, inner_loops, methods, rates, targets, variants
from .dense import gradient, hessian
from .finite_diff import central_difference, directional_difference
from .flat import flat_loss, flatten, unflatten
from .inner_loops import LearnedResult, Rule
from .methods import METHODS, RefResult, meta_batch
from .targets import (
    implicit_gradient,
    implicit_objective,
    maml_gradient,
    maml_objective,
    penalty_objective,
)

__all__ = [
    "LearnedResult",
    "METHODS",
    "RefResult",
    "Rule",
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
    "inner_loops",
    "maml_gradient",
    "maml_objective",
    "meta_batch",
    "methods",
    "penalty_objective",
    "rates",
    "targets",
    "unflatten",
    "variants",
]
