"""``check_meta_gradient``, ``assert_meta_gradient_close`` and ``gradcheck``.

A *target* is any callable ``target(loss, params, tasks) -> dict[str, Tensor]`` (a
:class:`metagrad.MetaGradient` is accepted too: its ``.grad`` is read) that claims to
return the mean over tasks of one method's per-task meta-gradient gᵢ at given settings
(docs/methods.md defines each). A *factory* is a callable taking the settings as keyword
arguments only, ``factory(**settings) -> target``; the audit can then rebuild the target
at other inner step counts. Which one a callable is, is read off its signature: required
positional parameters make a target, keyword-only parameters or ``**settings`` a factory.
Code written against an ``nn.Module`` is audited through :func:`module_target`
(:mod:`.modules`).

The target runs isolated (:mod:`.isolate`): an exception, ``sys.exit``, ``os._exit`` or a
timeout is a failed case with one line saying so, never the end of the audit.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree

from .._task import Task
from ..methods import METHODS, Method, method_class
from ..problems import Problem
from ..verify.compare import (
    FD_RTOL,
    REF_RTOL,
    fd_result,
    flat,
    flat_hyper,
    identity,
    oracle_variant,
    reference_result,
    rel_error,
)
from . import battery, diagnosis, isolate
from .modules import ModuleTarget, fresh_model, grads_of
from .result import AuditResult, CaseResult
from .tolerance import float32_tolerance, reduction_length
from .variant import Built, Variant, largest_rate

Target = Callable[..., Any]

OPTIONAL = ("step",)
"""Settings whose default is part of the method's definition (Neumann's η = 1)."""


def validate_settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The method's settings in its own order, its class defaults for the ones not given.

    An unknown method raises ``ValueError`` naming the registered ones; unknown setting
    names raise ``TypeError`` naming them and what the method reads
    (``mg.METHODS[method].setting_names()``); bad values raise the method's own
    ``ValueError`` (e.g. ``lam must be a finite positive number, got -1.0``).

    Parameters
    ----------
    method : str
        A registered method name (``mg.METHOD_NAMES``).
    settings : Mapping[str, Any]
        Setting name -> value, in the one vocabulary (``steps``, ``inner_lr``, ``lam``,
        ``cg_iters``, ``terms``, ``step``); those not given take the method's defaults.

    Returns
    -------
    dict[str, Any]
        Every setting the method reads, in its order.
    """
    cls = method_class(method)
    names = cls.setting_names()
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise TypeError(f"{method} does not read setting(s) {unknown}; it reads "
                        f"{list(names)}")
    defaults = cls.default_settings()
    out = {n: settings[n] if n in settings else defaults[n] for n in names}
    cls(**out)  # the method's own value checks
    return out


def is_factory(obj: Any) -> bool:
    """Whether ``obj`` is a factory ``factory(**settings) -> target`` rather than a target.

    Parameters
    ----------
    obj : Any
        What was given to the audit.

    Returns
    -------
    bool
        True when its signature has no positional parameter and some keyword ones.
    """
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    kinds = [p.kind for p in sig.parameters.values()]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
    return not any(k in positional for k in kinds) and any(k in keyword for k in kinds)


def describe(obj: Any) -> str:
    """A short name for a target in tables: ``module.qualname`` or the type's name."""
    if isinstance(obj, ModuleTarget):
        return describe(obj.fn)
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    module = getattr(obj, "__module__", None)
    return f"{module}.{name}" if module and module != "__main__" else name


# --------------------------------------------------------------------------------------------
# one case

def _clone_tasks(tasks: Task) -> Task:
    def copy(x):
        return x.detach().clone() if isinstance(x, Tensor) else x

    return Task(_pytree.tree_map(copy, tasks.train), _pytree.tree_map(copy, tasks.val),
                dict(tasks.info))


def _same_tasks(a: Any, b: Task) -> bool:
    if not isinstance(a, Task):
        return False
    la = _pytree.tree_leaves((a.train, a.val))
    lb = _pytree.tree_leaves((b.train, b.val))
    return len(la) == len(lb) and all(
        torch.equal(x, y) if isinstance(x, Tensor) and isinstance(y, Tensor) else True
        for x, y in zip(la, lb))


HYPER_KEYS = ("inner_lr", "beta")
"""The keys a target's hyper-gradient dict may have (those of ``out.hyper_grad``)."""


def split_output(out: Any) -> tuple[Any, Mapping[str, Any] | None]:
    """``(meta-gradient, hyper-gradients or None)`` of what a target returned: a dict of
    gradients alone; a pair ``(grad, hyper_grad)`` with ``hyper_grad`` a dict such as
    ``{"inner_lr": rate-gradients}`` (the form of metagrad's ``out.hyper_grad``); or an
    object with ``.grad`` (and ``.hyper_grad``), e.g. a :class:`metagrad.MetaGradient`."""
    grad = getattr(out, "grad", None)
    if isinstance(grad, Mapping):
        hyper = getattr(out, "hyper_grad", None)
        return grad, (hyper if isinstance(hyper, Mapping) and hyper else None)
    if (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Mapping)
            and isinstance(out[1], Mapping) and set(out[1]) <= set(HYPER_KEYS)):
        return out[0], (out[1] or None)
    return out, None


