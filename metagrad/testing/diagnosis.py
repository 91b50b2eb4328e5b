"""Diagnosis: which known mistake, or which combination of them, a wrong meta-gradient is.

When a target disagrees with the oracle, its output is compared with the oracle's values of
the catalogued deviations (:mod:`.catalogue`), alone and combined, each computed exactly
(:mod:`metagrad_reference.variants`, or the method's own reference at changed inputs), with
free parameters (a damping, a warm start) fitted to the result (:mod:`.fit`). The search is
first every combination of up to three rows of the method's family (cheap: they share the
inner points and Hessians) and every row alone, then a beam search: the closest few
extended by one more row (the query batch, an off-by-one count, the sum over tasks, a
fourth row of the family, …), up to four rows in all. The closest candidate is named, with
its relative error, and is a *match* when that error is within the tolerance:

    imaml on scalar+matrix, T=3, K=3: your result equals iMAML with 3 deviations, to 4e-16:
    the solve at φ from plain gradient descent — the inner loop has no proximal term λ(φ − θ);
    the solve at φ after an extra pull-back step φ ← φ − αλ(φ − θ) — …; the damped system
    (1 + c)I + H/(λ + δ) with c = 1, δ = 10 — …

In float64 mode a result that is off by float32 rounding (within the float32 tolerance of
the case, :mod:`.tolerance`, and far below every catalogued mistake) is called that, not
blamed on the nearest mistake; a combination plus float32 rounding is a match "up to float32
rounding". Every diagnosis ranks the candidates by distance from the result, the correct
value among them. A candidate that coincides with the correct value on a case (e.g. one
inner step fewer at K = 0) is left out there: it cannot be told apart from a correct result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import metagrad_reference as oracle
import torch
from metagrad_reference import inner_variants, variants
from torch import Tensor

from .._rules import Adam, Momentum
from .._task import Task
from ..methods import Method, method_class
from ..problems import Problem
from ..verify.compare import flat_hyper, oracle_variant, reference_result, rel_error
from .catalogue import FAMILY, GENERIC, INNER, ROWS, Mistake, count_rows
from .fit import fit
from .variant import Built

BEAM = 6
"""How many of the closest candidates of one round are extended by the generic rows."""
FAMILY_DEPTH = 3
"""The most rows of the method's family combined (all such combinations are tried)."""
DEPTH = 4
"""The most rows combined in all."""
ROUNDING_MARGIN = 100.0
"""A float32-rounding verdict needs the result this many times closer to the candidate than
to any other."""
ROUNDING_SHARE = 0.1
"""… and within this share of the case's float32 tolerance (an upper bound for float32
arithmetic throughout; a float32 constant, the common case, is off by about 3e-8): a larger
small error may as well be a stopping tolerance or a constant slightly off."""
ROUNDING_FLOOR = 4 * torch.finfo(torch.float32).eps / 2
"""… but never below four float32 unit roundoffs (a constant or two rounded to float32)."""


@dataclass
class Candidate:
    rows: tuple[Mistake, ...]
    value: Tensor
    distance: float
    fitted: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return "+".join(r.key for r in self.rows) if self.rows else "correct"

    def title(self) -> str:
        return " and ".join(_fill(r.title, r, self.fitted) for r in self.rows)


def distance(result: Tensor, value: Tensor) -> float:
    """‖result − value‖/‖value‖, or relative to ‖result‖ where the value is zero (then "all
    zeros" is 1 away from any nonzero result, not ‖result‖)."""
    scale = float(torch.linalg.vector_norm(value)) or float(torch.linalg.vector_norm(result))
    diff = float(torch.linalg.vector_norm(result.double() - value.double()))
    return diff / scale if scale > 0 else diff


def _fill(text: str, row: Mistake, fitted: dict[str, float]) -> str:
    values = {f.symbol: fitted.get(f.option, f.typical) for f in row.free}
    return text.format(**values) if values else text


