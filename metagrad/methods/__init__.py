"""The methods and the registry that every application reads.

``METHODS`` maps each method's ``name`` to its class in the canonical order
(MAML, FOMAML, Reptile, IMAML, Neumann, Penalty, then any registered later with
:func:`register_method`); everything else about a method (which settings it reads,
which bilevel-exact target it approximates, which diagnostics deserve a log column,
its cost, its test plan, the code paths worth checking) is read off the class, so
that no list of methods or settings is kept anywhere else.
"""

from collections.abc import Iterator, Sequence

from ._backward import BACKWARD_MODES, Trajectory, Unrolled
from ._base import SETTINGS, MetaGradient, Method, TaskOutput
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



class _Names(Sequence[str]):
    """The registered names, read from :data:`METHODS` at every use (so a method
    registered after import is listed too)."""

    def __getitem__(self, index):
        return tuple(METHODS)[index]

    def __len__(self) -> int:
        return len(METHODS)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(METHODS))

    def __contains__(self, name: object) -> bool:
        return name in METHODS

    def __repr__(self) -> str:
        return repr(tuple(METHODS))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, list, _Names)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # it changes as methods are registered


METHOD_NAMES: Sequence[str] = _Names()
"""The registered method names in order (a live view of :data:`METHODS`)."""


def register_method(cls: type[Method], *, replace: bool = False) -> type[Method]:
    """Add a method class to the registry under its ``name`` (usable as a class
    decorator), so that ``metagrad verify``, ``audit``, ``train``, ``sweep`` and
    ``report`` run it like the built-in ones.

    Parameters
    ----------
    cls : type[Method]
        A subclass of :class:`metagrad.Method` with its own ``name``.
    replace : bool
        Allow replacing a class already registered under that name.

    Returns
    -------
    type[Method]
        ``cls`` itself.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method takes a subclass of metagrad.Method, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name.isidentifier() or cls.name == Method.name:
        raise ValueError(f"{cls.__name__} needs a class attribute name = '...' (an identifier "
                         f"for the command line and CSV columns), got {name!r}")
    if name in METHODS and METHODS[name] is not cls and not replace:
        raise ValueError(f"a method named {name!r} is already registered "
                         f"({METHODS[name].__qualname__}); pass replace=True to replace it")
    METHODS[name] = cls
    return cls


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
           "TaskOutput", "Trajectory", "Unrolled", "is_implicit", "method_class",
           "register_method"]
