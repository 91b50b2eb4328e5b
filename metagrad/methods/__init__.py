"""The six methods and the registry that every application reads.

``METHODS`` maps each method's ``name`` to its class in the canonical order
(MAML, FOMAML, Reptile, IMAML, Neumann, Penalty); everything else about a
method (which settings it reads, which bilevel-exact target it approximates,
which diagnostics deserve a log column, its cost) is read off the class, so
that no list of methods or settings is kept anywhere else.
"""

from ._backward import BACKWARD_MODES, Trajectory, Unrolled
from ._base import SETTINGS, MetaGradient, Method
from ._implicit import ImplicitMethod
from .fomaml import FOMAML
from .imaml import IMAML
from .maml import MAML
from .neumann import Neumann
from .penalty import Penalty
from .reptile import Reptile

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (MAML, FOMAML, Reptile, IMAML, Neumann, Penalty)
}
"""name → class, in the canonical order used by every table and figure."""

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; a clear error for an unknown name."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def is_implicit(name: str) -> bool:
    """Whether method ``name`` targets the implicit gradient (rather than MAML's)."""
    return method_class(name).target == "implicit"


__all__ = ["BACKWARD_MODES", "FOMAML", "IMAML", "MAML", "METHODS", "METHOD_NAMES", "SETTINGS",
           "ImplicitMethod", "MetaGradient", "Method", "Neumann", "Penalty", "Reptile",
           "Trajectory", "Unrolled", "is_implicit", "method_class"]
