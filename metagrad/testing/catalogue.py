"""The catalogue of known mistakes: one row per deviation that meta-gradient code has shipped.

A row is data. It says what the wrong value is (``title``), what the code did (``why``),
and how the oracle computes it, in one of three ways:

* ``options``: keyword options of the method's family in :mod:`metagrad_reference.variants`
  (``unrolled`` or ``implicit``; a method names its family and its own options there in
  ``audit_family``), merged onto the method's own: e.g. ``{"graph": "none"}`` is MAML
  with no inner step differentiated. Rows on different ``axis`` combine, so that
  "a plain inner loop, one pull-back step and a damped system" is three rows at once.
* ``transform``: a change of the inputs or of the output that any method can suffer,
  applied to the method's own oracle (its reference, or its family with the other rows'
  options): ``"query"`` (the validation batch in the inner loop), a setting one higher or
  lower (``"steps-1"``, ``"cg_iters+1"``, …), ``"sum"`` (the sum over tasks), ``"sign"``.
* ``absolute``: a value that replaces the result outright (∇L_val(θ), all zeros); these
  do not combine.

``free`` lists parameters the diagnosis fits (the damping c and δ, a warm start's weight
w): the message reports their values. Which family rows apply to a method is the method's
``audit_mistakes`` (the generic rows apply to every method); rows named ``detached`` and
``zero`` are expanded per parameter tensor (``detached:layer.weight``).

**Inner-loop variants** (learned rates, momentum, Adam, the multi-step loss): the unrolled
family is then :func:`metagrad_reference.inner_variants.unrolled`, which also gives the
rate-gradient; the family rows whose options it takes still apply, and so do the
:data:`INNER` rows whose ``needs`` the audit has (``learned``: a rate-gradient is checked;
``exact``: the method's is MAML's exact one; ``step_rates``: a per-step rate; ``rates``:
rate tensors; ``stateful``, ``momentum``, ``heavy_ball``, ``nesterov``, ``adam``: the update
rule). A result that includes the rate-gradient is compared part by part: a candidate is
as far from it as its farther part.

To add a variant: add its equation as an option of a family in
:mod:`metagrad_reference.variants`, one :class:`Mistake` row here, and its key to the
``audit_mistakes`` of the methods it applies to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Free:
    """A parameter of a deviation fitted to the result: ``option`` of the family, written
    ``symbol`` in messages, searched from each of ``starts``; ``typical`` is the value seen
    in public code (used where nothing is fitted: how far the row is from the correct
    value); ``lower`` (a number, or ``"-lam"``) bounds it from below, strictly."""

    option: str
    symbol: str
    starts: tuple[float, ...]
    typical: float
    lower: str | float | None = None
    grid: tuple[float, ...] = ()
    """For a parameter the value depends on in steps (a stopping tolerance): the values
    tried, instead of a continuous fit."""


@dataclass(frozen=True)
class Mistake:
    """One known deviation (module docstring)."""

    key: str
    title: str
    """The wrong value, in words; ``{c}``-style fields are filled with fitted values."""
    why: str
    """What the code did."""
    axis: str
    """Rows on one axis exclude each other when combined."""
    options: Mapping[str, Any] = field(default_factory=dict)
    transform: str | None = None
    absolute: str | None = None
    free: tuple[Free, ...] = ()
    generic: bool = False
    """Applies to every method (a transform or an absolute value), not only those whose
    ``audit_mistakes`` list it."""
    needs: tuple[str, ...] = ()
    """For the inner-loop rows (:data:`INNER`): what the audited variant must have for the
    row to apply (module docstring)."""

    @property
    def combines(self) -> bool:
        return self.absolute is None


COUNT_WORDS = {
    "steps": ("inner step", "inner steps"),
    "cg_iters": ("CG iteration", "CG iterations"),
    "terms": ("Neumann term", "Neumann terms"),
}
"""How an off-by-one in an integer setting reads (settings absent here read by name)."""


def count_rows(setting: str) -> tuple[Mistake, Mistake]:
    """``<setting>-1`` and ``<setting>+1``: the method's own value at the setting ± 1."""
    one, many = COUNT_WORDS.get(setting, (f"unit of {setting}", f"units of {setting}"))
    return (Mistake(f"{setting}-1", f"the value for one {one} fewer",
                    f"one {one} is missing ({setting} − 1 {many} taken)", axis=setting,
                    transform=f"{setting}-1", generic=True),
            Mistake(f"{setting}+1", f"the value for one {one} more",
                    f"one {one} too many ({setting} + 1 {many} taken)", axis=setting,
                    transform=f"{setting}+1", generic=True))


