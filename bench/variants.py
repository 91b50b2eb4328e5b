"""Method names used by the benchmarks → configured metagrad methods.

A *variant* is one of metagrad's methods with fixed options, e.g.
``maml-trajectory`` = ``MAML(backward="trajectory")``. Each variant names its
``family`` (the method whose cost model and exact target apply); the settings a
variant reads are its family's (``Method.setting_names``), so a grid never runs
two rows that differ only in an unused setting. Adding a variant is one entry
in :data:`VARIANTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import metagrad as mg
from metagrad.methods import METHOD_NAMES, method_class

AXES = ("steps", "lam", "cg_iters", "terms")
"""The settings a sweep varies (``inner_lr`` is one value per grid)."""


@dataclass(frozen=True)
class Variant:
    family: str
    options: dict[str, Any] = field(default_factory=dict)
    compiled: bool = False

    @property
    def method_class(self) -> type[mg.Method]:
        return method_class(self.family)


VARIANTS: dict[str, Variant] = {
    **{name: Variant(name) for name in METHOD_NAMES},
    "maml-trajectory": Variant("maml", {"backward": "trajectory"}),
    # √K-style checkpointing: every 10th iterate stored, segments recomputed in the sweep back.
    "maml-checkpoint10": Variant("maml", {"backward": "trajectory", "checkpoint": 10}),
    "maml-compiled": Variant("maml", compiled=True),
    "imaml-compiled": Variant("imaml", compiled=True),
}


def variant(name: str) -> Variant:
    """The variant ``name``: one of :data:`VARIANTS`, or any method in the registry (one
    registered after this module was imported included)."""
    if name in VARIANTS:
        return VARIANTS[name]
    if name in mg.METHODS:
        return Variant(name)
    raise ValueError(f"unknown method {name!r}; choose from "
                     f"{', '.join(dict.fromkeys([*VARIANTS, *mg.METHOD_NAMES]))}")


def settings(name: str, *, steps: int, lam: float | None = None, cg_iters: int | None = None,
             terms: int | None = None) -> dict[str, Any]:
    """The settings of variant ``name`` that matter, the others as None (empty in CSV)."""
    reads = variant(name).method_class.setting_names()
    values = {"steps": steps, "lam": lam, "cg_iters": cg_iters, "terms": terms}
    return {k: (v if k in reads else None) for k, v in values.items()}


def make(name: str, *, steps: int, inner_lr: float, lam: float | None = None,
         cg_iters: int | None = None, terms: int | None = None) -> tuple[mg.Method, Callable]:
    """``(method, fn)``: the configured method (cost model, config, numerical diagnostics)
    and the callable to time, ``fn(loss, params, tasks) -> MetaGradient``, the same method
    with ``diagnose="off"`` (compiled for ``*-compiled``)."""
    v = variant(name)
    s = settings(name, steps=steps, lam=lam, cg_iters=cg_iters, terms=terms)
    kwargs: dict[str, Any] = {"inner_lr": inner_lr, **v.options,
                              **{k: val for k, val in s.items() if val is not None}}
    method = v.method_class(**kwargs)
    # What is timed is the computation: the Python-side numerical checks (and the power
    # iteration they run when a problem is found) stay out of it, as in `metagrad report`.
    quiet = replace(method, diagnose="off")
    fn: Callable = mg.compile(quiet) if v.compiled else quiet
    return method, fn
