"""Numerical diagnostics: a meta-gradient is never silently wrong.

Every method returns per-task diagnostics (inner losses, solver curvatures and
residuals). The checks here read them after the batched call, and only when
something looks wrong do they spend extra work (a few power iterations on
Hessian-vector products) to say *why* and *what to change*.

Conditions checked:

* non-finite losses or meta-gradients, naming the task and inner step;
* inner-loop blow-up: plain GD on L_tr converges only for α L < 2, proximal
  GD only for α (λ + L) < 2, with L = λ_max(∇²L_tr);
* the implicit methods' system A = I + H/λ must be positive definite
  (λ > −λ_min(H)); each linear solver adds its own checks (CG stopping with a
  large residual, a Neumann series whose terms grow), see ``metagrad._solvers``.

Each problem found is a :class:`Finding` value: its ``kind``, a message, and
the tasks it affects. ``method(..., diagnose=...)`` decides what happens to
them: ``"warn"`` (default) emits a :class:`MetaGradientWarning` per finding,
``"error"`` raises :class:`NumericalError`, ``"record"`` only keeps them in
``MetaGradient.findings`` (the messages are ``MetaGradient.warnings``), and
``"off"`` skips the checks (for compiled or benchmarked calls).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils import _pytree as torch_pytree

from . import _pytree as pt
from ._hvp import Loss, hvp
from ._pytree import Params

DIAGNOSE_MODES = ("warn", "error", "record", "off")

RISE_TOL = 1e-4
"""Relative rise of an inner loss above L_tr(θ) that counts as non-descent (well above
float32 rounding). Descent lemma: a GD step with α < 2/L never raises an L-smooth loss,
and a proximal step with α(λ + L) < 2 never raises L_tr above L_tr(θ) (it lowers
L_tr(φ) + λ/2‖φ − θ‖², which starts at L_tr(θ) and bounds L_tr(φ) from above)."""


class MetaGradientWarning(UserWarning):
    """A numerical problem that makes a meta-gradient unreliable."""


class NumericalError(ArithmeticError):
    """Raised instead of :class:`MetaGradientWarning` under ``diagnose="error"``."""


def describe_tasks(tasks: tuple[int, ...]) -> str:
    """``"task 3"``, ``"task 3 and 2 other(s)"``: where in the meta-batch a problem is."""
    if not tasks:
        return "no task"
    return f"task {tasks[0]}" + (f" and {len(tasks) - 1} other(s)" if len(tasks) > 1 else "")


@dataclass(frozen=True)
class Finding:
    """One numerical problem found in a meta-gradient call, as a value.

    Attributes
    ----------
    kind : str
        The class of problem, one of :data:`KINDS`.
    template : str
        The explanation, in which ``{where}`` stands for the affected tasks (so that the
        message can be re-rendered when tasks are renumbered, e.g. across processes);
        ``message`` is it rendered.
    tasks : tuple of int
        The affected task indices within the call's meta-batch.
    method : str
        The method's name.
    """

    kind: str
    template: str
    tasks: tuple[int, ...] = ()
    method: str = ""

    @property
    def message(self) -> str:
        return self.template.replace("{where}", describe_tasks(self.tasks))

    def offset(self, first_task: int) -> Finding:
        """The same finding with task indices shifted by ``first_task``."""
        return replace(self, tasks=tuple(t + first_task for t in self.tasks))

    def __str__(self) -> str:
        return f"{self.method}: {self.message}" if self.method else self.message


KINDS = {
    "non_finite": "a loss or the meta-gradient is NaN or infinite",
    "inner_loop_rise": "the inner loss rose: the inner step size is too large",
    "not_solved": "zero iterations of something that should approximate a solution",
    "proximal_rate": "the proximal inner loop cannot converge at this inner_lr and lam",
    "indefinite_system": "I + H/λ is not positive definite: the implicit gradient is undefined",
    "singular_system": "I + H/λ is singular or nearly so: no solver iterations can help",
    "cg_unconverged": "CG stopped with a large relative residual",
    "neumann_divergence": "the Neumann series diverges",
    "neumann_unconverged": "the Neumann series was cut far from its limit",
}
"""The kinds of :class:`Finding`, with what each means."""


def emit(findings: list[Finding], mode: str) -> None:
    """Act on ``findings`` as ``diagnose=mode`` says (see the module docstring)."""
    if mode in ("record", "off"):
        return
    for finding in findings:
        if mode == "error":
            raise NumericalError(str(finding))
        warnings.warn(str(finding), MetaGradientWarning, stacklevel=4)


def tasks_of(mask: Tensor) -> tuple[int, ...]:
    """Indices of the tasks (dim 0) where ``mask`` is true anywhere."""
    return tuple(torch.nonzero(mask.reshape(mask.shape[0], -1).any(1)).flatten().tolist())


def finite_or(x: Tensor, fill: float) -> Tensor:
    """``x`` with non-finite entries replaced by ``fill``: tasks that already failed with
    NaN are reported by :func:`check_finite` and must not hide the others' numbers."""
    return torch.where(torch.isfinite(x), x, torch.full_like(x, fill))