TOLERANCES = tuple(10.0 ** -k for k in range(2, 17))
"""The stopping tolerances on ‖r‖ tried for a CG that stops early (the iterates it returns
change only where a task's stopping iteration does)."""

GENERIC: tuple[Mistake, ...] = (
    Mistake("query_inner", "the value with the validation (query) batch in the inner loop",
            "the inner loop adapts on the validation batch instead of the train (support) "
            "batch", axis="batch", transform="query", generic=True),
    Mistake("sum", "the sum over tasks", "the per-task meta-gradients are summed, not "
            "averaged", axis="reduce", transform="sum", generic=True),
    Mistake("sign", "the negated meta-gradient", "the sign is wrong", axis="sign",
            transform="sign", generic=True),
    Mistake("unadapted", "∇L_val(θ)", "no inner adaptation: the validation loss is "
            "differentiated at θ", axis="whole", absolute="unadapted", generic=True),
    Mistake("zeros", "all zeros", "the result is identically zero: no gradient reached "
            "any parameter (a detached graph, or gradients read before they were written)",
            axis="whole", absolute="zeros", generic=True),
    Mistake("zero", "the meta-gradient with '{tensor}' at zero", "no gradient reaches "
            "'{tensor}'", axis="zero", transform="zero", generic=True),
)
"""Rows for every method: transforms of its own value, and absolute values."""

