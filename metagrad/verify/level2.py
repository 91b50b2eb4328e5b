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

from collections.abc import Iterator
from typing import Any

from .compare import Case, evaluate
from .problems import DEFAULTS

SWEEP_PROBLEMS = ("linreg20", "mlp_softplus")
QUICK_PROBLEMS = ("linreg20",)

STEPS = (0, 1, 2, 3, 5, 10, 20)
LAM_FACTORS = (1.0, 2.0, 5.0, 10.0)
CG_ITERS = (0, 1, 2, 3, 5, 8, 12, 20, 30)
TERMS = (0, 1, 2, 4, 8, 16, 32)
CONVERGED_STEPS = 150
"""Proximal GD steps after which the inner loop has converged to roundoff on the sweep
problems (rate max|1 − α(λ + μ)| ≤ 0.8 there, 0.8¹⁵⁰ ≈ 3e-15), so that the
cg_iters and terms sweeps see the solver's error alone."""
PENALTY_LAM = 0.01


def sweep_cases(problems: tuple[str, ...] = SWEEP_PROBLEMS) -> Iterator[tuple[str, Case]]:
    """(sweep name, case) pairs, one setting varied at a time."""
    for name in problems:
        d = DEFAULTS[name]
        lr, lam = d.inner_lr, d.lam
        dim_iters = 30
        for k in STEPS:
            yield "steps", Case.of("fomaml", name, steps=k, inner_lr=lr)
            yield "steps", Case.of("reptile", name, steps=k, inner_lr=lr)
            yield "steps", Case.of("penalty", name, steps=k, inner_lr=lr, lam=PENALTY_LAM)
            yield "steps", Case.of("imaml", name, steps=k, inner_lr=lr, lam=lam,
                                   cg_iters=dim_iters)
            yield "steps", Case.of("neumann", name, steps=k, inner_lr=lr, lam=lam, terms=16,
                                   step=_neumann_step(name))
        for factor in LAM_FACTORS:
            lam_f = lam * factor
            # keep α(λ + L) < 2 for the proximal loop as λ grows
            lr_f = min(lr, 1.0 / (lam_f + 10.0))
            yield "lam", Case.of("imaml", name, steps=CONVERGED_STEPS, inner_lr=lr_f, lam=lam_f,
                                 cg_iters=5)
            yield "lam", Case.of("neumann", name, steps=CONVERGED_STEPS, inner_lr=lr_f, lam=lam_f,
                                 terms=5, step=_neumann_step(name))
        for m in CG_ITERS:
            yield "cg_iters", Case.of("imaml", name, steps=CONVERGED_STEPS, inner_lr=lr, lam=lam,
                                      cg_iters=m)
        for j in TERMS:
            yield "terms", Case.of("neumann", name, steps=CONVERGED_STEPS, inner_lr=lr, lam=lam,
                                   terms=j, step=_neumann_step(name))


def _neumann_step(name: str) -> float:
    """η < 2/λ_max(I + H/λ) keeps the series convergent (η = 1 diverges when λ_max(H) > λ)."""
    return {"linreg20": 0.4, "mlp_softplus": 0.5}.get(name, 1.0)


def sweep(problems: tuple[str, ...] = SWEEP_PROBLEMS, progress: bool = False) -> list[dict[str, Any]]:
    """Run every sweep case; one row per case with its ``approx_error``."""
    cases = list(sweep_cases(problems))
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc="level-2 sweep", unit="case")
    rows = []
    for name, case in cases:
        row = evaluate(case, fd=False, target=True)
        rows.append({"sweep": name, **{k: row[k] for k in (
            "method", "problem", "steps", "inner_lr", "lam", "cg_iters", "terms", "step",
            "approx_error", "err_reference")}})
    return rows


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ("sweep", "method", "problem", "steps", "inner_lr", "lam",
                                      "cg_iters", "terms", "step"))