def largest_curvature(loss: Loss, params: Params, train: Any, iters: int = 20,
                      mode: str = "auto", batching: str = "vmap") -> Tensor:
    """Per-task estimate of L = max |eigenvalue| of ∇²L_tr(params) by power iteration.

    Used only to explain a problem already detected, so its cost (``iters`` HVPs
    per task) is not paid on healthy calls. Deterministic start vector. With
    ``batching="loop"`` the tasks are visited one by one, never under ``vmap``
    (a loss that vmap cannot trace must not fail here).
    """
    gen = torch.Generator().manual_seed(0)
    start = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
             for k, v in params.items()}

    def one(batch: Any) -> Tensor:
        v = pt.scale(1.0 / pt.norm(start), start)
        estimate = torch.zeros((), dtype=next(iter(params.values())).dtype)
        for _ in range(iters):
            hv = hvp(loss, params, batch, v, mode)
            estimate = pt.norm(hv)
            v = pt.scale(1.0 / torch.where(estimate == 0, 1, estimate), hv)
        return estimate

    if batching == "loop":
        return torch.stack([one(b) for b in _tasks_of(train)])
    return vmap(one, in_dims=(_dims(train),), randomness="different")(train)


def loss_noise(loss: Loss, params: Params, train: Any, batching: str = "vmap",
               draws: int = 32) -> Tensor:
    """Per-task standard deviation of L_tr(θ) over repeated evaluations: 0 for a
    deterministic loss, the spread of its random masks for one with dropout. Run only to
    judge a suspected problem, with the random number generators restored afterwards."""
    devices = [v.device for v in params.values() if v.device.type == "cuda"][:1]

    def one(batch: Any) -> Tensor:
        return torch.stack([loss(params, batch) for _ in range(draws)]).std()

    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        if batching == "loop":
            return torch.stack([one(b) for b in _tasks_of(train)])
        return vmap(one, in_dims=(_dims(train),), randomness="different")(train)


def _dims(batch: Any) -> Any:
    return torch_pytree.tree_map(lambda x: 0 if isinstance(x, torch.Tensor) else None, batch)


def _tasks_of(batch: Any) -> list[Any]:
    """The per-task slices of a batch with a leading task dim (non-tensor leaves shared)."""
    count = next(x for x in torch_pytree.tree_leaves(batch) if isinstance(x, torch.Tensor)).shape[0]
    return [torch_pytree.tree_map(lambda x, i=i: x[i] if isinstance(x, torch.Tensor) else x,
                                  batch) for i in range(count)]


FINITE_KEYS = ("inner_losses", "final_inner_loss", "pre_update_loss", "post_update_loss",
               "grad_norm")
"""The per-task diagnostics that must be finite in a healthy call."""