FAMILY: tuple[Mistake, ...] = (
    # -- the unrolled family: MAML, first-order MAML, Reptile, the penalty method --------------
    Mistake("first_order", "FOMAML's ∇L_val(φ)", "the inner loop is not differentiated "
            "(first-order MAML)", axis="graph", options={"graph": "none"}),
    Mistake("second_order", "MAML's second-order gradient", "the inner loop is "
            "differentiated, which first-order MAML treats as a constant", axis="graph",
            options={"graph": "all"}),
    Mistake("graph_first_step", "MAML differentiated through the first inner step only",
            "only the first inner step is differentiated (create_graph=True on the first "
            "inner gradient only; the later steps' gradients are constants)", axis="graph",
            options={"graph": "first"}),
    Mistake("detached", "MAML with the inner gradient of '{tensor}' detached",
            "the inner updates of '{tensor}' are not differentiated (its inner gradient is "
            "detached, or taken without create_graph), the other tensors' are",
            axis="graph", options={"detached": "{tensor}"}),
    Mistake("last_step_squared", "the value with step size α² on the last inner step",
            "the step size is applied twice on the last inner step (α·α·∇L_tr)",
            axis="rates", options={"rates": "last_squared"}),
    Mistake("last_step_doubled", "the value with step size 2α on the last inner step",
            "the last inner step is taken twice as long (2α·∇L_tr, e.g. the update "
            "applied twice)", axis="rates", options={"rates": "last_doubled"}),
    Mistake("displacement_early", "the displacement θ − θ⁽ᴷ⁻¹⁾",
            "the displacement is read one step early, before the last inner update",
            axis="read", options={"read_back": 1}),
    Mistake("reptile_unscaled", "(θ − φ)/α", "the displacement is divided by the inner step "
            "size", axis="scale", options={"displacement_scale": "1/inner_lr"}),
    Mistake("no_penalty_term", "FOMAML's ∇L_val(φ)", "the penalty term 2λH(φ)∇L_tr(φ) is "
            "missing", axis="penalty", options={"penalty_factor": 0.0}),
    Mistake("penalty_no_two", "∇L_val(φ) + λH(φ)∇L_tr(φ)", "the factor 2 of "
            "∇(λ‖∇L_tr‖²) = 2λH∇L_tr is missing", axis="penalty",
            options={"penalty_factor": 1.0}),
    # -- the implicit family: iMAML, the Neumann series -----------------------------------
    Mistake("no_solve", "∇L_val(φ), no linear solve", "the implicit correction (I + H/λ)⁻¹ "
            "is missing: the inner loop is treated as a constant", axis="system",
            options={"system": "none"}),
    Mistake("no_lam", "the solve on H + λI", "the factor λ of λ(H + λI)⁻¹ is missing (the "
            "system is H + λI, not I + H/λ)", axis="system", options={"system": "no_lam"}),
    Mistake("damped", "the damped system (1 + c)I + H/(λ + δ) with c = {c:.4g}, δ = {d:.4g}",
            "the linear system is damped: (1 + c)I + H/(λ + δ) instead of I + H/λ",
            axis="system", options={"system": "standard"},
            free=(Free("damping", "c", (0.0, 1.0), typical=1.0, lower=-1.0),
                  Free("lam_damping", "d", (0.0, 10.0), typical=10.0, lower="-lam"))),
    Mistake("non_alternating", "the non-alternating series Σ(H/λ)ʲb", "a sign error: the "
            "Neumann series of (I − H/λ)⁻¹, not of (I + H/λ)⁻¹", axis="system",
            options={"system": "flipped"}),
    Mistake("exact_solve", "the exact solve (I + H/λ)⁻¹∇L_val(φ)", "the linear system is "
            "solved to convergence, not by the fixed number of iterations or terms",
            axis="solver", options={"exact": True}),
    Mistake("cg_stale", "CG with the stale residual", "the next CG direction is built from "
            "the old residual, pₖ₊₁ = rₖ + βₖpₖ (conjugate gradient uses rₖ₊₁)",
            axis="solver", options={"cg": "stale"}),
    Mistake("cg_normal", "CG on the normal equations A²x = Ab", "a different solver: CG on "
            "the normal equations has the same limit as CG on A = I + H/λ but different "
            "iterates", axis="solver", options={"cg": "normal"}),
    Mistake("cg_warm_start", "CG started from x₀ = w·∇L_val(φ) with w = {w:.4g}",
            "CG is warm-started at a multiple of its right-hand side (x₀ = b for w = 1), "
            "not at x₀ = 0", axis="start", options={},
            free=(Free("start", "w", (1.0, 0.5), typical=1.0),)),
    Mistake("cg_tolerance", "CG stopped early once ‖r‖ < ε (ε ≈ {e:.0e})", "CG also stops on a "
            "residual tolerance, so it runs fewer than the m iterations asked for",
            axis="stop", options={},
            free=(Free("tol", "e", (), typical=1e-5, grid=TOLERANCES),)),
    Mistake("cg_tolerance_previous", "CG stopped once ‖r‖ < ε, returning the iterate before "
            "(ε ≈ {e:.0e})", "CG stops on a residual tolerance and returns the iterate from "
            "before the update that met it (the update is computed, then dropped)",
            axis="stop", options={"tol_returns_previous": True},
            free=(Free("tol", "e", (), typical=1e-10, grid=TOLERANCES),)),
    Mistake("plain_inner", "the solve at φ from plain gradient descent", "the inner loop has "
            "no proximal term λ(φ − θ)", axis="inner", options={"inner": "plain"}),
    Mistake("pullback", "the solve at φ after an extra pull-back step φ ← φ − αλ(φ − θ)",
            "the inner loop ends with one more step on λ/2‖φ − θ‖² alone (a \"pull-back\" "
            "toward θ)", axis="pullback", options={"pullback": True}),
)
"""Rows of the two families; each method lists those that apply (``audit_mistakes``)."""

