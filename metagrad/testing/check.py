"""``check_meta_gradient``, ``assert_meta_gradient_close`` and ``gradcheck``.

A *target* is any callable ``target(loss, params, tasks) -> dict[str, Tensor]`` (a
:class:`metagrad.MetaGradient` is accepted too: its ``.grad`` is read) that claims to
return the mean over tasks of one method's per-task meta-gradient gᵢ at given settings
(docs/methods.md defines each). A *factory* is a callable taking the settings as keyword
arguments only, ``factory(**settings) -> target``; the audit can then rebuild the target
at other inner step counts. Which one a callable is, is read off its signature: required
positional parameters make a target, keyword-only parameters or ``**settings`` a factory.
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
from ..methods import METHOD_NAMES, Method, method_class
from ..problems import Problem
from ..verify.compare import FD_RTOL, REF_RTOL, fd_result, flat, reference_result, rel_error
from . import battery, diagnosis
from .result import AuditResult, CaseResult
from .tolerance import float32_tolerance, reduction_length

Target = Callable[..., Any]

OPTIONAL = ("step",)
"""Settings that may be left out: they take the method class's default (Neumann's η = 1)."""


def validate_settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The method's settings in its own order, defaults filled for :data:`OPTIONAL` ones.

    Unknown or missing names raise ``TypeError`` naming them and what the method reads
    (``mg.METHODS[method].setting_names()``); bad values raise the method's own
    ``ValueError`` (e.g. ``lam must be a finite positive number, got -1.0``).

    Parameters
    ----------
    method : str
        A registered method name (``mg.METHOD_NAMES``).
    settings : Mapping[str, Any]
        Setting name -> value, in the one vocabulary (``steps``, ``inner_lr``, ``lam``,
        ``cg_iters``, ``terms``, ``step``).

    Returns
    -------
    dict[str, Any]
        Every setting the method reads, in its order.
    """
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHOD_NAMES)}")
    cls = method_class(method)
    names = cls.setting_names()
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise TypeError(f"{method} does not read setting(s) {unknown}; it reads "
                        f"{list(names)}")
    missing = [n for n in names if n not in settings and n not in OPTIONAL]
    if missing:
        raise TypeError(f"{method}: missing setting(s) {missing} (it reads {list(names)})")
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


def _same_tasks(a: Task, b: Task) -> bool:
    la = _pytree.tree_leaves((a.train, a.val))
    lb = _pytree.tree_leaves((b.train, b.val))
    return all(torch.equal(x, y) if isinstance(x, Tensor) else True for x, y in zip(la, lb))


def _as_grad(out: Any) -> Any:
    grad = getattr(out, "grad", None)  # a metagrad.MetaGradient
    return grad if isinstance(grad, Mapping) else out


def _structure(out: Any, params: dict[str, Tensor]) -> tuple[list[str], Tensor | None]:
    """Problems with the target's output (wrong type, keys, shapes, dtype, non-finite
    values) and its values flattened in ``params`` order (None when they cannot be)."""
    if not isinstance(out, Mapping):
        return [f"the target returned {type(out).__name__}, not a dict[str, Tensor]"], None
    problems = []
    missing = [k for k in params if k not in out]
    extra = [k for k in out if k not in params]
    if missing:
        problems.append(f"the result has no entry for {missing}")
    if extra:
        problems.append(f"the result has entries that are not parameters: {extra}")
    if missing:
        return problems, None
    pieces = []
    for key, p in params.items():
        g = out[key]
        if not isinstance(g, Tensor):
            return problems + [f"result[{key!r}] is {type(g).__name__}, not a Tensor"], None
        if g.shape != p.shape:
            problems.append(f"result[{key!r}] has shape {tuple(g.shape)}, the parameter "
                            f"{tuple(p.shape)}")
        if g.dtype != p.dtype:
            problems.append(f"result[{key!r}] is {g.dtype}, the parameter {p.dtype}")
        if not bool(torch.isfinite(g).all()):
            problems.append(f"result[{key!r}] has NaN or infinite entries")
        if g.numel() != p.numel():
            return problems, None
        pieces.append(g.detach().to(torch.float64).reshape(-1))
    return problems, torch.cat(pieces)