class Context:
    """What the candidates are computed from: the float64 problem, the method, its settings
    and the correct (reference) value, flat; values are memoised.

    With an inner-loop ``variant`` (:class:`metagrad.testing.variant.Built`: learned rates, a
    momentum or Adam rule, MAML's loss weights) the method runs that variant, the unrolled
    family is :func:`metagrad_reference.inner_variants.unrolled`, and, with ``rates``, every
    value is the meta-gradient followed by the rate-gradient (flat, in the rates' order),
    compared part by part (:meth:`gap`)."""

    def __init__(self, problem: Problem, method: str, settings: dict[str, Any],
                 reference: Tensor, variant: Built | None = None, rates: bool = False):
        self.problem, self.method, self.settings = problem, method, dict(settings)
        self.reference = reference
        self.cls = method_class(method)
        self.f = oracle.flat_loss(problem.loss, problem.params)
        self.theta = oracle.flatten(problem.params)
        self.tasks = problem.task_list()
        self.memo = variants.Memo(self.f)
        self.variant = variant
        self.rates = bool(rates and variant is not None and variant.learned)
        self.dim = self.theta.numel()
        self._values: dict[tuple, Tensor | None] = {}
        self._query: Problem | None = None

    def without_rates(self) -> Context:
        """The same context for a result that has no rate-gradient (sharing the memo)."""
        if not self.rates:
            return self
        other = Context.__new__(Context)
        other.__dict__.update(self.__dict__)
        other.rates, other.reference = False, self.reference[:self.dim]
        other._values = {}
        return other

    # -- distances, part by part ----------------------------------------------------------------
    def parts(self, vec: Tensor) -> list[Tensor]:
        """The meta-gradient and (with rates) the rate-gradient of a flat value."""
        return [vec[:self.dim], vec[self.dim:]] if self.rates else [vec]

    def gap(self, result: Tensor, value: Tensor) -> float:
        """:func:`distance` of the farther part."""
        return max(distance(a, b) for a, b in zip(self.parts(result), self.parts(value)))

    def error(self, value: Tensor) -> float:
        """Relative error against the reference, of the farther part."""
        return max(rel_error(a, b) for a, b in zip(self.parts(value), self.parts(self.reference)))

    # -- the rows that apply ------------------------------------------------------------------
    def tags(self) -> set[str]:
        """What the audited variant has, for the inner-loop rows' ``needs``."""
        if self.variant is None:
            return set()
        out = set()
        kwargs = self.variant.exact
        rates = kwargs.get("inner_lr")
        if isinstance(rates, (Tensor, Mapping)):
            out.add("rates")
            params = self.problem.params
            if isinstance(rates, Mapping) and any(
                    v.dim() == params[k].dim() + 1 for k, v in rates.items()):
                out.add("step_rates")
        if self.rates:
            out.add("learned")
            if self.cls.hyper_gradient == "exact":
                out.add("exact")
        rule = kwargs.get("inner")
        if isinstance(rule, Momentum):
            out |= {"stateful", "momentum", "nesterov" if rule.nesterov else "heavy_ball"}
        elif isinstance(rule, Adam):
            out |= {"stateful", "adam"}
        return out

    @property
    def learned_family(self) -> bool:
        """Whether the values come from the inner-loop variants' family (a variant on an
        unrolled-family method); the implicit family then has no rows."""
        return self.variant is not None

    def rows(self) -> list[Mistake]:
        """Generic rows, off-by-one rows for every integer setting the method reads, and the
        family rows its class lists, expanded per parameter tensor where they name one; for an
        inner-loop variant, of those family rows the ones the variants' family computes, and
        the inner-loop rows whose ``needs`` it has."""
        names = list(self.problem.params)
        out: list[Mistake] = []
        for row in GENERIC:
            if row.key == "zero":
                if len(names) > 1:
                    out += [_per_tensor(row, n) for n in names]
            else:
                out.append(row)
        defaults = self.cls.default_settings()
        for name in self.cls.setting_names():
            if isinstance(defaults[name], int) and not isinstance(defaults[name], bool):
                out += count_rows(name)
        family_name = self.cls.audit_family[0] if self.cls.audit_family else None
        if self.learned_family and family_name != "unrolled":
            return out  # the implicit family runs the plain proximal loop only
        if self.cls.audit_family is not None:
            family = {r.key: r for r in FAMILY}
            for key in self.cls.audit_mistakes:
                row = family[key]
                if self.learned_family and not set(row.options) <= inner_variants.ACCEPTS:
                    continue
                if "{tensor}" in row.title:
                    if len(names) > 1:
                        out += [_per_tensor(row, n) for n in names]
                else:
                    out.append(row)
        if self.learned_family:
            tags = self.tags()
            out += [row for row in INNER if set(row.needs) <= tags]
        return out

    # -- values ---------------------------------------------------------------------------------
    def value(self, rows: Sequence[Mistake], fitted: dict[str, float] | None = None
              ) -> Tensor | None:
        """The mean over tasks of the method's value with ``rows`` applied (None where they
        do not apply here, e.g. one step fewer at K = 0)."""
        fitted = fitted or {}
        key = (tuple(r.key for r in rows), tuple(sorted(fitted.items())))
        if key not in self._values:
            self._values[key] = self._compute(rows, fitted)
        return self._values[key]

    def method_object(self, settings: dict[str, Any]) -> Method:
        """The method at ``settings`` running the variant (its rates for this problem)."""
        extra = dict(self.variant.exact) if self.variant is not None else {}
        return method_class(self.method)(**{**settings, **extra})

    def _reference(self, problem: Problem, settings: dict[str, Any]) -> Tensor | None:
        """The method's own oracle value at ``settings`` on ``problem`` (None where the variant
        does not fit them, e.g. per-step rates at another K), with the rate part."""
        try:
            out = reference_result(problem, self.method_object(settings))
        except ValueError:
            return None
        if not self.rates:
            return out.grad
        hyper = flat_hyper({"inner_lr": out.hyper_grad["inner_lr"]})
        return torch.cat([out.grad, hyper if hyper is not None else out.grad.new_zeros(0)])

    def _compute(self, rows: Sequence[Mistake], fitted: dict[str, float]) -> Tensor | None:
        settings = dict(self.settings)
        options: dict[str, Any] = {}
        query = summed = negated = False
        zero: str | None = None
        absolute: str | None = None
        for row in rows:
            absolute = row.absolute or absolute
            t = row.transform
            if t == "query":
                query = True
            elif t == "sum":
                summed = True
            elif t == "sign":
                negated = True
            elif t == "zero":
                zero = row.options["tensor"]
            elif t is not None:
                name, delta = t[:-2], int(t[-2:])
                settings[name] += delta
                if settings[name] < 0:
                    return None
            options.update({k: v for k, v in row.options.items() if k != "tensor"})
        for row in rows:
            for free in row.free:
                options[free.option] = fitted.get(free.option, free.typical)
        value: Tensor | None
        if absolute == "unadapted":
            value = torch.stack([self.memo.gradient(self.theta, val)
                                 for _, val in self.tasks]).mean(0)
            value = self._with_zero_rates(value)
        elif absolute == "zeros":
            value = torch.zeros_like(self.reference)
        elif options:
            value = self._family(options, settings, query)
        elif query:
            value = self._reference(self._query_problem(), settings)
        else:
            value = self._reference(self.problem, settings)
        if value is None:
            return None
        if zero is not None:
            grad = value[:self.dim]
            blocks = oracle.unflatten(grad.clone(), self.problem.params)
            blocks[zero] = torch.zeros_like(blocks[zero])
            value = torch.cat([oracle.flatten(blocks), value[self.dim:]])
        if summed:
            if len(self.tasks) == 1:
                return None
            value = value * len(self.tasks)
        return -value if negated else value

    def _with_zero_rates(self, grad: Tensor) -> Tensor:
        if not self.rates:
            return grad
        return torch.cat([grad, torch.zeros_like(self.reference[self.dim:])])

    def _family(self, options: dict[str, Any], settings: dict[str, Any],
                query: bool) -> Tensor | None:
        assert self.cls.audit_family is not None
        name, base = self.cls.audit_family
        opts = {**base, **options}
        if self.learned_family:
            return self._learned_family(opts, settings, query)
        steps, lr = settings["steps"], settings["inner_lr"]
        if "rates" in opts:
            if steps == 0:
                return None
            last = lr * lr if opts["rates"] == "last_squared" else 2 * lr
            opts["rates"] = [lr] * (steps - 1) + [last]
        if opts.get("read_back", 0) > steps:
            return None
        if opts.get("displacement_scale") == "1/inner_lr":
            opts["displacement_scale"] = 1.0 / lr
        if isinstance(opts.get("detached"), str):
            opts["detached"] = self._mask(opts["detached"])
        fn = variants.FAMILIES[name]
        per_task = [fn(self.memo, self.theta, val if query else train, val, **settings, **opts)
                    for train, val in self.tasks]
        return torch.stack(per_task).mean(0)

    def _learned_family(self, opts: dict[str, Any], settings: dict[str, Any],
                        query: bool) -> Tensor | None:
        """The variants' family (:mod:`metagrad_reference.inner_variants`) at ``opts``."""
        steps = settings["steps"]
        if opts.get("read_back", 0) > steps or (steps == 0 and opts.get("rate_shift")):
            return None
        if isinstance(opts.get("detached"), str):
            opts["detached"] = self._mask(opts["detached"])
        spec = oracle_variant(self.method_object(settings))
        layout = [(k, tuple(v.shape)) for k, v in self.problem.params.items()]
        tasks = [(val, val) if query else (train, val) for train, val in self.tasks]
        try:
            grad, rate = inner_variants.meta_batch(
                self.memo, self.theta, layout, tasks, steps=steps, rates=spec["rates"],
                rule=spec["rule"], weights=spec.get("weights"), lam=settings.get("lam", 0.0),
                **opts)
        except ValueError:
            return None  # the variant does not fit these settings (per-step rates, another K)
        return torch.cat([grad, rate]) if self.rates else grad

    def _mask(self, tensor: str) -> Tensor:
        blocks = {k: torch.full_like(v, float(k == tensor))
                  for k, v in self.problem.params.items()}
        return oracle.flatten(blocks)

    def _query_problem(self) -> Problem:
        if self._query is None:
            tasks = self.problem.tasks
            self._query = replace(self.problem, name=self.problem.name + ":query-inner",
                                  tasks=Task(tasks.val, tasks.val, dict(tasks.info)))
        return self._query

    # -- candidates -----------------------------------------------------------------------------
    def candidate(self, rows: Sequence[Mistake], result: Tensor | None = None,
                  fitted: bool = False) -> Candidate | None:
        """The rows' value and its distance from ``result`` (without a result: from the
        reference). Free parameters take their typical values, or, with ``fitted``, the
        values that bring the candidate closest to ``result``."""
        frees = [f for r in rows for f in r.free]
        values: dict[str, float] = {}
        if frees and fitted and result is not None:
            values = self._fit(rows, frees, result)
        value = self.value(rows, values)
        if value is None or not bool(torch.isfinite(value).all()):
            return None
        gap = self.error(value) if result is None else self.gap(result, value)
        return Candidate(tuple(rows), value, gap, values)


    def _residual(self, result: Tensor, value: Tensor) -> Tensor:
        """(result − value) with each part divided by the result's norm there."""
        pieces = []
        for a, b in zip(self.parts(result), self.parts(value)):
            pieces.append((a - b) / (float(torch.linalg.vector_norm(a)) or 1.0))
        return torch.cat(pieces)

    def _fit(self, rows: Sequence[Mistake], frees: list, result: Tensor) -> dict[str, float]:
        """The free parameters' values that bring the rows closest to ``result``: every
        point of the grid of those that have one, a Levenberg–Marquardt fit of the others."""
        grid = [f for f in frees if f.grid]
        smooth = [f for f in frees if not f.grid]
        lower = [(-self.settings["lam"] if f.lower == "-lam" else f.lower) for f in smooth]
        best: tuple[float, dict[str, float]] = (math.inf, {})
        for point in itertools.product(*[f.grid for f in grid]):
            fixed = {f.option: v for f, v in zip(grid, point)}
            if smooth:
                def residual(p: list[float], fixed: dict[str, float] = fixed) -> Tensor:
                    v = self.value(rows, {**fixed, **dict(zip([f.option for f in smooth], p))})
                    if v is None:
                        return torch.full_like(result, math.inf)
                    return self._residual(result, v)

                starts = list(zip(*[f.starts for f in smooth]))
                p, gap = fit(residual, starts, lower)
                values = {**fixed, **dict(zip([f.option for f in smooth], p))}
            else:
                values = fixed
                v = self.value(rows, values)
                gap = math.inf if v is None else float(torch.linalg.vector_norm(
                    self._residual(result, v)))
            if gap < best[0]:
                best = (gap, values)
        return best[1]