INNER: tuple[Mistake, ...] = (
    # -- the rate-gradient ------------------------------------------------------------------
    Mistake("rate_first_order", "the first-order rate-gradient −Σₖ uₖ ⊙ ∇L_val(φ) (no "
            "second-order term)", "the rate-gradient holds every inner gradient constant (the "
            "first-order form of Li et al. 2017) where MAML's exact one differentiates "
            "through them", axis="rate_graph", options={"rate_graph": "none"},
            needs=("learned", "exact")),
    Mistake("rates_late", "the value with the rates applied one step late (step k uses "
            "α_{k−1}, the first step α_{K−1})", "the per-step rates are indexed one step "
            "late (rates[k − 1]): each step is taken with the previous step's rate, the "
            "first with the last one", axis="rate_index", options={"rate_shift": 1},
            needs=("step_rates",)),
    Mistake("rate_steps_summed", "the per-step rate-gradient summed over the steps",
            "every step's rate is given the derivative summed over all steps (the per-step "
            "rates' gradients pooled as if one rate were shared by the steps)",
            axis="rate_steps", options={"rate_steps": "summed"},
            needs=("learned", "step_rates")),
    Mistake("rates_detached", "a zero rate-gradient", "no gradient reaches the rates (they "
            "are detached: .detach(), .item() or a float copy in the inner step)",
            axis="rate_scale", options={"rate_scale": 0.0}, needs=("learned",)),
    Mistake("rate_sign", "the negated rate-gradient", "the rate-gradient has the wrong sign",
            axis="rate_scale", options={"rate_scale": -1.0}, needs=("learned",)),
    Mistake("rate_entries_mean", "the rate-gradient averaged over the entries a rate covers",
            "a rate shared by several entries gets the mean of their derivatives, not the sum "
            "the chain rule gives", axis="rate_entries", options={"rate_entries": "mean"},
            needs=("learned",)),
    # -- the update rule --------------------------------------------------------------------
    Mistake("state_carried", "the value with the inner optimizer's state carried over from "
            "the previous task", "the optimizer state (momentum buffer; Adam's moments and "
            "step count) is not reset per task: each task starts from the state the previous "
            "task left, and the meta-gradient flows back through it (one backward through "
            "the mean loss)", axis="carry", options={"carry": "differentiated"},
            needs=("stateful",)),
    Mistake("state_carried_detached", "the value with the inner optimizer's state carried "
            "over from the previous task, as a constant", "the optimizer state is not reset "
            "per task: each task starts from the state the previous task left (detached)",
            axis="carry", options={"carry": "detached"}, needs=("stateful",)),
    Mistake("nesterov_as_heavy_ball", "the heavy-ball value, uₖ = bₖ₊₁", "Nesterov momentum "
            "is written as the heavy ball: the step uses the buffer bₖ₊₁, not gₖ + βbₖ₊₁",
            axis="rule", options={"kind": "momentum"}, needs=("nesterov",)),
    Mistake("heavy_ball_as_nesterov", "the Nesterov value, uₖ = gₖ + βbₖ₊₁", "the heavy ball "
            "is written as Nesterov momentum (gₖ + βbₖ₊₁ instead of bₖ₊₁)", axis="rule",
            options={"kind": "nesterov"}, needs=("heavy_ball",)),
    Mistake("momentum_ema", "momentum as an average, b ← βb + (1 − β)g", "the momentum "
            "buffer is an exponential moving average, not torch.optim.SGD's sum b ← βb + g "
            "(every step (1 − β) times shorter)", axis="ema", options={"ema": True},
            needs=("momentum",)),
    Mistake("adam_no_bias_correction", "Adam without bias correction, u = m/(√v + ε)",
            "Adam's moments are used without the corrections 1 − β₁ᵗ, 1 − β₂ᵗ",
            axis="adam_bias", options={"bias_correction": False}, needs=("adam",)),
    Mistake("adam_bias_float32", "Adam with its bias corrections 1 − βᵗ in float32",
            "the corrections 1 − β₁ᵗ, 1 − β₂ᵗ are computed in float32 (β rounded to float32 "
            "first: 1 − β₂ᵗ is then off by about 1e-5, relative) while the rest runs in the "
            "parameters' float64", axis="adam_bias", options={"bias_float32": True},
            needs=("adam",)),
    Mistake("adam_eps_outside", "Adam with ε outside the bias correction, "
            "u = (√(1 − β₂ᵗ)/(1 − β₁ᵗ))·m/(√v + ε)", "a different definition: the "
            "'efficient' form of Kingma & Ba 2015, §2, whose ε acts as ε/√(1 − β₂ᵗ) in "
            "u = m̂/(√v̂ + ε) (Alg. 1 adds ε to √v̂)", axis="adam_eps",
            options={"eps_outside": True}, needs=("adam",)),
)
"""Rows for the inner-loop variants (module docstring), each computed by
:func:`metagrad_reference.inner_variants.unrolled`."""

ROWS: dict[str, Mistake] = {m.key: m for m in (*GENERIC, *FAMILY, *INNER)}
