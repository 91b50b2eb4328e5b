"""Diagnosis: which known mistake a wrong meta-gradient is.

When a target disagrees with the oracle, its output is compared with the oracle's values
of the usual wrong variants of the method (each defined by its equation in
:mod:`metagrad_reference.variants`, or a plain transformation of the correct value), and
the closest is named, with its relative error and whether it is a match to rounding:

    imaml on scalar+matrix, T=3, K=1: your result equals ∇L_val(φ), no linear solve, to
    2e-16 — the implicit correction (I + H/λ)⁻¹ is missing: the inner loop is treated as a
    constant

A variant that coincides with the correct value on a case (e.g. one inner step fewer at
K = 0) is left out there: it cannot be told apart from a correct result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import metagrad_reference as oracle
import torch
from metagrad_reference import variants as wrong
from torch import Tensor

from ..methods import METHOD_NAMES, is_implicit
from ..problems import Problem
from ..verify.compare import flat, reference_result, rel_error


@dataclass
class Context:
    """What the variants are computed from: the float64 problem, the method, its settings
    and the correct (reference) mean meta-gradient, flat."""

    problem: Problem
    method: str
    settings: dict[str, Any]
    reference: Tensor

    def mean(self, fn: Callable[..., Tensor], **changes: Any) -> Tensor:
        """(1/T) Σᵢ fn(f, θ, trainᵢ, valᵢ, **settings): a variant over the meta-batch."""
        f, theta = flat(self.problem)
        s = {**self.settings, **changes}
        return torch.stack([fn(f, theta, tr, val, **s)
                            for tr, val in self.problem.task_list()]).mean(0)

    def correct_at(self, **changes: Any) -> Tensor:
        """The method's correct value at other settings (e.g. one inner step fewer)."""
        return reference_result(self.problem, self.method, {**self.settings, **changes}).grad


@dataclass(frozen=True)
class Mistake:
    """A known wrong variant: ``title`` names the value, ``why`` says what the code did."""

    key: str
    methods: tuple[str, ...]
    title: str
    why: str
    compute: Callable[[Context], Tensor | None]


ALL = tuple(METHOD_NAMES)
GD = tuple(name for name in METHOD_NAMES if not is_implicit(name))
IMPLICIT = tuple(name for name in METHOD_NAMES if is_implicit(name))


def _count(ctx: Context, name: str, delta: int) -> Tensor | None:
    value = ctx.settings[name] + delta
    return None if value < 0 else ctx.correct_at(**{name: value})


MISTAKES: tuple[Mistake, ...] = (
    Mistake("first_order", ("maml",), "FOMAML's ∇L_val(φ)",
            "the inner loop is not differentiated (first-order MAML)",
            lambda c: c.mean(wrong.first_order)),
    Mistake("first_order", ("penalty",), "FOMAML's ∇L_val(φ)",
            "the penalty term 2λH(φ)∇L_tr(φ) is missing",
            lambda c: c.mean(wrong.first_order)),
    Mistake("first_order", IMPLICIT, "∇L_val(φ), no linear solve",
            "the implicit correction (I + H/λ)⁻¹ is missing: the inner loop is treated as a "
            "constant", lambda c: c.mean(wrong.implicit_first_order)),
    Mistake("second_order", ("fomaml",), "MAML's second-order gradient",
            "the inner loop is differentiated, which first-order MAML treats as a constant",
            lambda c: c.mean(wrong.second_order)),
    Mistake("unadapted", ALL, "∇L_val(θ)",
            "no inner adaptation: the validation loss is differentiated at θ",
            lambda c: c.mean(wrong.unadapted)),
    Mistake("sum", ALL, "the sum over tasks",
            "the per-task meta-gradients are summed, not averaged",
            lambda c: (c.reference * c.problem.meta_batch if c.problem.meta_batch > 1
                       else None)),
    Mistake("sign", ALL, "the negated meta-gradient", "the sign is wrong",
            lambda c: -c.reference),
    Mistake("steps-1", ALL, "the value for one inner step fewer",
            "one inner step is missing (K − 1 steps taken)",
            lambda c: _count(c, "steps", -1)),
    Mistake("steps+1", ALL, "the value for one inner step more",
            "one inner step too many (K + 1 steps taken)",
            lambda c: _count(c, "steps", +1)),
    Mistake("cg-1", ("imaml",), "m − 1 CG iterations", "CG ran one iteration too few",
            lambda c: _count(c, "cg_iters", -1)),
    Mistake("cg+1", ("imaml",), "m + 1 CG iterations", "CG ran one iteration too many",
            lambda c: _count(c, "cg_iters", +1)),
    Mistake("cg_stale", ("imaml",), "CG with the stale residual",
            "the next CG direction is built from the old residual, pₖ₊₁ = rₖ + βₖpₖ "
            "(conjugate gradient uses rₖ₊₁)", lambda c: c.mean(wrong.cg_stale_residual)),
    Mistake("cg_normal", ("imaml",), "CG on the normal equations A²x = Ab",
            "a different solver: CG on the normal equations has the same limit as CG on "
            "A = I + H/λ but different iterates", lambda c: c.mean(wrong.cg_normal_equations)),
    Mistake("no_lam", ("imaml",), "(H + λI)⁻¹∇L_val(φ) by m CG iterations",
            "the factor λ of λ(H + λI)⁻¹ is missing (the solve is on H + λI)",
            lambda c: c.mean(wrong.cg_without_lam)),
    Mistake("no_lam", ("neumann",), "the series for (H + λI)⁻¹∇L_val(φ)",
            "the factor λ of λ(H + λI)⁻¹ is missing (the series is on H + λI)",
            lambda c: c.mean(wrong.neumann_without_lam)),
    Mistake("non_alternating", ("neumann",), "the non-alternating series Σ(H/λ)ʲb",
            "a sign error: the Neumann series of (I − H/λ)⁻¹, not of (I + H/λ)⁻¹",
            lambda c: c.mean(wrong.neumann_non_alternating)),
    Mistake("terms-1", ("neumann",), "the series with J − 1 terms",
            "the Neumann series has one term too few", lambda c: _count(c, "terms", -1)),
    Mistake("terms+1", ("neumann",), "the series with J + 1 terms",
            "the Neumann series has one term too many", lambda c: _count(c, "terms", +1)),
    Mistake("exact_solve", IMPLICIT, "the exact solve (I + H/λ)⁻¹∇L_val(φ)",
            "the linear system is solved to convergence, not by the fixed number of "
            "iterations or terms", lambda c: c.mean(wrong.implicit_exact_solve)),
    Mistake("plain_inner", IMPLICIT, "the solve at φ from plain gradient descent",
            "the inner loop has no proximal term λ(φ − θ)",
            lambda c: c.mean(wrong.implicit_plain_inner)),
    Mistake("penalty_no_two", ("penalty",), "∇L_val(φ) + λH(φ)∇L_tr(φ)",
            "the factor 2 of ∇(λ‖∇L_tr‖²) = 2λH∇L_tr is missing",
            lambda c: c.mean(wrong.penalty_without_two)),
    Mistake("reptile_unscaled", ("reptile",), "(θ − φ)/α",
            "the displacement is divided by the inner step size",
            lambda c: c.mean(wrong.reptile_unscaled)),
)
"""Every known mistake, in the order ties are named."""