def evaluate(target: Target, given: Problem, exact: Problem, method: str,
             settings: dict[str, Any], *, where: str, case: str, float32: bool = False,
             fd: bool = True, tol_reference: float = REF_RTOL, tol_fd: float = FD_RTOL,
             coverage: bool = True) -> CaseResult:
    """Run ``target`` on copies of ``given`` and judge it against the oracle on ``exact``
    (the float64 twin): errors, verdict, diagnosis; ``coverage`` also records how far each
    known mistake is from the correct value here."""
    ref = reference_result(exact, method, settings).grad
    numeric = None
    notes = []
    if fd:
        try:
            numeric = fd_result(exact, method, settings)
        except Exception as err:  # noqa: BLE001 - e.g. a loss that torch.vmap cannot batch
            notes.append(f"finite differences unavailable ({type(err).__name__}: {err})")
    if float32:
        f, theta = flat(exact)
        n = reduction_length(given.params, [given.tasks.train, given.tasks.val])
        tol_reference = float32_tolerance(method, settings, f, theta, exact.task_list(), n)
        tol_fd = max(FD_RTOL, tol_reference)
    row = CaseResult(case=case, problem=given.description or given.name,
                     tasks=given.meta_batch, dim=given.dim, settings=dict(settings),
                     status="pass", tol_reference=tol_reference,
                     tol_fd=tol_fd if numeric is not None else None)
    ctx = diagnosis.Context(exact, method, settings, ref)
    if coverage:
        row.separations = diagnosis.separations(ctx, tol_reference)

    params = {k: v.detach().clone() for k, v in given.params.items()}
    tasks = _clone_tasks(given.tasks)
    try:
        out = _as_grad(target(given.loss, params, tasks))
    except Exception as err:  # noqa: BLE001 - a crash is a failed case, shown in the table
        message = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        row.status = "FAIL"
        row.closest = "raised"
        row.diagnosis = f"{where}: the target raised {type(err).__name__}: {message}"
        return row
    problems, got = _structure(out, params)
    if any(not torch.equal(params[k], given.params[k]) for k in params):
        problems.append("the target changed the parameters it was given in place")
    if not _same_tasks(tasks, given.tasks):
        problems.append("the target changed the task tensors it was given in place")
    if got is not None:
        row.err_reference = rel_error(got, ref)
        if numeric is not None:
            row.err_fd = rel_error(got, numeric)
    ok = (not problems and got is not None and row.err_reference is not None
          and row.err_reference <= tol_reference
          and (row.err_fd is None or row.err_fd <= tol_fd))
    if ok:
        return row
    row.status = "FAIL"
    prefix = "; ".join(problems)
    if got is None or not bool(torch.isfinite(got).all()):
        # nothing to compare a wrong shape's or a NaN's values with: say what is wrong
        row.closest = "structure" if got is None else "non-finite"
        row.diagnosis = f"{where}: {prefix}"
        return row
    tensors = diagnosis.per_tensor(
        {k: out[k].detach().to(torch.float64).reshape(-1) for k in params},
        {k: v.reshape(-1) for k, v in _unflat(ref, params).items()}, tol_reference)
    diag = diagnosis.diagnose(got, ctx, tol_reference, where, tensors)
    row.closest, row.closest_error, row.match = diag.key, diag.error, diag.match
    row.closest_title, row.also = diag.title or None, diag.also
    if row.err_reference is not None and row.err_reference <= tol_reference and not problems:
        # right value, but not the gradient the finite differences measure
        row.diagnosis = (f"{where}: your result equals the reference but differs from finite "
                         f"differences by {row.err_fd:.1e}")
    else:
        row.diagnosis = diag.message + (f" ({prefix})" if prefix else "")
    return row