Run = Callable[[dict[str, Tensor], Task], tuple[Any, list[str]]]
"""``run(params, tasks) -> (output, notes)``: one call of the target on copies."""


def _functional_run(target: Target, problem: Problem) -> Run:
    def run(params: dict[str, Tensor], tasks: Task) -> tuple[Any, list[str]]:
        return target(problem.loss, params, tasks), []

    return run


def _module_run(fn: Target, problem: Problem) -> Run:
    """Call ``fn(model, tasks)`` on a fresh copy of the problem's model; a ``None`` result
    is read from the parameters' ``.grad`` (zeros where none was written, said in a note)."""
    template = problem.module
    assert template is not None

    def run(params: dict[str, Tensor], tasks: Task) -> tuple[Any, list[str]]:
        model = fresh_model(template, params)
        out = fn(model, tasks)
        if out is not None:
            return out, []
        grads = grads_of(model, list(params))
        missing = [k for k, g in grads.items() if g is None]
        if len(missing) == len(grads):
            return _NO_GRAD, []
        notes = ([f"no .grad was written for {missing} (read as zeros)"] if missing else [])
        return {k: torch.zeros_like(params[k]) if g is None else g
                for k, g in grads.items()}, notes

    return run


class _NoGrad:
    """What a module target gave when it returned None and wrote no ``.grad``."""


_NO_GRAD = _NoGrad()


def _describe_output(out: Any, params: dict[str, Tensor]) -> str:
    """Why ``out`` is not a ``dict[str, Tensor]``, with what to return instead."""
    dim = sum(v.numel() for v in params.values())
    if out is _NO_GRAD:
        return ("the target returned None and wrote no .grad of the model's parameters: no "
                "gradient reached them (a graph cut before them: a detached copy, e.g. "
                "higher's copy_initial_weights=True, or .data / .detach() on the weights)")
    if out is None:
        return ("the target returned None, not a dict[str, Tensor] (did it forget to return "
                "the gradients?)")
    if isinstance(out, Tensor):
        hint = (f": the {dim} entries of all parameters flattened? return them as a dict "
                "keyed like params" if out.numel() == dim else "")
        return (f"the target returned a Tensor of shape {tuple(out.shape)}, not a "
                f"dict[str, Tensor]{hint}")
    if isinstance(out, (tuple, list)):
        hint = ""
        if len(out) == 2 and isinstance(out[0], Mapping) and isinstance(out[1], Mapping):
            hint = (f"; a pair (grad, hyper_grad) needs hyper_grad keyed by "
                    f"{' / '.join(map(repr, HYPER_KEYS))}, got keys {sorted(out[1])[:4]}")
        elif out and isinstance(out[0], Mapping):
            hint = "; its first item is a dict: return the gradients alone"
        elif len(out) == len(params) and all(isinstance(x, Tensor) for x in out):
            hint = "; one tensor per parameter: return dict(zip(params, ...))"
        return (f"the target returned a {type(out).__name__} of {len(out)} items, not a "
                f"dict[str, Tensor]{hint}")
    return f"the target returned {type(out).__name__}, not a dict[str, Tensor]"


def _structure(out: Any, params: dict[str, Tensor], what: str = "result",
               of: str = "parameter") -> tuple[list[str], Tensor | None, list[str]]:
    """Problems with the target's output (wrong type, keys, shapes, dtype, device, non-finite
    values), its values flattened in ``params`` order in float64 on the CPU (None when they
    cannot be compared), and remarks that are no failure (a result that carries a graph).
    ``what`` and ``of`` name the output and what it is keyed by, for the rate-gradient."""
    if not isinstance(out, Mapping):
        if what != "result":
            return [f"the {what} is {type(out).__name__}, not a dict[str, Tensor] keyed like "
                    f"the {of}s"], None, []
        return [_describe_output(out, params)], None, []
    problems: list[str] = []
    notes: list[str] = []
    missing = [k for k in params if k not in out]
    extra = [k for k in out if k not in params]
    if missing:
        problems.append(f"the {what} has no entry for {missing}")
    if extra:
        problems.append(f"the {what} has entries that are not {of}s: {extra}")
    if missing:
        return problems, None, notes
    pieces = []
    comparable = True
    for key, p in params.items():
        g = out[key]
        if not isinstance(g, Tensor):
            problems.append(f"{what}[{key!r}] is {type(g).__name__}, not a Tensor")
            comparable = False
            continue
        if g.device.type == "meta":
            problems.append(f"{what}[{key!r}] is on the meta device: it holds no values")
            comparable = False
            continue
        if g.device != p.device:
            problems.append(f"{what}[{key!r}] is on {g.device}, the {of} on {p.device}")
        if g.shape != p.shape:
            problems.append(f"{what}[{key!r}] has shape {tuple(g.shape)}, the {of} "
                            f"{tuple(p.shape)}")
        if g.dtype != p.dtype:
            problems.append(f"{what}[{key!r}] is {g.dtype}, the {of} {p.dtype}")
        if not (g.is_floating_point() or g.is_complex()):
            comparable = False
            continue
        if g.requires_grad:
            notes.append(f"{what}[{key!r}] carries an autograd graph (requires_grad=True); "
                         ".detach() it, or every call keeps its graph alive")
        values = g.detach().to("cpu")
        if values.is_complex():
            problems.append(f"{what}[{key!r}] is complex")
            comparable = False
            continue
        if not bool(torch.isfinite(values).all()):
            problems.append(f"{what}[{key!r}] has NaN or infinite entries")
        if g.numel() != p.numel():
            comparable = False
            continue
        pieces.append(values.to(torch.float64).reshape(-1))
    return problems, (torch.cat(pieces) if comparable else None), notes