def _per_tensor(row: Mistake, tensor: str) -> Mistake:
    return replace(row, key=f"{row.key}:{tensor}", title=row.title.replace("{tensor}", tensor),
                   why=row.why.replace("{tensor}", tensor),
                   options={**row.options, **({"tensor": tensor} if row.transform == "zero"
                                               else {"detached": tensor})})


def separations(ctx: Context, tol: float) -> dict[str, float]:
    """How far each applicable single mistake is from the correct value on this case
    (relative error; free parameters at their typical values); those within ``tol`` of it
    are left out (they cannot be told apart here)."""
    out = {}
    for row in ctx.rows():
        cand = ctx.candidate([row])
        if cand is not None and cand.distance > tol:
            out[row.key] = cand.distance
    return out


# --------------------------------------------------------------------------------------------
# the search and the verdict

@dataclass
class Diagnosis:
    """The closest known mistake (or combination) to a wrong result."""

    key: str | None = None
    title: str = ""
    why: str = ""
    error: float | None = None
    """Relative error of the result against the closest candidate's value."""
    match: bool = False
    """True when that error is within the tolerance: the result IS that candidate."""
    rounding: bool = False
    """The match holds up to float32 rounding (float64 mode)."""
    also: list[str] = field(default_factory=list)
    """Other candidates the result matches as well (they coincide on this case)."""
    ranking: list[tuple[str, float]] = field(default_factory=list)
    """The closest candidates and the correct value, with their distances from the result."""
    fitted: dict[str, float] = field(default_factory=dict)
    message: str = ""


