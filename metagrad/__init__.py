"""metagrad: fast, verified meta-gradients for MAML-family bilevel learning.

    import metagrad as mg
    out = mg.MAML(steps=5, inner_lr=0.01)(loss, params, mg.Task(train=..., val=...))
    out.grad, out.pre_update_loss, out.post_update_loss
"""

from ._hvp import hvp
from ._inner import adapt
from ._module import module_loss, params_of, set_grads
from ._solvers import cg, neumann
from ._task import Task
from .compiled import CompiledMethod, compile
from .diagnose import MetaGradientWarning, NumericalError
from .distributions import GaussianClusters, LinearRegression, Sinusoid
from .methods import FOMAML, IMAML, MAML, METHODS, MetaGradient, Method, Neumann, Penalty, Reptile

__version__ = "0.1.0"

__all__ = [
    "FOMAML",
    "IMAML",
    "MAML",
    "METHODS",
    "GaussianClusters",
    "LinearRegression",
    "MetaGradient",
    "MetaGradientWarning",
    "NumericalError",
    "Method",
    "CompiledMethod",
    "Neumann",
    "Penalty",
    "Reptile",
    "Sinusoid",
    "Task",
    "adapt",
    "cg",
    "compile",
    "hvp",
    "module_loss",
    "neumann",
    "params_of",
    "set_grads",
]