def _unflat(vec: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, at = {}, 0
    for key, value in like.items():
        out[key] = vec[at:at + value.numel()].reshape(value.shape)
        at += value.numel()
    return out


# --------------------------------------------------------------------------------------------
# the public checks

def check_meta_gradient(target: Target, method: str, *, float32: bool = False,
                        **settings: Any) -> AuditResult:
    """Audit ``target`` as ``method`` at ``settings`` on the battery (``metagrad.testing.
    battery``) against the dense float64 oracle, ``metagrad_reference``.

    Per case: the relative error ‖g − g_ref‖/‖g_ref‖ against the dense reference of the
    same quantity (pass ≤ 1e-9 in float64) and, where gᵢ is the gradient of an objective
    (``mg.METHODS[method].gradient_of``), against central finite differences of it
    (≤ 1e-7); with ``float32=True`` the target gets float32 problems and the tolerances
    are derived from float32's unit roundoff (``metagrad.testing.tolerance``). A failing
    case is diagnosed: the closest of the usual wrong variants is named (see
    ``metagrad.testing.diagnosis``).

    ``target`` is a target, ``target(loss, params, tasks) -> dict[str, Tensor]``, or a
    factory, ``factory(**settings) -> target``, which is also run at other step counts.
    ``settings`` are the method's (``mg.METHODS[method].setting_names()``): unknown or
    missing ones raise ``TypeError``, bad values ``ValueError``.

    Parameters
    ----------
    target : Callable
        ``target(loss, params, tasks) -> dict[str, Tensor]``, claiming the method's mean
        meta-gradient, or a factory ``factory(**settings) -> target``.
    method : str
        The method it claims to compute (``mg.METHOD_NAMES``).
    float32 : bool
        Give the target float32 problems, with tolerances derived from float32's unit
        roundoff (default False: float64).
    **settings
        The method's settings (``steps``, ``inner_lr``, ``lam``, ``cg_iters``, ``terms``,
        ``step``).

    Returns
    -------
    AuditResult
        One row per case of the battery, with errors, tolerances, pass/fail and a
        diagnosis; ``passed``, ``table()``, ``report()``.
    """
    settings = validate_settings(method, settings)
    factory = is_factory(target)
    base = target(**settings) if factory else target
    results = []
    for case in battery.cases(method, settings, vary_steps=factory):
        s = case.config
        given, exact = battery.problems(case.label, case.tasks, method, s, float32)
        where = f"{method} on {case.name}"
        if s == settings:
            made = base
        else:
            try:
                made = target(**s)
            except Exception as err:  # noqa: BLE001 - a factory may refuse e.g. steps=0
                results.append(CaseResult(
                    case=case.name, problem=given.description, tasks=case.tasks,
                    dim=given.dim, settings=s, status="not run",
                    diagnosis=f"{where}: the factory refused these settings "
                              f"({type(err).__name__}: {err})"))
                continue
        results.append(evaluate(made, given, exact, method, s, where=where, case=case.name,
                                float32=float32))
    return AuditResult(method, settings, describe(target), float32, results,
                       _notes(method, settings, results, factory))


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
    applicable = {m.key for m in diagnosis.MISTAKES if method in m.methods}
    weak = sorted(k for k in applicable if best.get(k, 0.0) < 1e-6 and k != "sum")
    if weak:
        notes.append(f"at these settings the battery cannot tell these mistakes from the "
                     f"correct value: {', '.join(weak)}")
    for key in ("first_order", "second_order"):
        if key in best and best[key] < 0.1:
            notes.append(f"first- and second-order answers differ by at most "
                         f"{best[key]:.1%} here (aim: 10%)")
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
    is refused with a ``ValueError`` before anything is allocated. Returns the
    :class:`AuditResult`; on failure raises ``AssertionError`` with its table and diagnosis
    (``raise_exception=False`` returns it instead).

    Parameters
    ----------
    method : Method
        A configured metagrad method, e.g. ``mg.MAML(steps=2, inner_lr=0.1)``.
    loss : Callable[..., Tensor]
        ``loss(params, batch)``, as the method takes it.
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
    if not isinstance(tasks, Task):
        raise TypeError(f"tasks must be a metagrad.Task, got {type(tasks).__name__}")
    params64 = {k: v.detach().to(torch.float64).clone() for k, v in params.items()}

    def to64(x):
        if isinstance(x, Tensor):
            return x.detach().to(torch.float64).clone() if x.is_floating_point() else x.clone()
        return x

    tasks64 = Task(_pytree.tree_map(to64, tasks.train), _pytree.tree_map(to64, tasks.val),
                   dict(tasks.info))
    problem = Problem(f"gradcheck#{next(_GRADCHECK)}", loss, params64, tasks64,
                      description=f"your problem, d = {dim}")
    checked = dataclasses.replace(method, diagnose="record")
    settings = method.settings()
    case = f"your problem, T={problem.meta_batch}, K={settings['steps']}"
    row = evaluate(lambda lo, pa, ta: checked(lo, pa, ta).grad, problem, problem, method.name,
                   settings, where=f"{method.name} on {case}", case=case,
                   fd=fd and method.gradient_of is not None, tol_reference=rtol,
                   tol_fd=fd_rtol, coverage=False)
    result = AuditResult(method.name, settings, f"metagrad {type(method).__name__}", False,
                         [row])
    if not result.passed and raise_exception:
        raise AssertionError("gradcheck failed\n" + result.report())
    return result
