"""Report section: every method's meta-gradient on the sinusoid problem."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import pandas as pd

from .. import _pytree as pt
from .. import plotting
from .._app import markdown_table
from ..methods import METHODS, Method, is_implicit
from ..problems import make_problem
from ..timing import time_call

IMPLICIT_SETTINGS = {"lam": 20.0, "cg_iters": 10, "terms": 10, "step": 0.5}
"""The implicit methods' settings in this section. On these tasks the class defaults
(λ = 1, 5 iterations) are outside what the methods assume: the train-loss Hessian has
eigenvalues near −2.4, so I + H/λ is indefinite, and λ_max(H) ≈ 48 makes the Neumann
series with step 1 diverge. At λ = 20 with 10 iterations and Neumann step 0.5
(< 2/λ_max(I + H/λ) ≈ 0.58) both are healthy; the section also shows what the checks say
at the defaults."""


def report_methods(steps: int = 5, inner_lr: float = 0.01) -> list[Method]:
    """Every method in the registry's order (MAML first: its meta-gradient is the exact
    one), at its class defaults except the implicit methods (:data:`IMPLICIT_SETTINGS`).

    Parameters
    ----------
    steps : int
        K, the inner steps of every method.
    inner_lr : float
        α, the inner step size of every method.

    Returns
    -------
    list[Method]
        One configured method per registered name, with ``diagnose="record"``.
    """
    methods = []
    for name, cls in METHODS.items():
        extra: dict[str, Any] = (
            {k: v for k, v in IMPLICIT_SETTINGS.items() if k in cls.setting_names()}
            if is_implicit(name) else {})
        methods.append(cls(steps=steps, inner_lr=inner_lr, diagnose="record", **extra))
    return methods


def settings_text(method: Method) -> str:
    """The settings beyond ``steps`` and ``inner_lr``, as the report shows them.

    Parameters
    ----------
    method : Method
        A configured method.

    Returns
    -------
    str
        e.g. ``lam=20, cg_iters=10``; empty for a method with no other settings.
    """
    return ", ".join(f"{k}={getattr(method, k):g}" for k in method.setting_names()
                     if k not in ("steps", "inner_lr"))


def cosine(a: dict, b: dict) -> float:
    """The cosine of the angle between two gradients, flattened.

    Parameters
    ----------
    a, b : dict[str, Tensor]
        Gradients with the same keys and shapes.

    Returns
    -------
    float
        a·b / (‖a‖ ‖b‖).
    """
    fa, fb = pt.flatten(a), pt.flatten(b)
    return float(fa @ fb / (fa.norm() * fb.norm()))


def meta_gradients(ctx) -> str:
    """Report section: every method's meta-gradient on the sinusoid tasks, its losses,
    norm, cosine to MAML's exact meta-gradient and time, with a figure, and what the
    numerical checks say at the implicit methods' class defaults.

    Parameters
    ----------
    ctx : ReportContext
        The report's folder, device, seed and length.

    Returns
    -------
    str
        The section's markdown (``meta_gradients.csv`` and ``.png`` are written to
        ``ctx.out``).
    """
    problem = make_problem("sinusoid", seed=ctx.seed, device=ctx.device)
    loss, params, tasks = problem.loss, problem.params, problem.tasks
    rows = []
    exact = None
    notes = []
    methods = report_methods()
    for method in methods:
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
    settings = "; ".join(f"{m.name} `{settings_text(m)}`" for m in methods if settings_text(m))
    # What the checks say where the implicit methods' assumptions fail: their class defaults.
    defaults = []
    for name, cls in METHODS.items():
        if is_implicit(name):
            method = cls(steps=5, inner_lr=0.01, diagnose="record")
            found = method(loss, params, tasks).warnings
            defaults += [f"- **{name}** (`{settings_text(method)}`): {msg}" for msg in found]
    return (
        "## Meta-gradients on the sinusoid problem\n\n"
        f"25 sinusoid tasks (10 + 10 shots), MLP 1-40-40-1 ReLU, float32, `steps=5`, "
        f"`inner_lr=0.01`; {settings}. Cosine is against MAML's exact meta-gradient for the "
        "same tasks.\n\n"
        f"{table}\n\n![meta-gradients](meta_gradients.png)\n\n"
        + ("Numerical diagnoses (`metagrad.diagnose`) for these settings:\n\n" + "\n".join(notes)
           + "\n" if notes else "No numerical problems were diagnosed at these settings.\n")
        + ("\nAt the implicit methods' class defaults the checks say why those settings do not "
           "fit this network (each message names a setting that would):\n\n"
           + "\n".join(defaults) + "\n" if defaults else "")
    )