def search(ctx: Context, result: Tensor, tol: float, tol32: float | None = None
           ) -> list[Candidate]:
    """Every candidate tried, closest first (module docstring); candidates that coincide
    with the correct value are left out.

    First a beam search with free parameters at their typical values; then the free
    parameters of the closest candidates that have some (and of each such row alone) are
    fitted to the result, where the result has enough entries to pin them down (at least
    three per parameter: a fit to fewer numbers matches anything)."""
    rows = ctx.rows()
    tried: dict[frozenset[str], Candidate] = {}

    def tol32_or(tol: float) -> float:
        if tol32 is None:
            return tol
        return max(tol, min(tol32, max(ROUNDING_SHARE * tol32, ROUNDING_FLOOR)))

    def consider(combo: tuple[Mistake, ...], fitted: bool = False) -> Candidate | None:
        cand = ctx.candidate(combo, result, fitted)
        if cand is None:
            return None
        if ctx.error(cand.value) <= tol:
            cand.distance = math.inf  # the correct value itself here: not a mistake
        key = frozenset(r.key for r in combo)
        if key not in tried or cand.distance < tried[key].distance:
            tried[key] = cand
        return cand

    def extend(base: tuple[Mistake, ...], row: Mistake) -> Candidate | None:
        if base and (not row.combines or row.axis in {r.axis for r in base}):
            return None
        combo = tuple(sorted((*base, row), key=rows.index))
        if frozenset(r.key for r in combo) in tried:
            return None
        value, before = ctx.value(combo), ctx.value(base) if base else None
        if value is not None and before is not None and ctx.gap(value, before) <= tol:
            return None  # the row changes nothing here (e.g. CG iterations, no solve)
        if value is not None and any(len(c.rows) < len(combo) and ctx.gap(value, c.value)
                                     <= tol for c in tried.values()):
            return None  # a simpler candidate already has this value
        return consider(combo)

    # 1. every combination of up to FAMILY_DEPTH rows of the method's family (cheap: the
    #    expensive parts, inner points and Hessians, are shared), and every row alone
    family = [r for r in rows if not r.generic]
    layer: list[tuple[Mistake, ...]] = [()]
    for _ in range(FAMILY_DEPTH):
        grown = []
        for base in layer:
            for row in family[family.index(base[-1]) + 1:] if base else family:
                cand = extend(base, row)
                if cand is not None:
                    grown.append(cand.rows)
        layer = grown
    for row in rows:
        extend((), row)
    # 2. the closest few (and the correct value), extended by one more row, in rounds
    frontier = [()] + [c.rows for c in sorted(tried.values(), key=lambda c: c.distance)
                       if all(r.combines for r in c.rows)][:BEAM]
    generic = [r for r in rows if r.combines]
    for _ in range(DEPTH - 1):
        if min((c.distance for c in tried.values()), default=math.inf) <= tol:
            break
        new = [c for base in frontier for row in generic
               if (c := extend(base, row)) is not None and len(c.rows) <= DEPTH]
        if not new:
            break
        new.sort(key=lambda c: c.distance)
        frontier = [c.rows for c in new][:BEAM]
    best = min((c.distance for c in tried.values()), default=math.inf)
    if best > tol:
        free_rows = [(r,) for r in rows if r.free]
        closest = sorted((c for c in tried.values() if any(r.free for r in c.rows)),
                         key=lambda c: c.distance)[:BEAM]
        for combo in [*free_rows, *(c.rows for c in closest)]:
            n_free = sum(len(r.free) for r in combo)
            if result.numel() >= 3 * n_free:
                fitted = ctx.candidate(combo, result, fitted=True)
                # A fit only counts as a match: fitted near-misses would crowd the
                # ranking, being close by construction.
                if fitted is not None and fitted.distance <= tol32_or(tol):
                    consider(combo, fitted=True)
    return sorted((c for c in tried.values() if math.isfinite(c.distance)),
                  key=lambda c: (c.distance, len(c.rows)))


