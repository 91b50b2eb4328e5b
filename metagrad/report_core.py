"""Report section: every method's meta-gradient on the sinusoid problem."""

from __future__ import annotations

import warnings
from dataclasses import replace
from functools import partial

import pandas as pd
from torch.nn import functional as F

from . import _pytree as pt
from . import plotting
from ._module import module_loss, params_of
from .diagnose import MetaGradientWarning
from .distributions import Sinusoid
from .methods import FOMAML, IMAML, MAML, Neumann, Penalty, Reptile
from .models import mlp
from .timing import time_call


def default_methods(steps: int = 5, inner_lr: float = 0.01):
    return [
        MAML(steps=steps, inner_lr=inner_lr),
        FOMAML(steps=steps, inner_lr=inner_lr),
        Reptile(steps=steps, inner_lr=inner_lr),
        IMAML(steps=steps, inner_lr=inner_lr, lam=1.0, cg_iters=5),
        Neumann(steps=steps, inner_lr=inner_lr, lam=1.0, terms=5),
        Penalty(steps=steps, inner_lr=inner_lr, lam=0.1),
    ]


def cosine(a: dict, b: dict) -> float:
    fa, fb = pt.flatten(a), pt.flatten(b)
    return float(fa @ fb / (fa.norm() * fb.norm()))


def meta_gradients(ctx) -> str:
    model = mlp((1, 40, 40, 1), seed=ctx.seed, device=ctx.device)
    loss = module_loss(model, F.mse_loss)
    params = params_of(model)
    tasks = Sinusoid().sample(25, seed=ctx.seed, device=ctx.device)
    rows = []
    exact = None
    notes = []
    for method in default_methods():
        with warnings.catch_warnings():
            # The diagnoses are reported in the table below rather than on the console.
            warnings.simplefilter("ignore", MetaGradientWarning)
            out = method(loss, params, tasks)
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

    table = df.to_markdown(index=False, floatfmt=".4g") if _has_tabulate() else df.to_string()
    return (
        "## Meta-gradients on the sinusoid problem\n\n"
        "25 sinusoid tasks (10 + 10 shots), MLP 1-40-40-1 ReLU, float32, `steps=5`, "
        "`inner_lr=0.01`; IMAML `lam=1, cg_iters=5`, Neumann `lam=1, terms=5`, Penalty "
        "`lam=0.1`. Cosine is against MAML's exact meta-gradient for the same tasks.\n\n"
        f"{table}\n\n![meta-gradients](meta_gradients.png)\n\n"
        + ("Numerical diagnoses (`metagrad.diagnose`) for these settings:\n\n" + "\n".join(notes)
           + "\n" if notes else "No numerical problems were diagnosed.\n")
    )


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
