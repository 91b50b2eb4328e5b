"""``metagrad verify``: metagrad's methods against the exact oracle, ``metagrad_reference``.

* :mod:`.compare`: one case = method × problem × setting × code path, and its errors
  against the dense reference, finite differences, closed forms and the bilevel-exact
  target (:func:`.compare.exact_target`, also used by the benchmarks);
* :mod:`.table`: the cases ``metagrad verify`` runs and its output files;
* :mod:`.level2`: approximation-error sweeps across K, λ, CG iterations and Neumann terms;
* :mod:`.command`: the CLI subcommand; :mod:`.section`: the report section.

The problems are those of ``metagrad.problems``.
"""

from .compare import FD_RTOL, REF_RTOL, Case, evaluate, exact_target, rel_error

__all__ = ["FD_RTOL", "REF_RTOL", "Case", "evaluate", "exact_target", "rel_error"]
