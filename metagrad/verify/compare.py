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

from dataclasses import dataclass, field, fields
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
"""Oracle results already computed, keyed by the problem's key and what was computed
(they are expensive and the same problem is checked many times)."""


def _cached(problem: Problem, key: tuple, compute):
    full = (problem.key, *key)
    if full not in _CACHE:
        _CACHE[full] = compute()
    return _CACHE[full]


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


@dataclass(frozen=True)
class Case:
    method: str
    problem: str
    settings: tuple[tuple[str, Any], ...]
    meta_batch: int = 2
    batching: str = "vmap"
    hvp: str = "revrev"
    backward: str = "unrolled"
    seed: int = 0
    dtype: torch.dtype = torch.float64

    @staticmethod
    def of(method: str, problem: str, meta_batch: int = 2, batching: str = "vmap",
           hvp: str = "revrev", backward: str = "unrolled", **settings: Any) -> Case:
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return Case(method, problem, tuple(sorted(settings.items())), meta_batch, batching,
                    hvp, backward)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.settings)

    @property
    def _has_backward(self) -> bool:
        return "backward" in {f.name for f in fields(method_class(self.method))}

    def build(self):
        extra: dict[str, Any] = {"backward": self.backward} if self._has_backward else {}
        return method_class(self.method)(**self.config, batching=self.batching, hvp=self.hvp,
                                         **extra)

    def get_problem(self) -> Problem:
        return get(self.problem, self.meta_batch, self.seed, self.dtype)

    @property
    def setting(self) -> str:
        return " ".join(f"{k}={v:g}" for k, v in self.settings)

    @property
    def variant(self) -> str:
        parts = [self.batching, self.hvp]
        if self._has_backward:
            parts.append(self.backward)
        return "/".join(parts)

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
    f, theta = flat(problem)
    key = ("reference", method, tuple(sorted(settings.items())))
    return _cached(problem, key, lambda: oracle.meta_batch(method, f, theta,
                                                           problem.task_list(), **settings))


def closed_form_result(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor | None:
    if not problem.closed_form:
        return None
    theta = oracle.flatten(problem.params)
    per_task = [cf.METHODS[method](_xy(train), _xy(val), theta, **settings)
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
    key = ("fd", objective, tuple(sorted(settings.items())))
    return _cached(problem, key, lambda: _fd(problem, objective, settings))


def _fd(problem: Problem, objective: str, s: dict[str, Any]) -> Tensor:
    f, theta = flat(problem)
    tasks = problem.task_list()

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


def exact_target(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor:
    """The bilevel-exact meta-gradient (mean over tasks, flat, in the problem's dtype) that
    method ``method`` approximates: the implicit gradient λ(H(φ*) + λI)⁻¹ ∇L_val(φ*) at its
    ``lam`` for the implicit methods, MAML's ∇_θ L_val(θ⁽ᴷ⁾(θ)) at its ``steps`` and
    ``inner_lr`` for the others. Raises ``ValueError`` where the implicit gradient is
    undefined (no strict proximal minimiser reached, e.g. on a ReLU net)."""
    f, theta = flat(problem)
    key: tuple
    if is_implicit(method):
        key = ("implicit", settings["lam"])

        def compute():
            return torch.stack([targets.implicit_gradient(f, theta, tr, val, settings["lam"])
                                for tr, val in problem.task_list()]).mean(0)
    else:
        key = ("maml_target", settings["steps"], settings["inner_lr"])

        def compute():
            return torch.stack([targets.maml_gradient(f, theta, tr, val, settings["steps"],
                                                      settings["inner_lr"])
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
