"""Shared test problems: the embedded set of ``metagrad verify`` (one definition, used
by the CLI, the report and the tests) plus small random problems for property tests."""

from __future__ import annotations

import torch

from metagrad.verify.compare import Case, evaluate, rel_error
from metagrad.verify.problems import DEFAULTS, Problem, get, linreg

__all__ = ["DEFAULTS", "Case", "Problem", "evaluate", "get", "level1_failures", "linreg",
           "rel_error", "F64", "F32"]

F64 = torch.float64
F32 = torch.float32


def level1_failures(row: dict) -> list[str]:
    """The Level-1 criteria a result row violates (empty list: it passes)."""
    from metagrad.verify.compare import FD_RTOL, REF_RTOL

    bad = []
    for key, tol in (("err_reference", REF_RTOL), ("err_loss", REF_RTOL),
                     ("err_closed_form", REF_RTOL), ("err_fd", FD_RTOL)):
        if row.get(key) is not None and not row[key] <= tol:
            bad.append(f"{key} = {row[key]:.3e} > {tol:.0e}")
    return bad
