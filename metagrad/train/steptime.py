"""Deprecated location of :mod:`metagrad.train.study.steptime` (moved with the rest of the
study machinery); importing it here still works, with a DeprecationWarning."""

import sys
import warnings

from .study import steptime as _moved

if __name__ == "__main__":
    warnings.warn("python -m metagrad.train.steptime is deprecated: run "
                  "python -m metagrad.train.study.steptime", DeprecationWarning, stacklevel=1)
    raise SystemExit(_moved.main())
warnings.warn("metagrad.train.steptime moved to metagrad.train.study.steptime",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