def _rate_structure(got: Any, rates: Any) -> tuple[list[str], Tensor | None, list[str]]:
    """:func:`_structure` for a rate-gradient against the rates (a dict, or a 0-dim tensor)."""
    if isinstance(rates, Tensor):
        if isinstance(got, Tensor):
            return _structure({"inner_lr": got}, {"inner_lr": rates}, "rate-gradient", "rate")
        return ([f"the rate-gradient is {type(got).__name__}, not a 0-dim Tensor like the "
                 "rate"], None, [])
    return _structure(got, dict(rates), "rate-gradient", "rate")


def _method_object(method: str, settings: dict[str, Any], variant: Built | None) -> Any:
    """The method at ``settings`` running the variant on the oracle's problem, or its name
    (the oracle's plain references, cached by name and settings) without one."""
    if variant is None:
        return method
    return method_class(method)(**{**settings, **variant.exact})


def _references(exact: Problem, method: str, settings: dict[str, Any], variant: Built | None,
                fd: bool, notes: list[str]) -> tuple[Tensor, Tensor | None, Tensor | None,
                                                     Tensor | None]:
    """The oracle's meta-gradient, its rate-gradient (None when no rates are learned),
    and their finite-difference checks (None where there are none)."""
    m = _method_object(method, settings, variant)
    reference = reference_result(exact, m, None if variant else settings)
    rate_ref = None
    if variant is not None and variant.learned and "inner_lr" in reference.hyper_grad:
        rate_ref = flat_hyper({"inner_lr": reference.hyper_grad["inner_lr"]})
    numeric = rate_numeric = None
    if fd:
        try:
            numeric = fd_result(exact, m, None if variant else settings)
            if rate_ref is not None and not isinstance(m, str):
                rate_numeric = rate_differences(exact, m)
        except Exception as err:  # noqa: BLE001 - e.g. a loss that torch.vmap cannot batch
            notes.append(f"finite differences unavailable ({type(err).__name__}: {err})")
    return reference.grad, rate_ref, numeric, rate_numeric


_RATE_FD: dict[tuple, Tensor | None] = {}


def rate_differences(problem: Problem, m: Method) -> Tensor | None:
    """Central differences of MAML's mean objective F in every learned rate, flat in the
    rates' order; None for a method whose gᵢ is not the gradient of F.

    The step is relative to each rate, hᵢ = ε^(1/3)·|αᵢ| (Nocedal & Wright 2006, §8.1, with
    αᵢ as the scale): F changes on the scale of α itself, not of 1, so the absolute step
    ε^(1/3)·max(1, |x|) used for θ would leave a truncation error h²F‴/(6F′) of order
    (h/α)², above the 1e-7 tolerance for α ≈ 0.01."""
    if type(m).gradient_of != "meta_objective":
        return None
    key = (problem.key, identity(m))
    if key not in _RATE_FD:
        _RATE_FD[key] = _rate_differences(problem, m)
    return _RATE_FD[key]


def _rate_differences(problem: Problem, m: Method) -> Tensor:
    from metagrad_reference import finite_diff
    from metagrad_reference import inner_loops as il

    spec = oracle_variant(m)
    f, theta = flat(problem)
    lay = [(k, tuple(v.shape)) for k, v in problem.params.items()]
    objectives = [il.maml_objective(f, lay, tr, val, steps=m.steps, rule=spec["rule"],
                                    weights=spec.get("weights"))
                  for tr, val in problem.task_list()]
    rates = spec["rates"]

    def mean(r: Any) -> Tensor:
        return sum(F(theta, r) for F in objectives) / len(objectives)

    base = torch.finfo(theta.dtype).eps ** (1 / 3)
    tiny = torch.finfo(theta.dtype).tiny
    pieces = []
    for name in ([None] if isinstance(rates, Tensor) else list(rates)):
        value = rates if name is None else rates[name]

        def fun(x: Tensor, name: Any = name, value: Tensor = value) -> Tensor:
            new = x.reshape(value.shape)
            return mean(new if name is None else {**rates, name: new})

        x = value.detach().reshape(-1)
        pieces.append(finite_diff.central_difference(fun, x, step=base * x.abs().clamp_min(tiny)))
    return torch.cat(pieces)