def _zero_tensor_mistakes(ctx: Context) -> list[tuple[Mistake, Tensor]]:
    """One candidate per tensor: the correct value with that tensor's block at zero."""
    params = ctx.problem.params
    if len(params) == 1:
        key = next(iter(params))
        return [(Mistake("zero", ALL, "zero", f"no gradient reaches '{key}': the result is "
                         "identically zero", lambda c: None), torch.zeros_like(ctx.reference))]
    out = []
    blocks = oracle.unflatten(ctx.reference, params)
    for key in params:
        value = oracle.flatten({k: torch.zeros_like(v) if k == key else v
                                for k, v in blocks.items()})
        out.append((Mistake(f"zero:{key}", ALL, f"the meta-gradient with '{key}' at zero",
                            f"no gradient reaches '{key}'", lambda c: None), value))
    return out


def candidates(ctx: Context) -> list[tuple[Mistake, Tensor]]:
    """The wrong variants that apply to the method and case, with their values."""
    out = []
    for mistake in MISTAKES:
        if ctx.method in mistake.methods:
            value = mistake.compute(ctx)
            if value is not None:
                out.append((mistake, value))
    return out + _zero_tensor_mistakes(ctx)


@dataclass
class Diagnosis:
    """The closest known mistake to a wrong result."""

    key: str | None = None
    title: str = ""
    why: str = ""
    error: float | None = None
    """Relative error of the result against the closest mistake's value."""
    match: bool = False
    """True when that error is within the tolerance: the result IS that mistake."""
    also: list[str] = field(default_factory=list)
    """Other mistakes the result matches as well (they coincide on this case)."""
    message: str = ""


def separations(ctx: Context, tol: float) -> dict[str, float]:
    """How far each applicable mistake is from the correct value on this case (relative
    error); the mistakes within ``tol`` of it are left out (they cannot be told apart)."""
    return {m.key: rel_error(v, ctx.reference) for m, v in candidates(ctx)
            if rel_error(v, ctx.reference) > tol}


def diagnose(result: Tensor, ctx: Context, tol: float, where: str,
             tensor_report: str = "") -> Diagnosis:
    """Name the known mistake closest to ``result`` (flat, any float dtype)."""
    scored = []
    for mistake, value in candidates(ctx):
        if rel_error(value, ctx.reference) <= tol:
            continue  # indistinguishable from the correct value here
        scored.append((rel_error(result, value), mistake))
    if not scored:
        return Diagnosis(message=f"{where}: your result is wrong and matches no known mistake"
                         + (f"; {tensor_report}" if tensor_report else ""))
    scored.sort(key=lambda pair: pair[0])
    error, best = scored[0]
    match = error <= tol
    diag = Diagnosis(best.key, best.title, best.why, error, match)
    if match:
        others = [m for e, m in scored[1:] if e <= tol]
        diag.also = [m.key for m in others]
        also = "".join(f"; it also equals {m.title} — {m.why}" for m in others)
        diag.message = (f"{where}: your result equals {best.title} to {error:.0e} — "
                        f"{best.why}{also}")
    else:
        diag.message = (f"{where}: your result matches no known mistake; the closest is "
                        f"{best.title} (relative error {error:.1e}: {best.why})"
                        + (f"; {tensor_report}" if tensor_report else ""))
    return diag


def per_tensor(result: dict[str, Tensor], reference: dict[str, Tensor], tol: float) -> str:
    """Which tensors are wrong: "wrong in 'scale' (rel. error 1.0, all zeros); right in …"."""
    wrong_keys, right = [], []
    for key, ref in reference.items():
        got = result[key].detach().double().reshape(-1)
        err = rel_error(got, ref)
        if err <= tol:
            right.append(f"'{key}'")
        else:
            zeros = bool((got == 0).all()) and bool((ref != 0).any())
            wrong_keys.append(f"'{key}' (rel. error {err:.1e}{', all zeros' if zeros else ''})")
    if not wrong_keys:
        return ""
    text = "wrong in " + ", ".join(wrong_keys)
    return text + (f"; right in {', '.join(right)}" if right else "")
