"""Comparisons of metagrad's public methods with the oracle in ``reference/``.

A :class:`Case` is one row of the verification table: a method with its
settings and code path (batching, HVP mode, MAML backward) on one problem.
:func:`evaluate` runs the public class, ``mg.METHODS[name](...)(loss, params,
tasks)``, and measures, as norm-wise relative errors ‖a − b‖ / ‖b‖:

* ``err_reference``: against the dense reference of the *same* quantity
  (``reference.methods``); Level 1 of DESIGN.md, must be ≤ ``REF_RTOL``;
* ``err_loss``: pre- and post-update losses against the reference (≤ ``REF_RTOL``);
* ``err_closed_form``: against the closed form (linear regression only);
* ``err_fd``: against central finite differences of the objective that the
  method's quantity is the exact gradient of, where there is one (MAML: θ ↦
  L_val(θ⁽ᴷ⁾(θ)); FOMAML: L_val at φ; Reptile: L_tr along the trajectory;
  Penalty: L_val + λ‖∇L_tr‖² at φ); must be ≤ ``FD_RTOL``;
* ``approx_error``: against the bilevel-exact target (``reference.targets``):
  Level 2, reported, never a pass/fail criterion by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import reference
from reference import closed_form as cf
from reference import dense, finite_diff, targets

from ..methods import MAML, METHODS
from .problems import Problem, get

REF_RTOL = 1e-9
"""Level 1: method vs its dense float64 reference (DESIGN.md)."""
FD_RTOL = 1e-7
"""Level 1: gradient vs central finite differences; the FD error itself is ~1e-9 here
(truncation h²F'''/6 + roundoff ε|F|/h at h ≈ 6e-6), so 1e-7 leaves headroom without
letting a 1e-6 error through."""

SETTING_KEYS = ("steps", "inner_lr", "lam", "cg_iters", "terms", "step")


@dataclass(frozen=True)
class Case:
    method: str
    problem: str
    settings: tuple[tuple[str, Any], ...]
    num_tasks: int = 2
    batching: str = "vmap"
    hvp: str = "revrev"
    backward: str = "unrolled"
    seed: int = 0
    dtype: torch.dtype = torch.float64

    @staticmethod
    def of(method: str, problem: str, num_tasks: int = 2, batching: str = "vmap",
           hvp: str = "revrev", backward: str = "unrolled", **settings: Any) -> Case:
        unknown = set(settings) - set(SETTING_KEYS)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return Case(method, problem, tuple(sorted(settings.items())), num_tasks, batching, hvp,
                    backward)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.settings)

    def build(self):
        cls = METHODS[self.method]
        extra: dict[str, Any] = {"backward": self.backward} if cls is MAML else {}
        return cls(**self.config, batching=self.batching, hvp=self.hvp, **extra)

    def get_problem(self) -> Problem:
        return get(self.problem, self.num_tasks, self.seed, self.dtype)

    @property
    def setting(self) -> str:
        return " ".join(f"{k}={v:g}" for k, v in self.settings)

    @property
    def variant(self) -> str:
        parts = [self.batching, self.hvp]
        if self.method == "maml":
            parts.append(self.backward)
        return "/".join(parts)

    @property
    def id(self) -> str:
        return f"{self.method}-{self.problem}-T{self.num_tasks}-{self.setting.replace(' ', ',')}" \
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
    return Outcome(reference.flatten(out.grad), out.pre_update_loss, out.post_update_loss,
                   out.diagnostics)


def _cached(problem: Problem, key: tuple, compute):
    if key not in problem.cache:
        problem.cache[key] = compute()
    return problem.cache[key]


def reference_result(problem: Problem, method: str,
                     settings: dict[str, Any]) -> reference.RefResult:
    f, theta = problem.flat()
    key = ("reference", method, tuple(sorted(settings.items())))
    return _cached(problem, key, lambda: reference.meta_batch(method, f, theta,
                                                              problem.task_list(), **settings))


def closed_form_result(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor | None:
    if not problem.closed_form:
        return None
    theta = reference.flatten(problem.params)
    per_task = [cf.METHODS[method](_xy(train), _xy(val), theta, **settings)
                for train, val in problem.task_list()]
    return torch.stack(per_task).mean(0)


def _xy(batch):
    x, y = batch
    return x, y.reshape(-1)


def fd_result(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor | None:
    """Central differences of the objective the method's gᵢ is the gradient of (or None)."""
    key = ("fd", method, tuple(sorted(settings.items())))
    if method in ("imaml", "neumann"):
        return None
    return _cached(problem, key, lambda: _fd(problem, method, settings))


def _fd(problem: Problem, method: str, s: dict[str, Any]) -> Tensor:
    f, theta = problem.flat()
    tasks = problem.task_list()

    def cd(fun, x):
        return finite_diff.central_difference(fun, x, vectorize=True)

    if method == "maml":
        objective = targets.mean_objective(
            [targets.maml_objective(f, tr, val, s["steps"], s["inner_lr"]) for tr, val in tasks])
        return cd(objective, theta)
    per_task = []
    for tr, val in tasks:
        points = dense.gd_trajectory(f, theta, tr, s["steps"], s["inner_lr"])
        if method == "fomaml":
            per_task.append(cd(lambda p, val=val: f(p, val).detach(), points[-1]))
        elif method == "reptile":
            total = torch.zeros_like(theta)
            for point in points[:-1]:
                total = total + s["inner_lr"] * cd(lambda p, tr=tr: f(p, tr).detach(), point)
            per_task.append(total)
        elif method == "penalty":
            per_task.append(cd(targets.penalty_objective(f, tr, val, s["lam"]), points[-1]))
        else:
            raise ValueError(f"no finite-difference objective for {method!r}")
    return torch.stack(per_task).mean(0)


def target_result(problem: Problem, method: str, settings: dict[str, Any]) -> Tensor:
    """The bilevel-exact target (mean over tasks), see ``reference.targets.target``."""
    f, theta = problem.flat()
    key: tuple
    if method in ("imaml", "neumann"):
        key = ("implicit", settings["lam"])
    else:
        key = ("maml_target", settings["steps"], settings["inner_lr"])
    return _cached(problem, key, lambda: torch.stack(
        [targets.target(method, f, theta, tr, val, **settings)
         for tr, val in problem.task_list()]).mean(0))


def evaluate(case: Case, *, fd: bool = True, target: bool = True, method=None) -> dict[str, Any]:
    """One row of the verification table (see the module docstring)."""
    problem = case.get_problem()
    settings = case.config
    out = run_method(case, method)
    ref = reference_result(problem, case.method, settings)
    row: dict[str, Any] = {
        "method": case.method, "problem": problem.name, "setting": case.setting,
        "num_tasks": case.num_tasks, "variant": case.variant, "dim": problem.dim,
        **{k: settings.get(k) for k in SETTING_KEYS},
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
        row["approx_error"] = rel_error(out.grad, target_result(problem, case.method, settings))
    row["passed"] = passed(row)
    return row


def passed(row: dict[str, Any]) -> bool:
    ok = row["err_reference"] <= REF_RTOL and row["err_loss"] <= REF_RTOL
    if row.get("err_closed_form") is not None:
        ok = ok and row["err_closed_form"] <= REF_RTOL
    if row.get("err_fd") is not None:
        ok = ok and row["err_fd"] <= FD_RTOL
    return bool(ok)
