"""metagrad: fast, verified meta-gradients for MAML-family bilevel learning.

    import metagrad as mg
    out = mg.MAML(steps=5, inner_lr=0.01)(loss, params, mg.Task(train=..., val=...))
    out.grad, out.pre_update_loss, out.post_update_loss

Every method shares one call, ``method(loss, params, tasks) -> MetaGradient``:
:class:`MAML`, :class:`FOMAML`, :class:`Reptile`, :class:`IMAML`, :class:`Neumann`
and :class:`Penalty` (``help(mg.IMAML)`` gives each one's equation, paper and
fields). ``METHODS`` is the registry; :func:`register_method` adds one.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._hvp import Loss, hvp
from ._inner import InnerLoop, InnerResult, adapt
from ._module import module_loss, params_of, set_grads
from ._pytree import Params
from ._rates import Rates
from ._rules import GD, Adam, Momentum
from ._solvers import CGInfo, ConjugateGradient, NeumannInfo, NeumannSeries, cg, neumann
from ._task import Task
from .diagnose import Finding, MetaGradientWarning, NumericalError
from .distributed import DistributedMetaGradient, DistributedMethod, distributed, shard_tasks
from .methods import (
    FOMAML,
    IMAML,
    MAML,
    METHOD_NAMES,
    METHODS,
    SETTINGS,
    MetaGradient,
    Method,
    Neumann,
    Penalty,
    Reptile,
    TaskOutput,
    Trajectory,
    Unrolled,
    register_method,
)

__version__ = "0.2.0"

_LAZY = {
    "CompiledMethod": "compiled", "compile": "compiled",
    "GaussianClusters": "distributions", "LinearRegression": "distributions",
    "Sinusoid": "distributions",
    "INNER_FORMS": "_forms", "InnerForm": "_forms", "inner_rates": "_forms",
}
"""Names imported on first use, so that ``import metagrad`` costs little beyond
``import torch`` (``python -m metagrad_bench.startup`` measures both)."""

if TYPE_CHECKING:  # what type checkers and the API reference's static reader see
    from ._forms import INNER_FORMS, InnerForm, inner_rates
    from .compiled import CompiledMethod, compile
    from .distributions import GaussianClusters, LinearRegression, Sinusoid


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metagrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Adam",
    "CGInfo",
    "CompiledMethod",
    "ConjugateGradient",
    "DistributedMetaGradient",
    "DistributedMethod",
    "FOMAML",
    "Finding",
    "GD",
    "GaussianClusters",
    "IMAML",
    "INNER_FORMS",
    "InnerForm",
    "InnerLoop",
    "InnerResult",
    "LinearRegression",
    "Loss",
    "MAML",
    "METHODS",
    "METHOD_NAMES",
    "MetaGradient",
    "MetaGradientWarning",
    "Method",
    "Momentum",
    "Neumann",
    "NeumannInfo",
    "NeumannSeries",
    "NumericalError",
    "Params",
    "Penalty",
    "Rates",
    "Reptile",
    "SETTINGS",
    "Sinusoid",
    "Task",
    "TaskOutput",
    "Trajectory",
    "Unrolled",
    "adapt",
    "cg",
    "compile",
    "distributed",
    "hvp",
    "inner_rates",
    "module_loss",
    "neumann",
    "params_of",
    "register_method",
    "set_grads",
    "shard_tasks",
]