def evaluate(run: Run, given: Problem, exact: Problem, method: str,
             settings: dict[str, Any], *, where: str, case: str, float32: bool = False,
             fd: bool = True, tol_reference: float = REF_RTOL, tol_fd: float = FD_RTOL,
             coverage: bool = True, optional: bool = False,
             timeout: float | None = None, variant: Built | None = None) -> CaseResult:
    """Run the target (``run``) on copies of ``given`` and judge it against the oracle on
    ``exact`` (the float64 twin): errors, verdict, diagnosis; ``coverage`` also records how
    far each known mistake is from the correct value here. ``optional``: the case is one
    the user did not ask for (another step count of a factory): a target that raises there
    is reported "not run", not failed; so is a ``NotImplementedError`` anywhere (the code
    says it cannot express this problem). ``variant``: the inner-loop variant on this
    problem (:mod:`.variant`); with learned rates, a rate-gradient the target returns is
    checked too, against the oracle and (MAML) finite differences in the rates."""
    notes: list[str] = []
    ref, rate_ref, numeric, rate_numeric = _references(exact, method, settings, variant, fd,
                                                       notes)
    f, theta = flat(exact)
    n = reduction_length(given.params, [given.tasks.train, given.tasks.val])
    tol32 = float32_tolerance(method, settings, f, theta, exact.task_list(), n)
    if float32:
        tol_reference = tol32
        tol_fd = max(FD_RTOL, tol_reference)
    row = CaseResult(case=case, problem=given.description or given.name,
                     tasks=given.meta_batch, dim=given.dim, settings=dict(settings),
                     status="pass", tol_reference=tol_reference,
                     tol_fd=tol_fd if numeric is not None else None)
    full_ref = ref if rate_ref is None else torch.cat([ref, rate_ref])
    ctx = diagnosis.Context(exact, method, settings, full_ref, variant,
                            rates=rate_ref is not None)
    if coverage:
        row.separations = diagnosis.separations(ctx, tol_reference)

    params = {k: v.detach().clone() for k, v in given.params.items()}
    tasks = _clone_tasks(given.tasks)
    keys = list(params)
    output, error = isolate.call(lambda: run(params, tasks), timeout)
    if error is not None:
        row.status = "not run" if optional or error.startswith(isolate.UNSUPPORTED) else "FAIL"
        row.closest = "raised"
        row.diagnosis = f"{where}: {error}"
        return row
    raw, remarks = output
    out, hyper = split_output(raw)
    problems = []
    added, removed = [k for k in params if k not in keys], [k for k in keys if k not in params]
    if added:
        problems.append(f"the target added key(s) {added} to the params dict it was given")
    if removed:
        problems.append(f"the target removed key(s) {removed} from the params dict it was "
                        "given")
    if given.module is None and any(
            not torch.equal(params[k], given.params[k]) for k in keys if k in params):
        problems.append("the target changed the parameters it was given in place")
    if not _same_tasks(tasks, given.tasks):
        problems.append("the target changed the task tensors it was given in place")
    found, got, structure_notes = _structure(out, given.params)
    problems += found
    row.notes = remarks + structure_notes + notes
    got_rates = None
    returned = hyper is not None and "inner_lr" in hyper
    if rate_ref is not None and returned:
        assert variant is not None and hyper is not None
        found, got_rates, rate_notes = _rate_structure(hyper["inner_lr"], variant.rates)
        problems += found
        row.notes += rate_notes
    elif rate_ref is not None:
        row.notes.append("the target returned no rate-gradient (return (grad, {'inner_lr': "
                         "...}) to have it checked): only the meta-gradient was checked")
    elif returned:
        row.notes.append("the target returned a rate-gradient, but the audit has no learned "
                         "rates to check it against (give inner= a form with rates)")
    if got is not None:
        row.err_reference = rel_error(got, ref)
        if numeric is not None:
            row.err_fd = rel_error(got, numeric)
    if got_rates is not None and rate_ref is not None:
        row.err_rate_reference = rel_error(got_rates, rate_ref)
        if rate_numeric is not None:
            row.err_rate_fd = rel_error(got_rates, rate_numeric)
    errors = [(row.err_reference, tol_reference), (row.err_fd, tol_fd),
              (row.err_rate_reference, tol_reference), (row.err_rate_fd, tol_fd)]
    within = all(e is None or e <= t for e, t in errors)
    rates_comparable = got_rates is not None or not returned or rate_ref is None
    ok = (not problems and got is not None and row.err_reference is not None and within
          and rates_comparable)
    if ok:
        return row
    row.status = "FAIL"
    prefix = "; ".join(problems)
    if (got is None or not bool(torch.isfinite(got).all())
            or (got_rates is not None and not bool(torch.isfinite(got_rates).all()))):
        # nothing to compare a wrong shape's or a NaN's values with: say what is wrong
        row.closest = "structure" if got is None else "non-finite"
        hint = battery.NON_FINITE_HINTS.get(case.split(",")[0]) if got is not None else None
        row.diagnosis = f"{where}: {prefix}" + (f" ({hint})" if hint else "")
        return row
    assert row.err_reference is not None
    values_right = within
    reference_errors = [e for e in (row.err_reference, row.err_rate_reference) if e is not None]
    equal_reference = max(reference_errors) <= tol_reference
    largest = max(e for e, _ in errors if e is not None)
    if problems and (values_right or (not float32 and largest <= tol32)):
        # numerically right (to rounding): say what is wrong, not a mistake it is not
        how = "" if values_right else " to float32 rounding"
        row.closest = "structure"
        row.diagnosis = (f"{where}: your values are right{how} (relative error "
                         f"{largest:.1e}), but {prefix}")
        return row
    result = got if got_rates is None else torch.cat([got, got_rates])
    ctx = ctx if got_rates is not None else ctx.without_rates()
    if bool((got == 0).all()) and bool((ref != 0).any()):
        row.closest, row.closest_title, row.match = "zeros", "all zeros", True
        row.closest_error, row.why = 0.0, "no gradient reached any parameter"
        row.diagnosis = (f"{where}: your result is all zeros: no gradient reached any "
                         "parameter (a detached graph, or gradients read before they were "
                         "written)" + (f" ({prefix})" if prefix else ""))
        # ... unless a catalogued mistake gives exactly zero here: then say which
        diag = diagnosis.diagnose(result, ctx, tol_reference, where)
        if diag.match and not diag.rounding and diag.key and not diag.key.startswith("zero"):
            row.closest, row.closest_title, row.also = diag.key, diag.title, diag.also
            row.why, row.ranking, row.fitted = diag.why, diag.ranking, diag.fitted
            row.diagnosis = (f"{where}: your result is all zeros, which is what {diag.title} "
                             f"gives here — {diag.why}" + (f" ({prefix})" if prefix else ""))
        return row
    if equal_reference and not problems:
        # the oracle's value, but not the gradient the finite differences measure
        fd_err = max(e for e in (row.err_fd, row.err_rate_fd) if e is not None)
        row.closest = "finite_differences"
        row.diagnosis = (f"{where}: your result equals the oracle's reference (relative error "
                         f"{max(reference_errors):.1e}) but differs from central finite "
                         f"differences by {fd_err:.1e}: either the quantity is not the gradient "
                         "of the objective (the oracle's neither) or the differences are not "
                         "accurate enough here")
        return row
    wrong = {k: out[k].detach().to("cpu", torch.float64).reshape(-1) for k in given.params}
    right = {k: v.reshape(-1) for k, v in _unflat(ref, given.params).items()}
    if got_rates is not None and rate_ref is not None:
        assert variant is not None
        names = _rate_names(variant.rates)
        wrong.update(zip(names, _pieces(got_rates, variant.rates)))
        right.update(zip(names, _pieces(rate_ref, variant.rates)))
    tensors = diagnosis.per_tensor(wrong, right, tol_reference)
    diag = diagnosis.diagnose(result, ctx, tol_reference, where, tensors,
                              tol32=None if float32 else tol32)
    row.closest, row.closest_error, row.match = diag.key, diag.error, diag.match
    row.closest_title, row.also, row.ranking = diag.title or None, diag.also, diag.ranking
    row.why = diag.why
    row.fitted = diag.fitted
    row.diagnosis = diag.message + (f" ({prefix})" if prefix else "")
    return row


