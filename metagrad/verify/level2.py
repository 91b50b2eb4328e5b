"""Level 2: how far each approximate method is from its bilevel-exact target.

Sweeps K (``steps``), λ (``lam``), CG iterations (``cg_iters``) and Neumann
depth (``terms``) one at a time around a problem's defaults, and records the
norm-wise relative error of metagrad's meta-gradient against its bilevel-exact
target (:func:`.compare.exact_target`: MAML's meta-gradient for the methods that
approximate it, the implicit gradient for the implicit ones). Every method but
MAML (whose target is itself) is swept along every axis it reads. The rows are
kept as regression baselines in ``tests/baselines/level2.json`` and plotted by
the report section.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from ..methods import METHODS, SETTINGS
from ..problems import DEFAULTS
from .compare import Case, evaluate, get

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


def _cases(sweep: str, problem: str, values: dict[str, Any], *,
           implicit: dict[str, Any] | None = None,
           implicit_only: bool = False) -> Iterator[tuple[str, Case]]:
    """One case per method that reads the setting the sweep varies, with ``values`` (or, for
    the implicit methods, ``implicit`` where given) restricted to what it reads. MAML is
    left out: its target is itself, so its error is roundoff."""
    for cls in METHODS.values():
        reads = cls.setting_names()
        is_implicit = cls.target == "implicit"
        if cls.target == cls.name or sweep not in reads or (implicit_only and not is_implicit):
            continue
        chosen = implicit if is_implicit and implicit is not None else values
        yield sweep, Case.of(cls.name, problem, **{k: v for k, v in chosen.items() if k in reads})


def sweep_cases(problems: tuple[str, ...] = SWEEP_PROBLEMS) -> Iterator[tuple[str, Case]]:
    """(sweep name, case) pairs, one setting varied at a time: K for every approximate
    method, λ, m and J for the implicit methods."""
    for name in problems:
        d = DEFAULTS[name]
        lr, lam = d.inner_lr, d.lam
        eta = d.neumann_step(lam)
        for k in STEPS:
            # The implicit methods at the problem's λ; Penalty's λ weights another
            # objective and is kept small.
            base = dict(steps=k, inner_lr=lr, cg_iters=STEPS_CG_ITERS, terms=STEPS_TERMS,
                        step=eta)
            yield from _cases("steps", name, {**base, "lam": PENALTY_LAM},
                              implicit={**base, "lam": lam})
        for factor in LAM_FACTORS:
            lam_f = lam * factor
            yield from _cases("lam", name, dict(
                steps=CONVERGED_STEPS, inner_lr=d.converged_lr(lam_f), lam=lam_f, cg_iters=4,
                terms=4, step=d.neumann_step(lam_f)), implicit_only=True)
        conv = {"steps": CONVERGED_STEPS, "inner_lr": d.converged_lr(lam), "lam": lam}
        for m in CG_ITERS:
            yield from _cases("cg_iters", name, dict(cg_iters=m, **conv))
        for j in TERMS:
            yield from _cases("terms", name, dict(terms=j, step=eta, **conv))


def sweep(problems: tuple[str, ...] = SWEEP_PROBLEMS,
          progress: bool = False) -> list[dict[str, Any]]:
    """Run every sweep case; one row per case with its ``approx_error``."""
    cases: Iterable[tuple[str, Case]] = list(sweep_cases(problems))
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc="level-2 sweep", unit="case")
    rows = []
    for name, case in cases:
        # A sweep visits unconverged settings (CG with m < d, short series) on purpose:
        # their size is the measurement, so metagrad's diagnoses are recorded, not shown.
        row = evaluate(case, fd=False, target=True,
                       method=replace(case.build(), diagnose="record"))
        rows.append({"sweep": name, "dim": get(case.problem).dim, **{k: row[k] for k in (
            "method", "problem", *SETTINGS, "approx_error", "err_reference")}})
    return rows


KEY_COLUMNS = ("sweep", "method", "problem", *SETTINGS)


def row_key(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={row.get(k)}" for k in KEY_COLUMNS if row.get(k) is not None)


def merge(stored: list[dict[str, Any]], fresh: list[dict[str, Any]],
          same: Callable[[float, float], bool]) -> tuple[list[dict[str, Any]], dict[str, list]]:
    """Baseline rows after an update: a stored row whose error is ``same`` as the fresh one
    is kept as it was (its digits and its place), a row that moved is replaced in place, a
    new row is appended, a row the sweep no longer makes is dropped. Returns the rows and
    the keys ``{"replaced": [...], "added": [...], "dropped": [...]}``."""
    fresh_by_key = {row_key(r): r for r in fresh}
    stored_keys = {row_key(r) for r in stored}
    rows: list[dict[str, Any]] = []
    changes: dict[str, list] = {"replaced": [], "added": [], "dropped": []}
    for row in stored:
        key = row_key(row)
        if key not in fresh_by_key:
            changes["dropped"].append(key)
        elif same(fresh_by_key[key]["approx_error"], row["approx_error"]):
            rows.append(row)
        else:
            rows.append(fresh_by_key[key])
            changes["replaced"].append(key)
    for row in fresh:
        if row_key(row) not in stored_keys:
            rows.append(row)
            changes["added"].append(row_key(row))
    return rows, changes
