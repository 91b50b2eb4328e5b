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
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import metagrad_reference as oracle
import torch
from metagrad_reference import closed_form as cf
from metagrad_reference import dense, finite_diff, targets
from torch import Tensor

from ..methods import SETTINGS, is_implicit, method_class
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
    if isinstance(value, dict):
        return ("dict", tuple((k, freeze(v)) for k, v in sorted(value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(freeze(v) for v in value))
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__,
                tuple((f.name, freeze(getattr(value, f.name))) for f in fields(value)))
    return value


def identity(method: str, settings: dict[str, Any]) -> tuple:
    """What defines method ``method``'s quantity at ``settings``: its name, the oracle
    quantity it stands for, every setting, and the inner loop it runs."""
    cls = method_class(method)
    loop = cls(**settings).inner_loop
    return (method, cls.oracle_name or method, freeze(settings), freeze(loop))


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

    @staticmethod
    def of(method: str, problem: str, meta_batch: int = 2, **given: Any) -> Case:
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
        return Case(method, problem, tuple(sorted(settings.items())), meta_batch,
                    tuple(sorted(options.items())))

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

    def build(self):
        return method_class(self.method)(**self.config, **self.option)

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
        return f"{self.method}-{self.problem}-T{self.meta_batch}-{self.setting.replace(' ', ',')}" \
               f"-{self.variant}"


@dataclass
class Outcome:
    grad: Tensor
    pre_update_loss: Tensor
    post_update_loss: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


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
                   out.diagnostics)


def reference_result(problem: Problem, method: str, settings: dict[str, Any]) -> oracle.RefResult:
    """The oracle's dense value of the quantity method ``method`` computes at ``settings``
    (``metagrad_reference.METHODS[oracle name]``)."""
    f, theta = flat(problem)
    name = method_class(method).oracle_name or method
    if name not in oracle.METHODS:
        raise ValueError(
            f"the oracle has no reference for {method!r}: set {method_class(method).__name__}"
            f".oracle_name to the quantity it computes ({', '.join(oracle.METHODS)}) or add "
            f"a dense reference to metagrad_reference.METHODS[{name!r}]")
    key = ("reference", *identity(method, settings))
    return _cached(problem, key, lambda: oracle.meta_batch(name, f, theta,
                                                           problem.task_list(), **settings))


def closed_form_result(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor | None:
    name = method_class(method).oracle_name or method
    if not problem.closed_form or name not in cf.METHODS:
        return None
    theta = oracle.flatten(problem.params)
    per_task = [cf.METHODS[name](_xy(train), _xy(val), theta, **settings)
                for train, val in problem.task_list()]
    return torch.stack(per_task).mean(0)


def _xy(batch):
    x, y = batch
    return x, y.reshape(-1)


def fd_result(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor | None:
    """Central differences of the objective the method's gᵢ is the gradient of (or None)."""
    objective = method_class(method).gradient_of
    if objective is None:
        return None
    loop = method_class(method)(**settings).inner_loop
    key = ("fd", objective, *identity(method, settings))
    return _cached(problem, key, lambda: _fd(problem, objective, loop.steps, loop.inner_lr,
                                             settings))


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


def target_key(method: str, settings: dict[str, Any]) -> tuple:
    """What the bilevel-exact target of ``method`` at ``settings`` depends on, whichever
    method approximates it: λ for the implicit gradient, the method's own inner loop for
    MAML's meta-gradient (a key for caches of it, in memory or on disk)."""
    settings = {k: v for k, v in settings.items() if k in method_class(method).setting_names()}
    if is_implicit(method):
        return ("implicit", settings["lam"])
    loop = method_class(method)(**settings).inner_loop
    return ("maml_target", freeze(replace(loop, lam=None)))


def exact_target(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor:
    """The bilevel-exact meta-gradient (mean over tasks, flat, in the problem's dtype) that
    method ``method`` approximates: the implicit gradient λ(H(φ*) + λI)⁻¹ ∇L_val(φ*) at its
    ``lam`` for the implicit methods, MAML's ∇_θ L_val(θ⁽ᴷ⁾(θ)) at its ``steps`` and
    ``inner_lr`` for the others. Raises ``ValueError`` where the implicit gradient is
    undefined (no strict proximal minimiser reached, e.g. on a ReLU net)."""
    settings = {k: v for k, v in settings.items() if k in method_class(method).setting_names()}
    f, theta = flat(problem)
    key = target_key(method, settings)
    if is_implicit(method):

        def compute():
            return torch.stack([targets.implicit_gradient(f, theta, tr, val, settings["lam"])
                                for tr, val in problem.task_list()]).mean(0)
    else:
        loop = method_class(method)(**settings).inner_loop

        def compute():
            return torch.stack([targets.maml_gradient(f, theta, tr, val, loop.steps,
                                                      loop.inner_lr)
                                for tr, val in problem.task_list()]).mean(0)
    return _cached(problem, key, compute)


def evaluate(case: Case, *, fd: bool = True, target: bool = True, method=None) -> dict[str, Any]:
    """One row of the verification table (see the module docstring)."""
    problem = case.get_problem()
    settings = case.config
    out = run_method(case, method)
    ref = reference_result(problem, case.method, settings)
    row: dict[str, Any] = {
        "method": case.method, "problem": problem.name, "setting": case.setting,
        "meta_batch": case.meta_batch, "variant": case.variant, "dim": problem.dim,
        **{k: settings.get(k) for k in SETTINGS},
        "err_reference": rel_error(out.grad, ref.grad),
        "err_loss": max(rel_error(out.pre_update_loss, ref.pre_update_loss),
                        rel_error(out.post_update_loss, ref.post_update_loss)),
        "err_closed_form": None, "err_fd": None, "approx_error": None,
    }
    closed = closed_form_result(problem, case.method, settings)
    if closed is not None:
        row["err_closed_form"] = rel_error(out.grad, closed)
    if fd:
        numeric = fd_result(problem, case.method, settings)
        if numeric is not None:
            row["err_fd"] = rel_error(out.grad, numeric)
    if target:
        row["approx_error"] = rel_error(out.grad, exact_target(problem, case.method, settings))
    row["passed"] = passed(row)
    return row


def passed(row: dict[str, Any]) -> bool:
    ok = row["err_reference"] <= REF_RTOL and row["err_loss"] <= REF_RTOL
    if row.get("err_closed_form") is not None:
        ok = ok and row["err_closed_form"] <= REF_RTOL
    if row.get("err_fd") is not None:
        ok = ok and row["err_fd"] <= FD_RTOL
    return bool(ok)