def check_finite(diag: dict[str, Tensor]) -> list[Finding]:
    present = [diag[k].reshape(-1) for k in FINITE_KEYS if diag.get(k) is not None]
    # One reduction for the healthy case (the common one): small tensor ops cost
    # microseconds each, which is most of what the checks add to a small call.
    if bool(torch.isfinite(torch.cat([t.to(torch.float64) for t in present])).all()):
        return []
    found = []
    inner = diag.get("inner_losses")
    if inner is not None and inner.numel() and not torch.isfinite(inner).all():
        bad = ~torch.isfinite(inner)
        step = int(torch.nonzero(bad)[:, 1].min())
        if step == 0:
            # Before any inner step: the loss at θ itself, so the data or the loss.
            at_theta = bad[:, 0]
            found.append(Finding(
                "non_finite",
                "non-finite train loss L_tr(θ) at the parameters themselves, before any inner "
                "step, in {where}: the loss cannot be evaluated on this task's data (e.g. a "
                "batch whose every label is ignored, a log of zero), not a diverging inner "
                "loop", tasks_of(at_theta)))
            bad = bad & ~at_theta.unsqueeze(1)
        if bad.any():
            later = int(torch.nonzero(bad)[:, 1].min())
            found.append(Finding(
                "non_finite",
                f"non-finite inner-loop loss L_tr(θ⁽{later}⁾) from inner step {later} on in "
                "{where}: the inner loop diverged", tasks_of(bad)))
    final = diag.get("final_inner_loss")
    if final is not None:
        # Tasks whose loss is already non-finite at θ were reported above, as such.
        start_ok = (torch.isfinite(inner[:, 0]) if inner is not None and inner.numel()
                    else torch.ones_like(final, dtype=torch.bool))
        bad_final = ~torch.isfinite(final) & start_ok
        if bad_final.any():
            found.append(Finding(
                "non_finite", "non-finite train loss L_tr(φ) after the last inner step in "
                "{where}: the inner loop diverged", tasks_of(bad_final)))
    for key, what in (("pre_update_loss", "pre-update loss"),
                      ("post_update_loss", "post-update loss"),
                      ("grad_norm", "meta-gradient")):
        value = diag[key]
        if not torch.isfinite(value).all():
            found.append(Finding("non_finite", f"non-finite {what} in {{where}}",
                                 tasks_of(~torch.isfinite(value))))
    return found


def inner_path(diag: dict[str, Tensor]) -> Tensor:
    """L_tr(θ⁽ᵏ⁾) for k = 0 … K, per task: the logged inner losses and, when the checks ran,
    L_tr(φ) of the last iterate (shape ``(T, K + 1)``, or ``(T, K)`` without it)."""
    inner = diag["inner_losses"]
    final = diag.get("final_inner_loss")
    if final is None:
        return inner
    return torch.cat([inner, final.reshape(-1, 1).to(inner.dtype)], dim=1)


EXPLAIN_EVERY = 100
"""A method measures what explains an inner-loss rise (the curvature by power iteration,
the loss's own noise: tens of evaluations of the loss, more than a meta-gradient costs) at
most once every this many calls, and reuses the last measurement in between: in a training
run whose inner loss rises at every step, the checks would otherwise cost several times
the meta-gradient. The noise is reused only where it was zero (a deterministic loss); a
random loss (dropout) has its noise measured on every call's own tasks."""


def _measured(memo: dict[str, Any] | None, key: str, num_tasks: int,
              compute: Any) -> tuple[Tensor, int]:
    """``compute()``, or its value from ``memo`` if made fewer than :data:`EXPLAIN_EVERY`
    calls ago for as many tasks; with the number of calls since it was made."""
    if memo is None:
        return compute(), 0
    calls = memo.get("calls", 0)
    held = memo.get(key)
    if held is not None and calls - held[1] < EXPLAIN_EVERY and held[0].shape == (num_tasks,):
        return held[0], calls - held[1]
    value = compute()
    memo[key] = (value, calls)
    return value, 0


