"""The embedded verification table: which cases ``metagrad verify`` runs, and its output files."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from .._app import markdown_table as _markdown
from .._forms import INNER_FORMS
from ..methods import METHOD_NAMES, method_class
from ..problems import DEFAULTS
from .compare import Case, evaluate

QUICK_PROBLEMS = ("linreg", "softmax", "mlp_softplus")
ALL_PROBLEMS = ("linreg", "softmax", "mlp_softplus", "sinusoid_small")


def code_path(method: str, index: int) -> dict[str, Any]:
    """The ``index``-th code path of a method's cycle: batching and HVP mode take the four
    combinations in an order where consecutive settings differ in both; each of the
    method's own options (MAML's backward) changes every second setting, so the cycle
    meets every value of it with both batchings."""
    cycle = [("vmap", "revrev"), ("loop", "fwdrev"), ("vmap", "fwdrev"), ("loop", "revrev")]
    batching, hvp = cycle[index % len(cycle)]
    own = {k: values[((index + 1) // 2) % len(values)]
           for k, values in method_class(method).code_paths.items()
           if k not in ("batching", "hvp")}
    return {"batching": batching, "hvp": hvp, **own}


VARIANT_PROBLEM = "mlp_softplus"
"""Where the inner-loop variants are verified: smooth, and large enough (d = 51) for
per-entry rates to be many."""


def default_cases(problems: Iterable[str] = ALL_PROBLEMS,
                  methods: Iterable[str] = METHOD_NAMES) -> list[Case]:
    """Each method on each problem at the settings it asks to be verified at
    (:meth:`metagrad.Method.verify_plan`), one code path per setting, cycled
    (:func:`code_path`), to stay fast; then, on :data:`VARIANT_PROBLEM`, every inner-loop
    variant each method can run (:data:`metagrad.INNER_FORMS`)."""
    methods = tuple(methods)
    cases = []
    for name in problems:
        d = DEFAULTS[name]
        for method in methods:
            plan = method_class(method).verify_plan(d.inner_lr, d.lam)
            for i, settings in enumerate(plan):
                cases.append(Case.of(method, name, **code_path(method, i), **settings))
    if VARIANT_PROBLEM in problems:
        cases += variant_cases(methods)
    return cases


def variant_cases(methods: Iterable[str] = METHOD_NAMES) -> list[Case]:
    """Every inner-loop variant (learned rates, partial adaptation, momentum, Adam, the
    multi-step loss) of every method that can run it, at the first setting of the method's
    verify plan with at least one inner step, on :data:`VARIANT_PROBLEM`."""
    d = DEFAULTS[VARIANT_PROBLEM]
    cases = []
    for method in methods:
        cls = method_class(method)
        settings = next(s for s in cls.verify_plan(d.inner_lr, d.lam) if s["steps"] >= 1)
        for form, spec in INNER_FORMS.items():
            if spec.applies_to(cls) is None:
                cases.append(Case.of(method, VARIANT_PROBLEM, inner=form, **settings))
    return cases


def run_cases(cases: list[Case], *, fd: bool = True, progress: bool = True) -> pd.DataFrame:
    iterator: Iterable[Case] = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="verify", unit="case")
    rows = []
    for case in iterator:
        try:
            # metagrad's diagnostics (divergent series, unconverged CG) are expected for some
            # settings of the table; they go into the row instead of the console
            method = replace(case.build(), diagnose="record")
            findings: list = []

            def call(loss, params, tasks, method=method, findings=findings):
                out = method(loss, params, tasks)
                findings.extend(out.findings)
                return out

            row = evaluate(case, fd=fd, method=call)
            row["warnings"] = " | ".join(f"{f.kind}: {f.message[:80]}" for f in findings) or None
            rows.append(row)
        except Exception as err:  # a crash is a failed verification, shown in the table
            rows.append({"method": case.method, "problem": case.problem, "inner": case.inner,
                         "setting": case.setting, "meta_batch": case.meta_batch,
                         "variant": case.variant, "passed": False,
                         "error": f"{type(err).__name__}: {err}"})
    return pd.DataFrame(rows)


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.1e}"


COLUMNS = {
    "method": "method", "inner": "inner loop", "problem": "problem", "setting": "setting",
    "variant": "variant", "err_reference": "vs reference", "err_loss": "losses vs ref",
    "err_closed_form": "vs closed form", "err_fd": "vs finite diff",
    "err_hyper": "rates vs reference", "err_fd_hyper": "rates vs finite diff",
    "approx_error": "vs bilevel target", "passed": "pass",
}


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame()
    for col, label in COLUMNS.items():
        if col == "inner":  # the textbook loop, or the named variant
            out[label] = (["plain" if not isinstance(v, str) else v for v in df[col]]
                          if col in df else "plain")
        elif col not in df:
            out[label] = "n/a"
        elif col.startswith(("err_", "approx")):
            out[label] = [_fmt(v) for v in df[col]]
        elif col == "passed":
            out[label] = ["PASS" if v else "FAIL" for v in df[col]]
        else:
            out[label] = df[col]
    return out


def markdown_table(df: pd.DataFrame) -> str:
    return _markdown(display_frame(df))


def write_outputs(df: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / "verify.csv", out / "verify.md"
    df.to_csv(csv, index=False)
    failed = int((~df["passed"].astype(bool)).sum())
    md.write_text(
        "# metagrad verify\n\n"
        "Relative errors ‖a − b‖/‖b‖ of each public method's meta-gradient against its dense "
        "float64 reference (pass ≤ 1e-9), the closed form (linear regression, ≤ 1e-9), and "
        "central finite differences of the objective it is the gradient of (≤ 1e-7); for the "
        "inner-loop variants (learned step sizes, partial adaptation, momentum, Adam, the "
        "multi-step loss) also the meta-gradient with respect to the step sizes against its "
        "reference (≤ 1e-9) and finite differences (≤ 1e-7); the last error column is the "
        "approximation error against the bilevel-exact target (reported, not judged)."
        f"\n\n{len(df) - failed} passed, {failed} failed.\n\n"
        + markdown_table(df) + "\n")
    return csv, md
