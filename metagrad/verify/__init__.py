"""``metagrad verify``: metagrad's methods against the exact oracle in ``reference/``.

* :mod:`.problems`: the embedded problem set (float64, smooth, small);
* :mod:`.compare`: one case = method × problem × setting × code path, and
  its errors against the dense reference, finite differences, closed forms and
  the bilevel-exact target;
* :mod:`.level2`: approximation-error sweeps across K, λ, CG iterations and
  Neumann terms;
* :mod:`.command`: the CLI subcommand; :mod:`.section`: the report section.
"""

from .command import add_parser, run
from .compare import FD_RTOL, REF_RTOL, Case, evaluate, rel_error
from .section import verify_section

__all__ = ["FD_RTOL", "REF_RTOL", "Case", "add_parser", "evaluate", "rel_error", "run",
           "verify_section"]