def check_inner_loop(diag: dict[str, Tensor], loss: Loss, theta: Params, tasks: Any,
                     inner_lr: float, lam: float | None, hvp_mode: str,
                     batching: str = "vmap", monotone: bool = True,
                     memo: dict[str, Any] | None = None) -> list[Finding]:
    """Non-descent of the inner loop, explained by α(λ + L) ≥ 2 with L by power iteration
    (α the largest inner step size).

    Every iterate is read, the last one φ included. Plain GD on an L-smooth loss with
    α < 2/L decreases the loss at every step (descent lemma), so any rise from one iterate
    to the next is a symptom. Proximal GD with α(λ + L) < 2 decreases L_tr + λ/2‖φ − θ‖²,
    which starts at L_tr(θ) and bounds L_tr(φ⁽ᵏ⁾) from above, so a rise of L_tr above
    L_tr(θ) is. A rule that is not a descent method step by step (``monotone=False``:
    momentum, Adam) may rise on the way; only an end above the start is a symptom there.
    Rises below ``RISE_TOL`` (relative), or below 8 units of rounding of the losses' dtype,
    are rounding. ``memo``: a method's own dict, in which the measurements that explain a
    rise are kept for :data:`EXPLAIN_EVERY` calls (``memo["calls"]`` counts them).
    """
    path = inner_path(diag)
    if path.shape[1] < 2:
        return []
    # Relative rises below RISE_TOL, or below a few units of the losses' own rounding
    # (bfloat16 keeps 8 bits: a flat loss moves by 0.4 % from rounding alone), are noise.
    tol = max(RISE_TOL, 8 * torch.finfo(path.dtype).eps)
    scale = path.abs().amax(1, keepdim=True)
    if not monotone:  # only the end is compared with the start
        path = path[:, [0, -1]]
    if lam is None and monotone:
        rise = path[:, 1:] > path[:, :-1] + tol * scale
    else:
        rise = path[:, 1:] > path[:, :1] + tol * scale
    # A task whose loss is non-finite at θ itself is the data's or the loss's problem
    # (check_finite says so), not the inner loop's.
    start_ok = torch.isfinite(path[:, :1])
    blown = (~torch.isfinite(path[:, 1:]) | rise) & start_ok
    if not blown.any():
        return []
    num_tasks = path.shape[0]
    # Only a deterministic loss's verdict (zero noise) is reused: a random loss's noise
    # belongs to this call's tasks, and another call's tasks may be noisier.
    noise, _ = _measured(memo, "noise", num_tasks,
                         lambda: loss_noise(loss, pt.detach(theta), tasks.train, batching))
    if memo is not None and bool((noise > 0).any()):
        memo.pop("noise", None)
    if bool((noise > 0).any()):
        # A random loss (dropout) draws a new mask at every evaluation: only rises beyond
        # its own noise are symptoms: six standard deviations of a difference of two, the
        # standard deviation estimated from 32 draws (with 6 draws and four, about one call
        # in five of a healthy K = 5 loop on a dropout MLP was reported).
        slack = 6 * (2 ** 0.5) * noise.reshape(-1, 1).to(path.dtype)
        if lam is None and monotone:
            rise = path[:, 1:] > path[:, :-1] + tol * scale + slack
        else:
            rise = path[:, 1:] > path[:, :1] + tol * scale + slack
        blown = (~torch.isfinite(path[:, 1:]) | rise) & start_ok
        if not blown.any():
            return []
    L, age = _measured(memo, "curvature", num_tasks,
                       lambda: largest_curvature(loss, pt.detach(theta), tasks.train,
                                                 mode=hvp_mode, batching=batching).detach())
    worst = int(torch.argmax(torch.where(torch.isfinite(L), L, torch.inf)))
    shift = lam or 0.0
    rate = inner_lr * (shift + float(L[worst]))
    what = "proximal gradient descent" if lam is not None else "gradient descent"
    cond = "inner_lr·(lam + L)" if lam is not None else "inner_lr·L"
    where = ("above L_tr(θ)" if lam is not None else "from one inner step to the next"
             ) if monotone else "above L_tr(θ) by the end of the inner loop"
    msg = (f"the inner loss rose {where} in {{where}}: "
           f"{what} converges only if {cond} < 2, and here L ≈ {float(L[worst]):.4g} "
           f"(largest Hessian eigenvalue at θ, power iteration"
           + (f", measured {age} calls ago" if age else "") + f") gives {cond} ≈ {rate:.3g}")
    if rate >= 2:
        msg += f"; use inner_lr < {2 / (shift + float(L[worst])):.3g}"
    else:
        msg += "; the curvature grows along the path: lower inner_lr or steps"
    return [Finding("inner_loop_rise", msg, tasks_of(blown))]


