"""Report section: the verification table summary and approximation-error figures."""

from __future__ import annotations

import pandas as pd
from matplotlib.ticker import ScalarFormatter

from .. import plotting
from .._app import markdown_table
from .level2 import QUICK_PROBLEMS as L2_QUICK
from .level2 import SWEEP_PROBLEMS, sweep
from .table import ALL_PROBLEMS, QUICK_PROBLEMS, default_cases, run_cases

SWEEP_LABELS = {"steps": "inner steps K (steps)", "lam": "λ (lam)",
                "cg_iters": "CG iterations m (cg_iters)", "terms": "Neumann depth J (terms)"}


def verify_section(ctx) -> str:
    """Level 1 table summary (quick: small problems, no finite differences on the MLP)
    and Level 2 figures of approximation error vs K, λ, cg_iters and terms."""
    problems = QUICK_PROBLEMS if ctx.quick else ALL_PROBLEMS
    df = run_cases(default_cases(problems), fd=True, progress=False)
    df.to_csv(ctx.out / "verify.csv", index=False)
    level2 = pd.DataFrame(sweep(L2_QUICK if ctx.quick else SWEEP_PROBLEMS))
    level2.to_csv(ctx.out / "verify_level2.csv", index=False)
    figure = _figure(level2, ctx.out / "verify_approx_error.png")

    failed = int((~df["passed"].astype(bool)).sum())
    summary = (df.groupby("method", sort=False)
               .agg(cases=("passed", "size"), passed=("passed", "sum"),
                    max_err_reference=("err_reference", "max"),
                    max_err_fd=("err_fd", "max"))
               .reset_index())
    for col in ("max_err_reference", "max_err_fd"):
        summary[col] = [f"{v:.1e}" if v == v else "n/a" for v in summary[col]]  # NaN: no FD
    table = markdown_table(summary)
    return (
        "## Verification against the exact oracle\n\n"
        f"`metagrad verify` on {', '.join(problems)} (float64): {len(df) - failed} of {len(df)} "
        "cases pass (relative error ≤ 1e-9 against the dense reference and closed forms, "
        "≤ 1e-7 against central finite differences). Maximum errors per method:\n\n"
        f"{table}\n\n"
        "Approximation error against the bilevel-exact target (MAML's meta-gradient for "
        "FOMAML, Reptile and Penalty; the implicit gradient for IMAML and Neumann), one setting "
        f"varied at a time on {', '.join(sorted(level2.problem.unique()))}:\n\n"
        f"![approximation error]({figure.name})\n"
    )


def _figure(level2: pd.DataFrame, path):
    plotting.setup()
    colors = plotting.palette()
    fig, axes = plotting.plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (name, label) in zip(axes.flat, SWEEP_LABELS.items()):
        part = level2[level2.sweep == name].copy()
        part["approx_error"] = part["approx_error"].clip(lower=1e-17)
        plotting.sns.lineplot(part, x=name, y="approx_error", hue="method", style="problem",
                              palette={m: colors[m] for m in part.method.unique()}, marker="o",
                              ax=ax)
        ax.set_yscale("log")
        if name == "lam":
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(sorted(part.lam.unique()))
            ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("relative error vs bilevel target")
        ax.legend(fontsize=7)
    return plotting.save(fig, path)
