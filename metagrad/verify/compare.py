"""Comparisons of metagrad's public methods with the oracle, ``metagrad_reference``.

A :class:`Case` is one row of the verification table: a method with its
settings and code path (batching, HVP mode, MAML backward) on one problem of
``metagrad.problems``. :func:`evaluate` runs the public class,
``mg.METHODS[name](...)(loss, params, tasks)``, and measures, as norm-wise
relative errors ‖a − b‖ / ‖b‖:

* ``err_reference``: against the dense reference of the *same* quantity
  (``metagrad_reference.methods``); must be ≤ ``REF_RTOL``;
* ``err_loss``: pre- and post-update losses against the reference (≤ ``REF_RTOL``);
* ``err_closed_form``: against the closed form (linear regression only);
* ``err_fd``: against central finite differences of the objective that the
  method's quantity is the exact gradient of, where there is one (the class's
  ``gradient_of``); must be ≤ ``FD_RTOL``;
* ``approx_error``: against the bilevel-exact target (:func:`exact_target`):
  reported, never a pass/fail criterion by itself.

:func:`exact_target` is also what the benchmarks measure their error column against.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import metagrad_reference as oracle
import torch
from metagrad_reference import closed_form as cf
from metagrad_reference import dense, finite_diff, targets
from torch import Tensor

from .. import _rates
from .._forms import inner_form
from ..methods import SETTINGS, Method, method_class
from ..problems import Problem, make_problem

REF_RTOL = 1e-9
"""Implementation exactness: method vs its dense float64 reference."""
FD_RTOL = 1e-7
"""Gradient vs central finite differences; the FD error itself is ~1e-9 here (truncation
h²F'''/6 + roundoff ε|F|/h at h ≈ 6e-6), so 1e-7 leaves headroom without letting a 1e-6
error through."""

_CACHE: dict[tuple, Any] = {}
"""Oracle results already computed (they are expensive and the same problem is checked
many times), keyed on the whole identity of the quantity: the problem (its name, tasks,
seed, dtype and device), what was computed, and everything that defines it (the
method, all of its settings, its inner loop)."""


def _cached(problem: Problem, key: tuple, compute):
    full = (problem.key, *key)
    if full not in _CACHE:
        _CACHE[full] = compute()
    return _CACHE[full]


def freeze(value: Any) -> Any:
    """A hashable stand-in for a setting, exact for tensors (their bytes), dicts and
    frozen option objects alike."""
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous()
        return ("tensor", tuple(data.shape), str(data.dtype),
                hashlib.sha256(data.numpy().tobytes()).hexdigest())
    if isinstance(value, Mapping):
        return ("dict", tuple((k, freeze(v)) for k, v in sorted(value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(freeze(v) for v in value))
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__,
                tuple((f.name, freeze(getattr(value, f.name))) for f in fields(value)))
    return value


def as_method(method: str | Method, settings: dict[str, Any] | None = None) -> Method:
    """The method object: ``method`` itself, or the class registered as ``method`` built at
    ``settings``."""
    if isinstance(method, Method):
        return method
    return method_class(method)(**(settings or {}))


def identity(method: str | Method, settings: dict[str, Any] | None = None) -> tuple:
    """What defines a method's quantity: its name, the oracle quantity it stands for, and
    every field but the code-path options (settings, rates, update rule, loss weights),
    with the inner loop it runs."""
    m = as_method(method, settings)
    options = set(type(m).code_paths) | {"diagnose"}
    defining = {f.name: getattr(m, f.name) for f in fields(m) if f.name not in options}
    return (m.name, type(m).oracle_name or m.name, freeze(defining), freeze(m.inner_loop))


def plain_loop(method: Method) -> bool:
    """Whether the method runs the textbook inner loop (one float step size for every
    parameter, plain or proximal gradient descent, the last step's loss): the oracle's
    original references apply. Otherwise the inner-loop variants' references do
    (``metagrad_reference.inner_loops``)."""
    from .._rules import GD

    loop = method.inner_loop
    return (isinstance(loop.inner_lr, float) and isinstance(loop.rule, GD)
            and getattr(method, "step_weights", None) is None)


def oracle_variant(method: Method) -> dict[str, Any]:
    """The method's inner loop in the oracle's terms: ``rates``, ``rule`` (and MAML's
    ``weights``), for ``metagrad_reference.inner_loops``."""
    from metagrad_reference import inner_loops as il

    from .._rules import Adam, Momentum

    loop = method.inner_loop
    rates: Any = loop.inner_lr
    if isinstance(rates, Mapping):
        rates = {k: v.detach() for k, v in rates.items()}
    elif isinstance(rates, Tensor):
        rates = rates.detach()
    rule = loop.rule
    if isinstance(rule, Momentum):
        spec = il.Rule("nesterov" if rule.nesterov else "momentum", beta=(
            rule.beta.detach() if isinstance(rule.beta, Tensor) else rule.beta))
    elif isinstance(rule, Adam):
        spec = il.Rule("adam", beta1=rule.beta1, beta2=rule.beta2, eps=rule.eps)
    else:
        spec = il.Rule("gd")
    out: dict[str, Any] = {"rates": rates, "rule": spec}
    if getattr(method, "step_weights", None) is not None:
        out["weights"] = method.step_weights  # type: ignore[attr-defined]
    return out


def layout(problem: Problem) -> list[tuple[str, tuple[int, ...]]]:
    """The parameters' names and shapes, in the flat order of the oracle's vectors."""
    return [(k, tuple(v.shape)) for k, v in problem.params.items()]


def get(name: str, meta_batch: int = 2, seed: int = 0,
        dtype: torch.dtype = torch.float64) -> Problem:
    """A verification problem, built once per process (its oracle results are cached)."""
    return _cached_problem(name, meta_batch, seed, dtype)


_PROBLEMS: dict[tuple, Problem] = {}


def _cached_problem(name: str, meta_batch: int, seed: int, dtype: torch.dtype) -> Problem:
    key = (name, meta_batch, seed, dtype)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = make_problem(name, meta_batch=meta_batch, seed=seed, dtype=dtype)
    return _PROBLEMS[key]


def flat(problem: Problem) -> tuple[oracle.flat.FlatLoss, Tensor]:
    """The oracle's view of a problem: flat loss and flat θ."""
    return oracle.flat_loss(problem.loss, problem.params), oracle.flatten(problem.params)


DEFAULT_OPTIONS = {"batching": "vmap", "hvp": "revrev"}
"""The code path a case takes unless it says otherwise: the reference path (vmap over
tasks, double-backward Hessian-vector products)."""


@dataclass(frozen=True)
class Case:
    """One method at one setting on one problem, through one code path.

    ``settings`` are the method's numerical settings (:data:`metagrad.SETTINGS`);
    ``options`` the code-path options it is built with (``batching``, ``hvp``, and any of
    the method's own :attr:`~metagrad.Method.code_paths`, e.g. MAML's ``backward``)."""

    method: str
    problem: str
    settings: tuple[tuple[str, Any], ...]
    meta_batch: int = 2
    options: tuple[tuple[str, Any], ...] = tuple(sorted(DEFAULT_OPTIONS.items()))
    seed: int = 0
    dtype: torch.dtype = torch.float64
    inner: str | None = None
    """A named inner-loop form (``metagrad._forms.INNER_FORMS``: learned rates, partial
    adaptation, momentum, Adam, the multi-step loss), built on the problem's parameters
    with rates spread around ``inner_lr`` (seeded), or None for the plain loop."""

    @staticmethod
    def of(method: str, problem: str, meta_batch: int = 2, inner: str | None = None,
           **given: Any) -> Case:
        """``Case.of("maml", "linreg", steps=3, inner_lr=0.1, backward="trajectory")``: the
        numerical settings and the code-path options in one call."""
        cls = method_class(method)
        settings = {k: v for k, v in given.items() if k in SETTINGS}
        # the method's own code-path options (MAML's backward) at their first value
        own = {k: values[0] for k, values in cls.code_paths.items() if k not in DEFAULT_OPTIONS}
        options = {**DEFAULT_OPTIONS, **own,
                   **{k: v for k, v in given.items() if k not in SETTINGS}}
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"{method} has no option or setting {sorted(unknown)}")
        if inner is not None:
            reason = inner_form(inner).applies_to(cls)
            if reason:
                raise ValueError(f"{method} cannot run the inner-loop form {inner!r}: {reason}")
        return Case(method, problem, tuple(sorted(settings.items())), meta_batch,
                    tuple(sorted(options.items())), inner=inner)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.settings)

    @property
    def option(self) -> dict[str, Any]:
        return dict(self.options)

    def __getattr__(self, name: str) -> Any:
        # case.batching, case.hvp, case.backward: the code-path options by name
        options = self.__dict__.get("options", ())
        for key, value in options:
            if key == name:
                return value
        raise AttributeError(name)

    def build(self) -> Method:
        cls = method_class(self.method)
        extra: dict[str, Any] = {}
        if self.inner is not None:
            config = self.config
            extra = inner_form(self.inner).kwargs(
                self.get_problem().params, config["steps"], config["inner_lr"],
                learn=cls.hyper_gradient is not None, jitter=self.seed + 7)
            config = {**config, **{k: v for k, v in extra.items() if k in config}}
            extra = {k: v for k, v in extra.items() if k not in config}
            return cls(**config, **self.option, **extra)
        return cls(**self.config, **self.option)

    def get_problem(self) -> Problem:
        return get(self.problem, self.meta_batch, self.seed, self.dtype)

    @property
    def setting(self) -> str:
        return " ".join(f"{k}={v:g}" for k, v in self.settings)

    @property
    def variant(self) -> str:
        """The code path: ``vmap/revrev``, and the method's own options after it."""
        option = self.option
        own = [str(getattr(v, "name", v)) for k, v in self.options if k not in DEFAULT_OPTIONS]
        return "/".join([option["batching"], option["hvp"], *own])

    @property
    def id(self) -> str:
        form = f"-{self.inner}" if self.inner else ""
        return f"{self.method}{form}-{self.problem}-T{self.meta_batch}-" \
               f"{self.setting.replace(' ', ',')}-{self.variant}"


@dataclass
class Outcome:
    grad: Tensor
    pre_update_loss: Tensor
    post_update_loss: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    hyper_grad: Tensor | None = None
    """The meta-parameters' gradients, flat (:func:`flat_hyper`), or None."""


def rel_error(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (absolute error when b = 0), computed in float64."""
    a, b = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    denom = float(torch.linalg.vector_norm(b))
    err = float(torch.linalg.vector_norm(a - b))
    return err / denom if denom > 0 else err


def run_method(case: Case, method=None) -> Outcome:
    """The public call: ``method(loss, params, tasks)``, flattened for comparison."""
    problem = case.get_problem()
    method = case.build() if method is None else method
    out = method(problem.loss, problem.params, problem.tasks)
    return Outcome(oracle.flatten(out.grad), out.pre_update_loss, out.post_update_loss,
                   out.diagnostics, flat_hyper(getattr(out, "hyper_grad", {})))


def flat_hyper(hyper: Mapping[str, Any]) -> Tensor | None:
    """Every meta-parameter gradient (``inner_lr`` rates in their order, then ``beta``) as
    one vector, or None when there are none."""
    parts = []
    for key in sorted(hyper, key=lambda k: (k != "inner_lr", k)):
        value = hyper[key]
        values = value.values() if isinstance(value, Mapping) else [value]
        parts += [v.detach().reshape(-1) for v in values]
    return torch.cat(parts) if parts else None


def reference_result(problem: Problem, method: str | Method,
                     settings: dict[str, Any] | None = None) -> Any:
    """The oracle's dense value of the quantity a method computes (``method`` an object, or
    a registered name with its ``settings``): ``metagrad_reference.METHODS[oracle name]``
    for the plain inner loop, ``metagrad_reference.inner_loops`` for the variants (then
    with the meta-parameters' gradients, ``hyper_grad``)."""
    m = as_method(method, settings)
    f, theta = flat(problem)
    name = type(m).oracle_name or m.name
    settings = m.settings()
    key = ("reference", *identity(m))
    if not plain_loop(m):
        from metagrad_reference import inner_loops as il

        if name not in il.LEARNED_METHODS:
            raise ValueError(f"the oracle has no inner-loop-variant reference for {m.name!r} "
                             f"({', '.join(il.LEARNED_METHODS)} have one)")
        rest = {k: v for k, v in settings.items() if k not in ("inner_lr",)}
        return _cached(problem, key, lambda: il.meta_batch(
            name, f, theta, layout(problem), problem.task_list(), **rest, **oracle_variant(m)))
    if name not in oracle.METHODS:
        raise ValueError(
            f"the oracle has no reference for {m.name!r}: set {type(m).__name__}.oracle_name "
            f"to the quantity it computes ({', '.join(oracle.METHODS)}) or add a dense "
            f"reference to metagrad_reference.METHODS[{name!r}]")
    return _cached(problem, key, lambda: oracle.meta_batch(name, f, theta,
                                                           problem.task_list(), **settings))


def closed_form_result(problem: Problem, method: str | Method,
                       settings: dict[str, Any] | None = None) -> Tensor | None:
    m = as_method(method, settings)
    name = type(m).oracle_name or m.name
    if not problem.closed_form or name not in cf.METHODS or not plain_loop(m):
        return None
    theta = oracle.flatten(problem.params)
    per_task = [cf.METHODS[name](_xy(train), _xy(val), theta, **m.settings())
                for train, val in problem.task_list()]
    return torch.stack(per_task).mean(0)


def _xy(batch):
    x, y = batch
    return x, y.reshape(-1)


def fd_result(problem: Problem, method: str | Method,
              settings: dict[str, Any] | None = None) -> Tensor | None:
    """Central differences of the objective the method's gᵢ is the gradient of (or None),
    through the method's own inner loop."""
    m = as_method(method, settings)
    objective = type(m).gradient_of
    if objective is None:
        return None
    key = ("fd", objective, *identity(m))
    if plain_loop(m):
        loop = m.inner_loop
        return _cached(problem, key, lambda: _fd(problem, objective, loop.steps,
                                                 _rates.number(loop.inner_lr), m.settings()))
    if objective == "train_along_path":  # a sum of gradients only for plain descent
        return None
    return _cached(problem, key, lambda: _fd_variant(problem, objective, m))


def fd_hyper_result(problem: Problem, method: str | Method,
                    settings: dict[str, Any] | None = None) -> Tensor | None:
    """Central differences of MAML's objective in its meta-parameters (rates, β), flattened
    as :func:`flat_hyper` orders them; None for a method that has no such objective."""
    m = as_method(method, settings)
    hyper = m.inner_loop.hyper()
    if type(m).gradient_of != "meta_objective" or not hyper:
        return None
    return _cached(problem, ("fd_hyper", *identity(m)), lambda: _fd_hyper(problem, m))


def _objective_of(problem: Problem, m: Method):
    """The per-task MAML objectives (θ, rates, β) ↦ F of the method's inner loop."""
    from metagrad_reference import inner_loops as il

    spec = oracle_variant(m)
    f, _ = flat(problem)
    per_task = [il.maml_objective(f, layout(problem), tr, val, steps=m.steps, rule=spec["rule"],
                                  weights=spec.get("weights"))
                for tr, val in problem.task_list()]
    return per_task, spec


def _fd(problem: Problem, objective: str, steps: int, inner_lr: float,
        s: dict[str, Any]) -> Tensor:
    """Central differences of ``objective`` with the inner loop of ``steps`` plain gradient
    descent steps of size ``inner_lr`` (the method's own loop, not its settings' names)."""
    f, theta = flat(problem)
    tasks = problem.task_list()
    s = {**s, "steps": steps, "inner_lr": inner_lr}

    def cd(fun, x):
        return finite_diff.central_difference(fun, x, vectorize=True)

    if objective == "meta_objective":
        return cd(targets.mean_objective(
            [targets.maml_objective(f, tr, val, s["steps"], s["inner_lr"]) for tr, val in tasks]),
            theta)
    per_task = []
    for tr, val in tasks:
        points = dense.gd_trajectory(f, theta, tr, s["steps"], s["inner_lr"])
        if objective == "val_at_phi":
            per_task.append(cd(lambda p, val=val: f(p, val).detach(), points[-1]))
        elif objective == "train_along_path":
            total = torch.zeros_like(theta)
            for point in points[:-1]:
                total = total + s["inner_lr"] * cd(lambda p, tr=tr: f(p, tr).detach(), point)
            per_task.append(total)
        elif objective == "penalty_at_phi":
            per_task.append(cd(targets.penalty_objective(f, tr, val, s["lam"]), points[-1]))
        else:
            raise ValueError(f"no finite-difference objective {objective!r}")
    return torch.stack(per_task).mean(0)


def _fd_variant(problem: Problem, objective: str, m: Method) -> Tensor:
    from metagrad_reference import inner_loops as il

    f, theta = flat(problem)
    spec = oracle_variant(m)
    if objective == "meta_objective":
        per_task, _ = _objective_of(problem, m)
        mean = targets.mean_objective([lambda t, F=F: F(t, spec["rates"]) for F in per_task])
        return finite_diff.central_difference(mean, theta)
    grads = []
    s = m.settings()
    for tr, val in problem.task_list():
        phi = il.trajectory(f, theta, layout(problem), tr, steps=m.steps, rates=spec["rates"],
                            rule=spec["rule"])[-1]
        if objective == "val_at_phi":
            grads.append(finite_diff.central_difference(
                lambda p, val=val: f(p, val).detach(), phi, vectorize=True))
        elif objective == "penalty_at_phi":
            grads.append(finite_diff.central_difference(
                targets.penalty_objective(f, tr, val, s["lam"]), phi, vectorize=True))
        else:
            raise ValueError(f"no finite-difference objective {objective!r}")
    return torch.stack(grads).mean(0)


def _fd_hyper(problem: Problem, m: Method) -> Tensor:
    """∂F/∂(rates, β) by central differences of the mean objective, one flat vector."""
    _, theta = flat(problem)
    per_task, spec = _objective_of(problem, m)
    rates, rule = spec["rates"], spec["rule"]
    pieces: list[tuple[str, Any]] = []  # (kind, key) in flat_hyper's order
    if isinstance(rates, Mapping):
        pieces += [("rate", k) for k in rates]
    elif isinstance(rates, Tensor):
        pieces.append(("rate", None))
    if isinstance(rule.beta, Tensor) and rule.kind in ("momentum", "nesterov"):
        pieces.append(("beta", None))
    out = []
    for kind, name in pieces:
        base = rule.beta if kind == "beta" else rates[name] if name is not None else rates

        def fun(x, kind=kind, name=name, base=base):
            new = x.reshape(base.shape)
            if kind == "beta":
                return sum(F(theta, rates, new) for F in per_task) / len(per_task)
            r = {**rates, name: new} if name is not None else new
            return sum(F(theta, r) for F in per_task) / len(per_task)

        # A step relative to each rate: rates are small (≈ 0.01), and the default step
        # ε^(1/3)·max(1, |x|) would be a large fraction of them (error 2.6e-7 seen).
        x0 = base.reshape(-1)
        step = torch.finfo(x0.dtype).eps ** (1 / 3) * x0.abs().clamp_min(1e-8)
        out.append(finite_diff.central_difference(fun, x0, step=step))
    return torch.cat(out)


def target_key(method: str | Method, settings: dict[str, Any] | None = None) -> tuple:
    """What the bilevel-exact target of a method depends on, whichever method approximates
    it: λ for the implicit gradient, the method's own inner loop (and loss weights) for
    MAML's meta-gradient (a key for caches of it, in memory or on disk)."""
    if isinstance(method, str) and settings is not None:
        settings = {k: v for k, v in settings.items()
                    if k in method_class(method).setting_names()}
    m = as_method(method, settings)
    if m.implicit:
        return ("implicit", m.settings()["lam"])
    return ("maml_target", freeze(replace(m.inner_loop, lam=None)),
            freeze(getattr(m, "step_weights", None)))


def exact_target(problem: Problem, method: str | Method,
                 settings: dict[str, Any] | None = None) -> Tensor:
    """The bilevel-exact meta-gradient (mean over tasks, flat, in the problem's dtype) that a
    method approximates: the implicit gradient λ(H(φ*) + λI)⁻¹ ∇L_val(φ*) at its ``lam``
    for the implicit methods, MAML's ∇_θ F through the method's own inner loop (its steps,
    step sizes, update rule and loss weights) for the others. Raises ``ValueError`` where
    the implicit gradient is undefined (no strict proximal minimiser reached, e.g. on a
    ReLU net)."""
    if isinstance(method, str) and settings is not None:
        settings = {k: v for k, v in settings.items()
                    if k in method_class(method).setting_names()}
    m = as_method(method, settings)
    f, theta = flat(problem)
    key = target_key(m)
    if m.implicit:
        lam = m.settings()["lam"]

        def compute():
            return torch.stack([targets.implicit_gradient(f, theta, tr, val, lam)
                                for tr, val in problem.task_list()]).mean(0)
    elif plain_loop(m):
        loop = m.inner_loop

        def compute():
            return torch.stack([targets.maml_gradient(f, theta, tr, val, loop.steps,
                                                      _rates.number(loop.inner_lr))
                                for tr, val in problem.task_list()]).mean(0)
    else:
        from metagrad_reference import inner_loops as il

        def compute():
            return il.meta_batch(il.maml, f, theta, layout(problem), problem.task_list(),
                                 steps=m.steps, **oracle_variant(m)).grad
    return _cached(problem, key, compute)


def evaluate(case: Case, *, fd: bool = True, target: bool = True, method=None) -> dict[str, Any]:
    """One row of the verification table (see the module docstring)."""
    problem = case.get_problem()
    settings = case.config
    built = case.build()
    out = run_method(case, built if method is None else method)
    ref = reference_result(problem, built)
    row: dict[str, Any] = {
        "method": case.method, "problem": problem.name, "setting": case.setting,
        "meta_batch": case.meta_batch, "variant": case.variant, "dim": problem.dim,
        **{k: settings.get(k) for k in SETTINGS},
        "err_reference": rel_error(out.grad, ref.grad),
        "err_loss": max(rel_error(out.pre_update_loss, ref.pre_update_loss),
                        rel_error(out.post_update_loss, ref.post_update_loss)),
        "err_closed_form": None, "err_fd": None, "approx_error": None,
    }
    if case.inner is not None:
        row["inner"] = case.inner
        want = flat_hyper(getattr(ref, "hyper_grad", {}))
        row["err_hyper"] = (None if want is None and out.hyper_grad is None else
                            math.inf if want is None or out.hyper_grad is None else
                            rel_error(out.hyper_grad, want))
    closed = closed_form_result(problem, built)
    if closed is not None:
        row["err_closed_form"] = rel_error(out.grad, closed)
    if fd:
        numeric = fd_result(problem, built)
        if numeric is not None:
            row["err_fd"] = rel_error(out.grad, numeric)
        if case.inner is not None and out.hyper_grad is not None:
            numeric = fd_hyper_result(problem, built)
            if numeric is not None:
                row["err_fd_hyper"] = rel_error(out.hyper_grad, numeric)
    if target:
        row["approx_error"] = rel_error(out.grad, exact_target(problem, built))
    row["passed"] = passed(row)
    return row


def passed(row: dict[str, Any]) -> bool:
    ok = row["err_reference"] <= REF_RTOL and row["err_loss"] <= REF_RTOL
    for key, tol in (("err_closed_form", REF_RTOL), ("err_hyper", REF_RTOL),
                     ("err_fd", FD_RTOL), ("err_fd_hyper", FD_RTOL)):
        if row.get(key) is not None:
            ok = ok and row[key] <= tol
    return bool(ok)
