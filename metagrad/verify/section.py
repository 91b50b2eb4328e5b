"""Report section: the verification table summary and approximation-error figures."""

from __future__ import annotations

import pandas as pd

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


def _fixed(part: pd.DataFrame, varied: str) -> str:
    """The settings held fixed in one panel, as ``steps=100, lam=2``; ``inner_lr`` that
    follows λ (the fastest convergent proximal step, 2/(2λ + lo + hi)) is said so."""
    said = []
    for key in ("steps", "inner_lr", "lam", "cg_iters", "terms"):
        if key == varied or key not in part:
            continue
        values = sorted(set(part[key].dropna()))
        if len(values) == 1:
            said.append(f"{key}={values[0]:g}")
        elif key == "inner_lr" and varied == "lam":
            said.append("inner_lr=2/(2λ+lo+hi)")
        elif values:  # e.g. lam: the implicit methods' and the penalty's
            said.append(f"{key}={' or '.join(f'{v:g}' for v in values)}")
    return ", ".join(said)


def _figure(level2: pd.DataFrame, path):
    plotting.setup()
    colors = plotting.palette()
    fig, axes = plotting.plt.subplots(2, 2, figsize=(12, 8))
    for ax, (name, label) in zip(axes.flat, SWEEP_LABELS.items()):
        part = level2[level2.sweep == name].copy()
        part["approx_error"] = part["approx_error"].clip(lower=1e-17)
        # Dashes and markers per method too: IMAML and Neumann coincide where both converge.
        plotting.sns.lineplot(part, x=name, y="approx_error", hue="method", style="method",
                              markers=True, palette={m: colors[m] for m in part.method.unique()},
                              ax=ax)
        ax.set_yscale("log")
        if name == "lam":
            ax.set_xscale("log")
        plotting.value_ticks(ax, part[name])
        plotting.plain_log_labels(ax, "y")
        ax.set_xlabel(label)
        ax.set_ylabel("relative error vs bilevel target")
        ax.set_title(_fixed(part, name), fontsize=9)
        ax.legend(fontsize=7)
    problems = ", ".join(sorted(level2.problem.unique()))
    fig.suptitle(f"approximation error, one setting varied at a time ({problems})")
    return plotting.save(fig, path)