def _rate_names(rates: Any) -> list[str]:
    """How the per-tensor report names the rate-gradient's tensors."""
    if isinstance(rates, Tensor):
        return ["inner_lr"]
    return [f"inner_lr[{k}]" for k in rates]


def _pieces(flat_values: Tensor, rates: Any) -> list[Tensor]:
    """A flat rate vector cut into the rates' tensors (flat each)."""
    values = [rates] if isinstance(rates, Tensor) else list(rates.values())
    out, at = [], 0
    for v in values:
        out.append(flat_values[at:at + v.numel()])
        at += v.numel()
    return out


def _unflat(vec: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, at = {}, 0
    for key, value in like.items():
        out[key] = vec[at:at + value.numel()].reshape(value.shape)
        at += value.numel()
    return out


# --------------------------------------------------------------------------------------------
# the public checks

def check_meta_gradient(target: Target, method: str, *, float32: bool = False,
                        timeout: float | None = None, inner: Any = None,
                        step_weights: Any = None, **settings: Any) -> AuditResult:
    """Audit ``target`` as ``method`` at ``settings`` on the battery (``metagrad.testing.
    battery``) against the dense float64 oracle, ``metagrad_reference``.

    Per case: the relative error ‖g − g_ref‖/‖g_ref‖ against the dense reference of the
    same quantity (pass ≤ 1e-9 in float64) and, where gᵢ is the gradient of an objective
    (``mg.METHODS[method].gradient_of``), against central finite differences of it
    (≤ 1e-7); with ``float32=True`` the target gets float32 problems and the tolerances
    are derived from float32's unit roundoff (``metagrad.testing.tolerance``). A failing
    case is diagnosed: the closest of the catalogued mistakes, alone or combined, is named
    (see ``metagrad.testing.diagnosis``), with a ranking by distance that includes the
    correct value; a float64 result off by float32 rounding only is called that.

    **Inner-loop variants.** ``inner`` names the variant (``metagrad.testing.variant``):
    forms such as ``"per_entry"`` (Meta-SGD), ``"per_step"`` (MAML++), ``"per_tensor"``,
    ``"one_rate"``, ``"anil"``, ``"momentum"``, ``"nesterov"``, ``"adam"``,
    ``"multistep"``, an update rule (``mg.Momentum(0.5)``), or several
    (``("per_entry", "momentum")``); ``inner_lr`` may also be a callable ``rates(params)``
    giving your own rate tensors for a problem's parameters. The battery builds the rates on
    each problem, spread so that every rate differs, and gives them to the factory as
    ``inner_lr`` (with ``inner=`` the rule object and ``step_weights=``). A target may then
    return ``(grad, {"inner_lr": rate_gradients})``, the rate-gradients keyed and shaped like
    the rates (the form of metagrad's ``out.hyper_grad``): they are checked against the
    oracle at the same tolerances and, for MAML, against central finite differences in the
    rates, and their mistakes are diagnosed with the meta-gradient's.

    Parameters
    ----------
    target
        A target ``target(loss, params, tasks) -> dict[str, Tensor]`` (or ``(grad,
        hyper_grad)``), a factory ``factory(**settings) -> target`` (also run at other step
        counts; required with rate tensors, which depend on the problem), or a
        :func:`module_target` for code written against an ``nn.Module``.
    method
        The method the target claims to compute, a name in ``mg.METHODS``.
    float32
        Give the target float32 problems, with tolerances from float32's epsilon.
    timeout
        Seconds one call of the target may take (POSIX main thread); a call that takes
        longer is a failed case. None: no limit.
    inner
        The inner-loop variant (above); None for the textbook loop.
    step_weights
        MAML's multi-step loss weights w₁ … w_K (MAML++).
    **settings
        The method's settings (``mg.METHODS[method].setting_names()``); those not given
        take the method's defaults (``default_settings()``). Unknown names raise
        ``TypeError``, bad values ``ValueError``.

    Returns
    -------
    AuditResult
        One row per case (``.table()``, ``.diagnosis``, ``.passed``, ``.to_csv()`` …).
    """
    rates_fn = settings.get("inner_lr") if callable(settings.get("inner_lr")) else None
    variant = Variant.of(inner, rates_fn, step_weights)
    if rates_fn is not None:  # one number for the battery's curvature: the largest rate
        settings["inner_lr"] = largest_rate(rates_fn(battery.base_params("scalar+matrix")))
    settings = validate_settings(method, settings)
    cls = method_class(method)
    reason = variant.applies_to(cls)
    if reason:
        raise ValueError(f"{method} cannot run the inner-loop variant {variant.describe()}: "
                         f"{reason}")
    form = target if isinstance(target, ModuleTarget) else None
    fn = form.fn if form is not None else target
    criterion = form.criterion if form is not None else None
    factory = is_factory(fn)
    if variant.has_rates and not factory:
        raise TypeError(
            f"with rate tensors ({variant.describe()}) the target must be a factory "
            "factory(*, steps, inner_lr, ...) -> target: the audit builds the rates on each "
            "problem and gives them as inner_lr")
    results: list[CaseResult] = []
    planned = battery.cases(method, settings, vary_steps=False,
                            dead_input=variant.adam and form is None)
    for case in _with_step_cases(planned, results, settings, factory):
        s = case.config
        given, exact = battery.problems(case.label, case.tasks, method, s, float32, criterion)
        where = f"{method} on {case.name}"
        extra = s != settings
        built, unfit = _variant_on(variant, cls, given, exact, s)
        if unfit is not None:
            results.append(CaseResult(
                case=case.name, problem=given.description, tasks=case.tasks, dim=given.dim,
                settings=s, status="not run", closest="raised",
                diagnosis=f"{where}: the inner-loop variant does not fit this case ({unfit})"))
            continue
        made, error = _build(fn, _factory_settings(s, built)) if factory else (fn, None)
        if error is not None:
            results.append(CaseResult(
                case=case.name, problem=given.description, tasks=case.tasks,
                dim=given.dim, settings=s,
                status="not run" if extra or error.startswith(isolate.UNSUPPORTED) else "FAIL",
                closest="raised", diagnosis=f"{where}: the factory refused these settings "
                                            f"({error})"))
            continue
        run = _module_run(made, given) if form is not None else _functional_run(made, given)
        results.append(evaluate(run, given, exact, method, s, where=where, case=case.name,
                                float32=float32, optional=extra, timeout=timeout,
                                variant=built))
    return AuditResult(method, settings, describe(target), float32, results,
                       _notes(method, settings, results, factory), criterion,
                       variant.describe() or None)


def _variant_on(variant: Variant, cls: Any, given: Problem, exact: Problem,
                settings: dict[str, Any]) -> tuple[Built | None, str | None]:
    """The variant built on this case's problem (None for the textbook loop), or why it
    cannot be (per-step rates or loss weights at K = 0, weights of another length)."""
    if variant.plain:
        return None, None
    dtype = next(iter(given.params.values())).dtype
    try:
        built = variant.build(exact.params, settings["steps"], settings["inner_lr"],
                              learn=cls.hyper_gradient is not None, dtype=dtype)
        cls(**{**settings, **built.exact}).inner_loop.check_params(exact.params)
    except ValueError as err:
        return None, str(err)
    return built, None


def _factory_settings(settings: dict[str, Any], built: Built | None) -> dict[str, Any]:
    """What the factory is called with: the settings, the rates as ``inner_lr``, the rule as
    ``inner`` and MAML's ``step_weights`` where the variant has them."""
    if built is None:
        return dict(settings)
    return {**settings, **built.given}


def _with_step_cases(planned: list[battery.BatteryCase], results: list[CaseResult],
                     settings: dict[str, Any], factory: bool):
    """The planned cases, then, for a factory, other step counts on the first problem the
    target ran (``scalar+matrix`` unless the code could not express it)."""
    yield from planned
    if factory:
        ran = [c.case.split(",")[0] for c in results if c.status != "not run"]
        label = ran[0] if ran else "scalar+matrix"
        yield from battery.step_cases(settings, label)


def _build(factory: Target, settings: dict[str, Any]) -> tuple[Any, str | None]:
    """``(factory(**settings), None)`` or ``(None, why)``, run isolated. A factory whose
    signature does not take these setting names raises ``TypeError`` (a usage error, not a
    failure of the code)."""
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError as err:
        raise TypeError(f"the factory does not take the settings {sorted(settings)}: "
                        f"{err}") from None
    except ValueError:
        pass  # no signature to read (a builtin): let the call say
    return isolate.call(lambda: factory(**settings))


def _notes(method: str, settings: dict[str, Any], cases: list[CaseResult],
           factory: bool) -> list[str]:
    notes = []
    if not factory:
        given = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in settings.items())
        notes.append(f"the target takes no settings, so it was compared with {method} at "
                     f"{given} (the audit's settings; the method's defaults where none was "
                     f"given) and only K = {settings['steps']} was run; pass a factory "
                     "(keyword-only settings -> target) to run K = 0, 1 and several inner "
                     "steps too")
        if cases and not any(c.passed for c in cases):
            notes.append("every case failed: if the target computes other settings than "
                         f"these ({given}), give the audit the settings it uses")
    best: dict[str, float] = {}
    for c in cases:
        for key, sep in c.separations.items():
            best[key] = max(best.get(key, 0.0), sep)
    weak = sorted(k for k, v in best.items() if v < 1e-6)
    if weak:
        notes.append(f"at these settings these mistakes are within 1e-6 (relative) of the "
                     f"correct value, so only the float64 check tells them apart: "
                     f"{', '.join(weak)}")
    for key in ("first_order", "second_order"):
        if key in best and best[key] < 0.1:
            notes.append(f"first- and second-order answers differ by at most "
                         f"{best[key]:.1%} here (aim: 10%)")
    remarks = sorted({n for c in cases for n in c.notes})
    notes += remarks
    return notes


