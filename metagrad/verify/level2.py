"""Level 2: how far each approximate method is from its bilevel-exact target.

Sweeps K (``steps``), λ (``lam``), CG iterations (``cg_iters``) and Neumann
depth (``terms``) one at a time around a problem's defaults, and records the
norm-wise relative error of metagrad's meta-gradient against the target of
``reference.targets.target`` (MAML's meta-gradient for FOMAML, Reptile and
Penalty; the implicit gradient for IMAML and Neumann). The rows are kept as
regression baselines in ``tests/baselines/level2.json`` and plotted by the
report section.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from ..diagnose import MetaGradientWarning
from .compare import Case, evaluate
from .problems import DEFAULTS, get

SWEEP_PROBLEMS = ("linreg12", "mlp_softplus")
QUICK_PROBLEMS = ("linreg12",)

STEPS = (0, 1, 2, 5, 10, 20)
LAM_FACTORS = (1.0, 2.0, 5.0, 10.0)
CG_ITERS = (0, 1, 2, 4, 8, 12, 16)
TERMS = (0, 1, 2, 4, 8, 16, 32)
CONVERGED_STEPS = 100
"""Proximal GD steps at the fastest step size (``Defaults.converged_lr``): contraction
≤ 0.72 per step on the sweep problems, 0.72¹⁰⁰ ≈ 5e-15, so the inner loop has
converged to roundoff and the lam, cg_iters and terms sweeps see the solver's error alone."""
PENALTY_LAM = 0.01
STEPS_CG_ITERS = 16
STEPS_TERMS = 16


def sweep_cases(problems: tuple[str, ...] = SWEEP_PROBLEMS) -> Iterator[tuple[str, Case]]:
    """(sweep name, case) pairs, one setting varied at a time."""
    for name in problems:
        d = DEFAULTS[name]
        lr, lam = d.inner_lr, d.lam
        eta = d.neumann_step(lam)
        for k in STEPS:
            yield "steps", Case.of("fomaml", name, steps=k, inner_lr=lr)
            yield "steps", Case.of("reptile", name, steps=k, inner_lr=lr)
            yield "steps", Case.of("penalty", name, steps=k, inner_lr=lr, lam=PENALTY_LAM)
            yield "steps", Case.of("imaml", name, steps=k, inner_lr=lr, lam=lam,
                                   cg_iters=STEPS_CG_ITERS)
            yield "steps", Case.of("neumann", name, steps=k, inner_lr=lr, lam=lam,
                                   terms=STEPS_TERMS, step=eta)
        for factor in LAM_FACTORS:
            lam_f = lam * factor
            conv: dict[str, Any] = dict(steps=CONVERGED_STEPS, inner_lr=d.converged_lr(lam_f),
                                        lam=lam_f)
            yield "lam", Case.of("imaml", name, cg_iters=4, **conv)
            yield "lam", Case.of("neumann", name, terms=4, step=d.neumann_step(lam_f), **conv)
        conv = {"steps": CONVERGED_STEPS, "inner_lr": d.converged_lr(lam), "lam": lam}
        for m in CG_ITERS:
            yield "cg_iters", Case.of("imaml", name, cg_iters=m, **conv)
        for j in TERMS:
            yield "terms", Case.of("neumann", name, terms=j, step=eta, **conv)


def sweep(problems: tuple[str, ...] = SWEEP_PROBLEMS,
          progress: bool = False) -> list[dict[str, Any]]:
    """Run every sweep case; one row per case with its ``approx_error``."""
    cases: Iterable[tuple[str, Case]] = list(sweep_cases(problems))
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc="level-2 sweep", unit="case")
    rows = []
    for name, case in cases:
        with warnings.catch_warnings():
            # A sweep visits unconverged settings (CG with m < d, short series) on purpose:
            # their size is the measurement, so metagrad's diagnoses stay off the console.
            warnings.simplefilter("ignore", MetaGradientWarning)
            row = evaluate(case, fd=False, target=True)
        rows.append({"sweep": name, "dim": get(case.problem).dim, **{k: row[k] for k in (
            "method", "problem", "steps", "inner_lr", "lam", "cg_iters", "terms", "step",
            "approx_error", "err_reference")}})
    return rows


KEY_COLUMNS = ("sweep", "method", "problem", "steps", "inner_lr", "lam", "cg_iters", "terms",
               "step")


def row_key(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={row.get(k)}" for k in KEY_COLUMNS if row.get(k) is not None)
