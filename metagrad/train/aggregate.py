"""Deprecated location of :mod:`metagrad.train.study.aggregate` (moved with the rest of the
study machinery); importing it here still works, with a DeprecationWarning."""

import sys
import warnings

from .study import aggregate as _moved

warnings.warn("metagrad.train.aggregate moved to metagrad.train.study.aggregate",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