def assert_meta_gradient_close(target: Target, method: str, *, float32: bool = False,
                               **settings: Any) -> AuditResult:
    """:func:`check_meta_gradient`, raising ``AssertionError`` with the table and the
    diagnosis when any case fails; for use in a test.

    Parameters
    ----------
    target : Callable
        As for :func:`check_meta_gradient`.
    method : str
        As for :func:`check_meta_gradient`.
    float32 : bool
        As for :func:`check_meta_gradient`.
    **settings
        As for :func:`check_meta_gradient`.

    Returns
    -------
    AuditResult
        The result, when every case passed.
    """
    result = check_meta_gradient(target, method, float32=float32, **settings)
    if not result.passed:
        raise AssertionError("meta-gradient check failed\n" + result.report())
    return result


_GRADCHECK = itertools.count()
MAX_DIM = 3000
"""Largest d gradcheck accepts by default: a d × d float64 Hessian of 72 MB."""


def gradcheck(method: Method, loss: Callable[..., Tensor], params: Mapping[str, Tensor],
              tasks: Task, *, max_dim: int = MAX_DIM, rtol: float = REF_RTOL,
              fd_rtol: float = FD_RTOL, fd: bool = True,
              raise_exception: bool = True) -> AuditResult:
    """Check a metagrad method on the user's own loss, parameters and tasks, like
    ``torch.autograd.gradcheck``: in float64 (copies of ``params`` and of the tasks'
    floating tensors; the caller's tensors are never touched), against the dense oracle
    (relative error ≤ ``rtol``) and, where the method's gᵢ is a gradient, central finite
    differences (≤ ``fd_rtol``; 2d evaluations of the objective, ``fd=False`` skips them).

    The oracle forms d × d float64 Hessians: a model with more than ``max_dim`` parameters
    is refused with a ``ValueError`` before anything is allocated. So are parameters on
    the meta device (no values), a loss that is random (dropout in training mode: two
    calls differ) and one that computes in float32 internally (a float64 check would
    measure float32 rounding, not the method). Returns the :class:`AuditResult`; on
    failure raises ``AssertionError`` with its table and diagnosis
    (``raise_exception=False`` returns it instead).

    Parameters
    ----------
    method : Method
        A configured metagrad method, e.g. ``mg.MAML(steps=2, inner_lr=0.1)``.
    loss : Callable[..., Tensor]
        ``loss(params, batch)``, as the method takes it; deterministic, computing in the
        parameters' dtype.
    params : Mapping[str, Tensor]
        θ, by name (copied to float64; not modified).
    tasks : Task
        The meta-batch (its floating tensors are copied to float64).
    max_dim : int
        Largest number of parameters d accepted (the oracle's Hessians are d × d).
    rtol : float
        Largest relative error against the dense reference.
    fd_rtol : float
        Largest relative error against central finite differences.
    fd : bool
        Run the finite-difference check where gᵢ is a gradient.
    raise_exception : bool
        Raise ``AssertionError`` on failure (default) or return the result.

    Returns
    -------
    AuditResult
        The cases run, with errors, tolerances and diagnosis.
    """
    if not isinstance(method, Method):
        raise TypeError(f"method must be a metagrad method such as mg.MAML(steps=2, "
                        f"inner_lr=0.1), got {type(method).__name__}")
    if not isinstance(params, Mapping) or not params:
        raise TypeError("params must be a non-empty dict[str, Tensor]")
    dim = sum(int(v.numel()) for v in params.values())
    if dim > max_dim:
        raise ValueError(
            f"gradcheck forms dense d × d float64 Hessians; it allows d ≤ {max_dim:,} "
            f"({max_dim ** 2 * 8 / 1e6:,.0f} MB per Hessian) and this model has d = {dim:,} "
            f"({dim ** 2 * 8 / 1e9:,.1f} GB). Check fewer parameters: pass only a "
            "sub-module's (the others stay fixed inside a loss built with mg.module_loss; "
            "convert the model with .double() first), or use a smaller width; fewer tasks "
            "make the check faster. max_dim=... raises the limit if you have the memory.")
    meta = [k for k, v in params.items() if isinstance(v, Tensor) and v.device.type == "meta"]
    if meta:
        raise ValueError(f"params {meta} are on the meta device: they hold no values to "
                         "check; materialise the model first (e.g. model.to_empty(device="
                         "'cpu') and load its weights)")
    if not isinstance(tasks, Task):
        raise TypeError(f"tasks must be a metagrad.Task, got {type(tasks).__name__}")
    params64 = {k: v.detach().to(torch.float64).clone() for k, v in params.items()}

    def to64(x):
        if isinstance(x, Tensor):
            return x.detach().to(torch.float64).clone() if x.is_floating_point() else x.clone()
        return x

    tasks64 = Task(_pytree.tree_map(to64, tasks.train), _pytree.tree_map(to64, tasks.val),
                   dict(tasks.info))
    _check_loss_for_gradcheck(loss, params64, tasks64)
    problem = Problem(f"gradcheck#{next(_GRADCHECK)}", loss, params64, tasks64,
                      description=f"your problem, d = {dim}")
    checked = dataclasses.replace(method, diagnose="record")
    settings = method.settings()
    case = f"your problem, T={problem.meta_batch}, K={settings['steps']}"

    def run(pa: dict[str, Tensor], ta: Task) -> tuple[Any, list[str]]:
        return checked(loss, pa, ta), []  # its .grad, and .hyper_grad for learned rates

    row = evaluate(run, problem, problem, method.name, settings,
                   where=f"{method.name} on {case}", case=case,
                   fd=fd and method.gradient_of is not None, tol_reference=rtol,
                   tol_fd=fd_rtol, coverage=False, variant=_variant_of(method))
    result = AuditResult(method.name, settings, f"metagrad {type(method).__name__}", False,
                         [row])
    if not result.passed and raise_exception:
        raise AssertionError("gradcheck failed\n" + result.report())
    return result


