"""Report section: every method's meta-gradient on the sinusoid problem."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pandas as pd

from .. import _pytree as pt
from .. import plotting
from .._app import markdown_table
from ..methods import METHODS, Method
from ..problems import make_problem
from ..timing import time_call


def default_methods(steps: int = 5, inner_lr: float = 0.01) -> list[Method]:
    """Every method at its class defaults (λ = 1, 5 CG iterations, 5 Neumann terms, penalty
    λ = 0.1), in the registry's order (MAML first: its meta-gradient is the exact one)."""
    return [cls(steps=steps, inner_lr=inner_lr, diagnose="record") for cls in METHODS.values()]


def cosine(a: dict, b: dict) -> float:
    fa, fb = pt.flatten(a), pt.flatten(b)
    return float(fa @ fb / (fa.norm() * fb.norm()))


def meta_gradients(ctx) -> str:
    problem = make_problem("sinusoid", seed=ctx.seed, device=ctx.device)
    loss, params, tasks = problem.loss, problem.params, problem.tasks
    rows = []
    exact = None
    notes = []
    for method in default_methods():
        out = method(loss, params, tasks)  # diagnose="record": findings go to the table
        notes += [f"- **{method.name}**: {msg}" for msg in out.warnings]
        if exact is None:  # MAML comes first: its meta-gradient is the exact one
            exact = out.grad
        quiet = replace(method, diagnose="off")  # time the computation, not the checks
        timing = time_call(partial(quiet, loss, params, tasks), ctx.device,
                           repeats=5 if ctx.quick else 20)
        rows.append({
            "method": method.name,
            "pre_update_loss": float(out.pre_update_loss),
            "post_update_loss": float(out.post_update_loss),
            "grad_norm": float(pt.norm(out.grad)),
            "cosine_to_maml": cosine(out.grad, exact),
            "time_ms": 1e3 * timing.median_s,
            "warnings": len(out.warnings),
        })
    df = pd.DataFrame(rows)
    df.to_csv(ctx.out / "meta_gradients.csv", index=False)

    plotting.setup()
    fig, axes = plotting.plt.subplots(1, 2, figsize=(10, 3.6))
    colors = plotting.palette()
    plotting.sns.barplot(df, x="method", y="cosine_to_maml", hue="method", palette=colors,
                         ax=axes[0], legend=False)
    axes[0].set_ylim(min(0.0, df.cosine_to_maml.min() - 0.05), 1.02)
    axes[0].set_title("cosine to the exact MAML meta-gradient")
    plotting.sns.barplot(df, x="method", y="time_ms", hue="method", palette=colors, ax=axes[1],
                         legend=False)
    axes[1].set_title(f"median time per meta-gradient ({ctx.device})")
    axes[1].set_ylabel("ms")
    plotting.save(fig, ctx.out / "meta_gradients.png")

    table = markdown_table(df)
    return (
        "## Meta-gradients on the sinusoid problem\n\n"
        "25 sinusoid tasks (10 + 10 shots), MLP 1-40-40-1 ReLU, float32, `steps=5`, "
        "`inner_lr=0.01`; IMAML `lam=1, cg_iters=5`, Neumann `lam=1, terms=5`, Penalty "
        "`lam=0.1`. Cosine is against MAML's exact meta-gradient for the same tasks.\n\n"
        f"{table}\n\n![meta-gradients](meta_gradients.png)\n\n"
        + ("Numerical diagnoses (`metagrad.diagnose`) for these settings:\n\n" + "\n".join(notes)
           + "\n" if notes else "No numerical problems were diagnosed.\n")
    )
