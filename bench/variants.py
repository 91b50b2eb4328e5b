"""Method names used by the benchmarks → configured metagrad methods.

A *variant* is one of metagrad's six methods with fixed options, e.g.
``maml-trajectory`` = ``MAML(backward="trajectory")``. Each variant names its
``family`` (the method whose cost model and exact target apply) and the axes it
uses, so a grid never runs two rows that differ only in an unused setting.
Adding a variant is one entry in :data:`VARIANTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import metagrad as mg

# The settings each method family reads; the rest are left empty in CSV rows.
AXES: dict[str, tuple[str, ...]] = {
    "maml": ("steps",),
    "fomaml": ("steps",),
    "reptile": ("steps",),
    "imaml": ("steps", "lam", "cg_iters"),
    "neumann": ("steps", "lam", "terms"),
    "penalty": ("steps", "lam"),
}


@dataclass(frozen=True)
class Variant:
    family: str
    options: dict[str, Any] = field(default_factory=dict)
    compiled: bool = False

    @property
    def available(self) -> bool:
        return not self.compiled or hasattr(mg, "compile")


VARIANTS: dict[str, Variant] = {
    "maml": Variant("maml"),
    "fomaml": Variant("fomaml"),
    "reptile": Variant("reptile"),
    "imaml": Variant("imaml"),
    "neumann": Variant("neumann"),
    "penalty": Variant("penalty"),
    "maml-trajectory": Variant("maml", {"backward": "trajectory"}),
    # √K-style checkpointing: every 10th iterate stored, segments recomputed in the sweep back.
    "maml-checkpoint10": Variant("maml", {"backward": "trajectory", "checkpoint": 10}),
    "maml-compiled": Variant("maml", compiled=True),
    "imaml-compiled": Variant("imaml", compiled=True),
}


def available_variants() -> list[str]:
    return [name for name, v in VARIANTS.items() if v.available]


def settings(name: str, *, steps: int, lam: float | None = None, cg_iters: int | None = None,
             terms: int | None = None) -> dict[str, Any]:
    """The settings of variant ``name`` that matter, the others as None (empty in CSV)."""
    axes = AXES[variant(name).family]
    values = {"steps": steps, "lam": lam, "cg_iters": cg_iters, "terms": terms}
    return {k: (v if k in axes else None) for k, v in values.items()}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(VARIANTS)}")
    v = VARIANTS[name]
    if not v.available:
        raise NotImplementedError(f"{name}: this metagrad has no mg.compile")
    return v


def make(name: str, *, steps: int, inner_lr: float, lam: float | None = None,
         cg_iters: int | None = None, terms: int | None = None) -> tuple[mg.Method, Callable]:
    """``(method, fn)``: the configured method (cost model, config, numerical diagnostics)
    and the callable to time, ``fn(loss, params, tasks) -> MetaGradient``, the same method
    with ``diagnose="off"`` (compiled for ``*-compiled``)."""
    v = variant(name)
    kwargs: dict[str, Any] = {"steps": steps, "inner_lr": inner_lr, **v.options}
    s = settings(name, steps=steps, lam=lam, cg_iters=cg_iters, terms=terms)
    for key in ("lam", "cg_iters", "terms"):
        if s[key] is not None:
            kwargs[key] = s[key]
    method = mg.METHODS[v.family](**kwargs)
    # What is timed is the computation: the Python-side numerical checks (and the power
    # iteration they run when a problem is found) stay out of it, as in `metagrad report`.
    quiet = replace(method, diagnose="off")
    fn: Callable = mg.compile(quiet) if v.compiled else quiet  # type: ignore[attr-defined]
    return method, fn