def _variant_of(method: Method) -> Built | None:
    """The method's own inner-loop variant (its update rule, rate tensors, loss weights) for
    the oracle, None for the textbook loop: the rates in float64 for the oracle, as given for
    the comparison of the rate-gradient the method returns."""
    from ..verify.compare import plain_loop

    if plain_loop(method):
        return None
    kwargs: dict[str, Any] = {"inner": method.inner}
    if getattr(method, "step_weights", None) is not None:
        kwargs["step_weights"] = method.step_weights  # type: ignore[attr-defined]
    rates = method.inner_lr
    if isinstance(rates, Tensor):
        given: Any = rates
        exact: Any = rates.detach().to(torch.float64).requires_grad_(rates.requires_grad)
    elif isinstance(rates, Mapping):
        given = dict(rates)
        exact = {k: v.detach().to(torch.float64).requires_grad_(v.requires_grad)
                 for k, v in rates.items()}
    else:
        return Built(kwargs, kwargs)
    return Built({**kwargs, "inner_lr": exact}, {**kwargs, "inner_lr": given})


def _check_loss_for_gradcheck(loss: Callable[..., Tensor], params: dict[str, Tensor],
                              tasks: Task) -> None:
    """The loss must be deterministic and compute in float64: ``ValueError`` saying which
    it is not (dropout in training mode; a ``.float()`` inside)."""
    train, _ = tasks.task(0)
    with torch.no_grad():
        values = [loss(params, train) for _ in range(2)]
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            nudged = {k: v + 1e-3 * v.abs().mean().clamp_min(1e-3)
                      * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in
                      params.items()}
            values.append(loss(nudged, train))
    if not all(isinstance(v, Tensor) and v.dim() == 0 for v in values):
        return  # the method's own validation says what is wrong
    if float(values[0]) != float(values[1]):
        raise ValueError(
            f"the loss is random: two calls with the same parameters and batch gave "
            f"{float(values[0]):.17g} and {float(values[1]):.17g} (dropout or another random "
            "layer in training mode?); gradcheck compares exact values: check the model in "
            "eval mode (model.eval()) or without its random layers")
    if values[0].dtype != torch.float64:
        raise ValueError(
            f"the loss returns {values[0].dtype} for float64 parameters and data: it computes "
            "in lower precision internally, so a float64 check would measure its rounding, "
            "not the method; make it compute in the parameters' dtype (no .float() inside)")
    singles = [float(v) == float(v.float()) and float(v) != 0.0 for v in values[1:]]
    if all(singles):
        raise ValueError(
            "the loss computes in float32 internally: its float64 values at three points "
            f"({', '.join(f'{float(v):.17g}' for v in values[1:])}) are all float32 numbers, "
            "so a float64 check would measure float32 rounding, not the method; make it "
            "compute in the parameters' dtype (no .float() inside)")


__all__ = ["MAX_DIM", "METHODS", "assert_meta_gradient_close", "check_meta_gradient",
           "describe", "evaluate", "gradcheck", "is_factory", "validate_settings"]
