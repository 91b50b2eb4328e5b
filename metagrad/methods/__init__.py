from ._base import MetaGradient, Method
from .fomaml import FOMAML
from .imaml import IMAML
from .maml import MAML
from .neumann import Neumann
from .penalty import Penalty
from .reptile import Reptile

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (MAML, FOMAML, Reptile, IMAML, Neumann, Penalty)
}

__all__ = ["FOMAML", "IMAML", "MAML", "METHODS", "MetaGradient", "Method", "Neumann", "Penalty",
           "Reptile"]
