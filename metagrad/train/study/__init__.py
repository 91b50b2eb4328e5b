"""The method comparison study and the Finn et al. 2017 reproduction: what ``metagrad
train --preset study`` and ``--preset finn2017`` run on top of the training API of
:mod:`metagrad.train`.

* :mod:`.design`: the study itself (variants and regimes, tuning on validation tasks,
  matched cost, the runs), re-exported here;
* :mod:`.aggregate`: its tables, with the intervals of :mod:`metagrad.train.stats`;
* :mod:`.finn2017`, :mod:`.finn2017_report`: Finn et al.'s protocol and its comparison with
  the published numbers;
* :mod:`.rates`, :mod:`.rates_report`: learned inner step sizes (Meta-SGD, per-step
  rates) beside MAML at several support sizes, compared with the published numbers
  (``--preset rates``);
* :mod:`.trace`: the reproducibility traces of committed results;
* :mod:`.steptime`: eager against compiled meta-steps, side by side.
"""

from __future__ import annotations

from typing import Any

from .design import (
    BASELINE_EVAL_LRS,
    COMPILE_ALL_FROM,
    COMPILED_METHODS,
    CURVATURE,
    MATCHED_COST,
    REGIMES,
    TOL,
    TUNING_SEED,
    Study,
    Variant,
    config_for,
    matched_settings,
    point_id,
    run,
    solved_settings,
    tune,
    tuning_grid,
    variants,
)


def __getattr__(name: str) -> Any:
    # ``GRIDS`` was a hand-kept dict of every variant's grid; the grids live on the method
    # classes now (``tuning_grid``, ``solved_tuning_grid``).
    if name != "GRIDS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    from ...methods import METHOD_NAMES
    warnings.warn("metagrad.train.study.GRIDS is deprecated: read "
                  "metagrad.train.study.tuning_grid(method, regime) or the method class's "
                  "tuning_grid", DeprecationWarning, stacklevel=2)
    return {v.name: dict(v.grid) for v in variants(METHOD_NAMES, ("k1", "solved"), True)}


__all__ = ["BASELINE_EVAL_LRS", "COMPILED_METHODS", "COMPILE_ALL_FROM", "CURVATURE",
           "MATCHED_COST", "REGIMES", "TOL", "TUNING_SEED", "Study", "Variant", "config_for",
           "matched_settings", "point_id", "run", "solved_settings", "tune", "tuning_grid",
           "variants"]