def diagnose(result: Tensor, ctx: Context, tol: float, where: str, tensor_report: str = "",
             tol32: float | None = None) -> Diagnosis:
    """Name the known mistake, or combination, closest to ``result`` (flat, any float
    dtype); with ``tol32`` (float64 mode), recognise float32 rounding."""
    result = result.detach().to(torch.float64)
    correct = ctx.error(result)
    found = search(ctx, result, tol, tol32)
    ranking = [(c.key, c.distance) for c in found[:5]] + [("correct", correct)]
    ranking.sort(key=lambda pair: pair[1])
    diag = Diagnosis(ranking=ranking)
    rounding_level = None if tol32 is None else min(
        tol32, max(ROUNDING_SHARE * tol32, ROUNDING_FLOOR))
    if rounding_level is not None and correct <= rounding_level and all(
            correct * ROUNDING_MARGIN <= c.distance for c in found):
        nearest = next((c for c in found if len(c.rows) == 1), found[0] if found else None)
        diag.key, diag.title, diag.error, diag.match, diag.rounding = (
            "float32_rounding", "the correct value up to float32 rounding", correct, True, True)
        far = (f"; the nearest catalogued mistake, {nearest.key}, is {nearest.distance:.1e} "
               "away" if nearest else "")
        diag.message = (
            f"{where}: your result agrees with the correct value to float32 rounding "
            f"(relative error {correct:.1e}, within the float32 tolerance {tol32:.1e} of this "
            f"case{far}): the code computes in float32 somewhere (float32 data, or a step "
            "size, λ or the 1/T task weight kept as a float32 tensor). Run the audit with "
            "--float32 (float32=True) to check it at float32 tolerances.")
        return diag
    if not found:
        diag.message = (f"{where}: your result is wrong and matches no known mistake"
                        + (f"; {tensor_report}" if tensor_report else ""))
        return diag
    best = found[0]
    match = best.distance <= tol
    rounding = False
    if not match and rounding_level is not None and best.distance <= rounding_level:
        others = [c.distance for c in found[1:]
                  if ctx.gap(c.value, best.value) > rounding_level]
        others.append(correct)
        match = rounding = best.distance * ROUNDING_MARGIN <= min(others)
    level = rounding_level if rounding and rounding_level is not None else tol
    if match:
        # Among the candidates that match, the simplest explanation: fewest rows, then rows of
        # the method's family before generic ones (their distances differ by rounding only).
        matching = [c for c in found if c.distance <= max(level, best.distance)]
        best = min(matching, key=lambda c: (len(c.rows), sum(r.generic for r in c.rows),
                                            c.distance))
    diag.key, diag.error, diag.fitted = best.key, best.distance, best.fitted
    diag.title = best.title()
    diag.why = "; ".join(_fill(r.why, r, best.fitted) for r in best.rows)
    diag.match, diag.rounding = match, rounding
    if diag.match:
        diag.also = [c.key for c in found if c is not best and c.distance <= level
                     and len(c.rows) <= len(best.rows)]
        how = (f"up to float32 rounding ({best.distance:.1e}; the code also computes in "
               "float32 somewhere: --float32 checks it at float32 tolerances)"
               if diag.rounding else f"to {best.distance:.0e}")
        if len(best.rows) == 1:
            also = "".join(f"; it also equals {_describe(k, found)}" for k in diag.also)
            diag.message = f"{where}: your result equals {diag.title} {how} — {diag.why}{also}"
        else:
            parts = "; ".join(f"{_fill(r.title, r, best.fitted)} — {_fill(r.why, r, best.fitted)}"
                              for r in best.rows)
            diag.message = (f"{where}: your result equals {ctx.cls.title or ctx.method} with "
                            f"{len(best.rows)} deviations, {how}: {parts}")
        return diag
    single = next((c for c in found if len(c.rows) == 1), best)
    diag.key, diag.error, diag.fitted = single.key, single.distance, single.fitted
    diag.title = single.title()
    diag.why = "; ".join(_fill(r.why, r, single.fitted) for r in single.rows)
    near = ""
    if ranking[0][0] == "correct":
        near = (f"; the correct value is closer than any catalogued mistake (relative error "
                f"{correct:.1e}): a small change such as a stopping tolerance, a constant "
                "slightly off or float32 arithmetic")
    diag.message = (f"{where}: your result matches no known mistake{near}; the closest single "
                    f"one is {diag.title} (relative error {single.distance:.1e}: {diag.why})"
                    + (f"; {tensor_report}" if tensor_report else ""))
    return diag


def _describe(key: str, found: list[Candidate]) -> str:
    """``title — why`` of a candidate named in a match's "also" list."""
    cand = next(c for c in found if c.key == key)
    return "; ".join(f"{_fill(r.title, r, cand.fitted)} — {_fill(r.why, r, cand.fitted)}"
                     for r in cand.rows)


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


__all__ = ["ROWS", "Candidate", "Context", "Diagnosis", "diagnose", "per_tensor", "search",
           "separations"]