def check_proximal_rate(inner_lr: float, lam: float, max_curvature: Tensor) -> list[Finding]:
    """α(λ + L) ≥ 2 with L ≥ λ (max Rayleigh quotient of A − 1), read off the solver."""
    L = lam * (finite_or(max_curvature, 1.0) - 1.0)
    rate = inner_lr * (lam + L)
    bad = rate >= 2
    if not bad.any():
        return []
    worst = int(torch.argmax(rate))
    bound = float(L[worst])
    return [Finding(
        "proximal_rate",
        "the proximal inner loop cannot converge in {where}: inner_lr·(lam + L) ≥ "
        f"{float(rate[worst]):.3g} ≥ 2, with L ≥ {bound:.4g} (largest Hessian eigenvalue, a "
        f"lower bound from the solver's Rayleigh quotients); use inner_lr < "
        f"{2 / (lam + bound):.3g}, e.g. inner_lr={1 / (lam + bound):.3g}, or a smaller lam",
        tasks_of(bad))]


def check_positive_definite(lam: float, min_curvature: Tensor, solver: str) -> list[Finding]:
    """A = I + H/λ must be positive definite: λ_min(H) > −λ."""
    min_curvature = finite_or(min_curvature, 1.0)
    bad = min_curvature <= 0
    if not bad.any():
        return []
    worst = int(torch.argmin(min_curvature))
    # pᵀAp/pᵀp = 1 + pᵀHp/(λ pᵀp) ≤ 0 means λ_min(H) ≤ λ (c − 1).
    h_min = lam * (float(min_curvature[worst]) - 1.0)
    return [Finding(
        "indefinite_system",
        f"{solver} met non-positive curvature pᵀ(I + H/λ)p ≤ 0 in {{where}}: the system "
        f"is not positive definite (λ_min(H) ≤ {h_min:.4g} < −lam), so its solution is "
        f"not the implicit gradient; use lam > {-h_min:.4g}", tasks_of(bad))]


def check_singular(lam: float, min_curvature: Tensor, max_curvature: Tensor,
                   solver: str) -> list[Finding]:
    """A = I + H/λ positive in every direction met but singular or nearly so: the Rayleigh
    quotients span a ratio beyond 1/√ε of the dtype (the condition number is at least
    that), so the solver's result is dominated by rounding whatever its iterations."""
    low, high = finite_or(min_curvature, 1.0), finite_or(max_curvature, 1.0)
    limit = torch.finfo(low.dtype).eps ** 0.5
    bad = (low > 0) & (low <= limit * high.abs())
    if not bad.any():
        return []
    worst = int(torch.argmin(torch.where(bad, low / high.abs(), torch.inf)))
    return [Finding(
        "singular_system",
        f"{solver} met curvature pᵀ(I + H/λ)p / pᵀp = {float(low[worst]):.3g} against "
        f"{float(high[worst]):.3g} in {{where}}: I + H/λ is singular or nearly so (λ_min(H) ≈ "
        f"−lam), so more iterations cannot reduce the residual and the result is not the "
        f"implicit gradient; use a larger lam (lam > {lam * (1 - float(low[worst])):.4g})",
        tasks_of(bad))]

