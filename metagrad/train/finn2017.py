"""Deprecated location of :mod:`metagrad.train.study.finn2017` (moved with the rest of the
study machinery); importing it here still works, with a DeprecationWarning."""

import sys
import warnings

from .study import finn2017 as _moved

warnings.warn("metagrad.train.finn2017 moved to metagrad.train.study.finn2017",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
