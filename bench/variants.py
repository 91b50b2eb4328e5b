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
from metagrad._forms import forms_kwargs
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


PLAIN = "plain"
"""The ``--inner`` value of the plain inner loop (every parameter, gradient descent at one
``inner_lr``); written as an empty ``inner`` cell."""


def inner_forms(value: str | None) -> tuple[str, ...]:
    """The forms of an ``inner`` value: ``"per_step+adam"`` → ``("per_step", "adam")`` in
    the order of ``mg.INNER_FORMS``; ``"plain"``, ``""`` or None → ``()``. An unknown form
    is a ``ValueError`` naming the known ones."""
    if value is None or value in ("", PLAIN):
        return ()
    names = value.split("+")
    for form in names:
        if form not in mg.INNER_FORMS:
            raise ValueError(f"unknown inner-loop form {form!r} in {value!r}; choose from "
                             f"{PLAIN}, {', '.join(mg.INNER_FORMS)} (join forms with +)")
    return tuple(n for n in mg.INNER_FORMS if n in names)


def inner_label(value: str | None) -> str:
    """One spelling per combination of forms (the CSV's ``inner`` cell): empty for plain."""
    return "+".join(inner_forms(value))


def runs_form(name: str, value: str | None) -> str | None:
    """None when variant ``name`` can run the inner-loop forms ``value``, else why not."""
    cls = variant(name).method_class
    for form in inner_forms(value):
        why = mg.INNER_FORMS[form].applies_to(cls)
        if why is not None:
            return f"{form}: {why}"
    return None


def make(name: str, *, steps: int, inner_lr: float, lam: float | None = None,
         cg_iters: int | None = None, terms: int | None = None, inner: str | None = None,
         params: Any = None) -> tuple[mg.Method, Callable]:
    """``(method, fn)``: the configured method (cost model, config, numerical diagnostics)
    and the callable to time, ``fn(loss, params, tasks) -> MetaGradient``, the same method
    with ``diagnose="off"`` (compiled for ``*-compiled``). ``inner``: inner-loop forms
    (:func:`inner_forms`), built on ``params`` (the problem's parameters: the rates take
    their dtype and device); rates are learned (require grad) where the method has a
    meta-gradient for them."""
    v = variant(name)
    s = settings(name, steps=steps, lam=lam, cg_iters=cg_iters, terms=terms)
    kwargs: dict[str, Any] = {"inner_lr": inner_lr, **v.options,
                              **{k: val for k, val in s.items() if val is not None}}
    forms = inner_forms(inner)
    if forms:
        if params is None:
            raise ValueError(f"inner-loop forms {inner!r} need the problem's parameters")
        kwargs.update(forms_kwargs(forms, params, steps, inner_lr,
                                   learn=v.method_class.hyper_gradient is not None))
    method = v.method_class(**kwargs)
    # What is timed is the computation: the Python-side numerical checks (and the power
    # iteration they run when a problem is found) stay out of it, as in `metagrad report`.
    quiet = replace(method, diagnose="off")
    fn: Callable = mg.compile(quiet) if v.compiled else quiet
    return method, fn
