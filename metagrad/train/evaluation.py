"""Held-out evaluation of a meta-trained model: MSE before and after k plain GD steps,
per task, with Finn et al.'s interval over tasks; and after the method's own adaptation
(its inner loop: K steps of its update rule with its step sizes, learned or not)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch.func import functional_call, vmap

from .. import _rates
from .._inner import adapt
from .._task import Task
from ..distributions import Sinusoid
from ..methods import Method
from .stats import task_interval


def gd_iterates(loss, theta: Mapping[str, torch.Tensor], train, inner_lr: float,
                max_steps: int) -> list[dict[str, torch.Tensor]]:
    """φ⁽⁰⁾ = θ, …, φ⁽ᴷ⁾ of plain GD on one task's train batch (``metagrad.adapt`` keeping
    every iterate)."""
    run = adapt(loss, dict(theta), train, max_steps, inner_lr, keep_every=1)
    return (run.trajectory or []) + [run.phi]


def adaptation_losses(loss, params: Mapping[str, torch.Tensor], tasks: Task, inner_lr: float,
                      max_steps: int) -> torch.Tensor:
    """Per-task held-out MSE after k = 0 … ``max_steps`` plain GD steps, shape (T, K + 1).

    For each task: φ⁽⁰⁾ = θ, φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α ∇L_tr(φ⁽ᵏ⁾) on its support points (the same
    points at every step, as Finn et al.), then L_val(φ⁽ᵏ⁾) on its query points.
    """
    theta = {k: v.detach() for k, v in params.items()}

    def one(train, val):
        return torch.stack([loss(phi, val) for phi in gd_iterates(loss, theta, train, inner_lr,
                                                                 max_steps)])

    return vmap(one)(tasks.train, tasks.val).detach()


def own_adaptation_losses(loss, params: Mapping[str, torch.Tensor], tasks: Task,
                          method: Method) -> torch.Tensor:
    """Per-task held-out MSE after k = 0 … K steps of the method's own inner loop, shape
    (T, K + 1): φ⁽⁰⁾ = θ, φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − αₖ ⊙ uₖ with the method's update rule (its
    direction uₖ: plain GD, momentum, Adam; the proximal pull of the implicit methods), its
    step sizes αₖ (a number, or its learned rates as they are now) and the parameters it
    adapts, on the task's support points; then L_val(φ⁽ᵏ⁾) on its query points. Meta-SGD
    (Li et al. 2017) is defined by this adaptation: its rates are part of what it learns.
    """
    theta = {k: v.detach() for k, v in params.items()}
    loop = method.inner_loop
    hyper = method.hyper(next(iter(theta.values())))  # detached copies of learned rates

    def one(train, val):
        run = loop.run(loss, theta, train, keep_every=1, hyper=hyper or None)
        return torch.stack([loss(phi, val) for phi in (run.trajectory or []) + [run.phi]])

    return vmap(one)(tasks.train, tasks.val).detach()


def support_losses(loss, params: Mapping[str, torch.Tensor], tasks: Task) -> torch.Tensor:
    """Per-task L_tr(θ) on the support points (the pre-update number of Finn et al.'s code)."""
    theta = {k: v.detach() for k, v in params.items()}
    return vmap(lambda train: loss(theta, train))(tasks.train).detach()


def adaptation_curve(loss, params: Mapping[str, torch.Tensor], tasks: Task, inner_lr: float,
                     max_steps: int) -> list[float]:
    """Held-out MSE after k = 0 … ``max_steps`` plain GD steps, averaged over tasks."""
    per_task = adaptation_losses(loss, params, tasks, inner_lr, max_steps)
    return [float(v) for v in per_task.mean(0)]


def evaluation_dict(per_task: torch.Tensor, support: torch.Tensor, *, tasks: int, query: int,
                    seed: int, source: str, shots: int, eval_lr: Any,
                    eval_steps: Sequence[int]) -> dict[str, Any]:
    """Means over tasks per number of steps with Finn et al.'s interval (1.96·std/√n,
    ddof = 0), as stored in ``summary.json``."""
    columns = per_task.double().T.tolist()  # one list of task values per number of steps
    curve = [sum(c) / len(c) for c in columns]
    ci = [task_interval(c).half_width for c in columns]
    diverged = divergent_tasks(per_task)
    return {
        "tasks": tasks,
        "shots": shots,
        "query": query,
        "seed": seed,
        "source": source,
        "inner_lr": eval_lr,
        "pre_update_mse": curve[0],
        "pre_update_support_mse": float(support.double().mean()),
        "post_update_mse": {str(k): curve[k] for k in eval_steps},
        "post_update_ci95": {str(k): ci[k] for k in eval_steps},
        "mse_by_steps": curve,
        "ci95_by_steps": ci,
        "interval": "1.96·std/√n over tasks (std with ddof = 0), as Finn et al.'s code",
        "median_by_steps": task_median(per_task),
        "diverged_tasks_by_steps": diverged.sum(0).tolist(),
        "mean_without_diverged_by_steps": [
            float(per_task.double()[~diverged[:, k], k].mean()) for k in
            range(per_task.shape[1])],
        "diverged": f"tasks whose MSE after k steps is above {DIVERGED:g}x their MSE before "
                    "adaptation or not finite: plain GD with a fixed step can blow up where the "
                    "support loss's curvature exceeds 2/eval_lr; the mean of the others is "
                    "conditional on that outcome, a diagnostic only",
    }


DIVERGED = 10.0
"""A task's adaptation counts as diverged (blown up) when its MSE after k steps exceeds this
many times its MSE before adaptation, or is not finite."""


def task_median(per_task: torch.Tensor) -> list[float]:
    """Median over tasks per number of steps, a NaN task counted as +inf (it diverged)
    rather than making the median NaN."""
    x = per_task.double()
    return torch.where(torch.isnan(x), torch.inf, x).median(0).values.tolist()


def divergent_tasks(per_task: torch.Tensor) -> torch.Tensor:
    """Boolean (T, K + 1): the task's MSE after k steps is not finite or above
    :data:`DIVERGED` × its MSE at θ (k = 0)."""
    x = per_task.double()
    return ~torch.isfinite(x) | (x > DIVERGED * x[:, :1])


def per_task_frame(per_task: torch.Tensor, support: torch.Tensor, shots: int,
                   tasks: Task, eval_lr: Any) -> pd.DataFrame:
    """Wide table: one row per task (shots, task, amplitude, phase, eval_lr, support MSE at
    θ, held-out MSE after 0 … K steps)."""
    frame = pd.DataFrame(per_task.double().numpy(),
                         columns=[f"mse_{k}" for k in range(per_task.shape[1])])
    frame.insert(0, "support_mse_0", support.double().numpy())
    frame.insert(0, "eval_lr", eval_lr)
    for key in ("phase", "amplitude"):
        if key in tasks.info:
            frame.insert(0, key, tasks.info[key].double().cpu().numpy())
    frame.insert(0, "task", range(len(frame)))
    frame.insert(0, "shots", shots)
    return frame


def prediction_frame(model: torch.nn.Module, loss, params: Mapping[str, torch.Tensor],
                     tasks: Task, inner_lr: float, ks: tuple[int, ...] = (0, 1, 10),
                     num_tasks: int = 3, points: int = 200) -> pd.DataFrame:
    """Long table (task, curve, x, y) of predictions after k adaptation steps, the true sine
    and the support points, for the first ``num_tasks`` held-out tasks."""
    theta = {k: v.detach() for k, v in params.items()}
    x_lo, x_hi = Sinusoid().x_range
    rows = []
    for i in range(min(num_tasks, tasks.num_tasks)):
        train, _ = tasks.task(i)
        amp, phase = float(tasks.info["amplitude"][i]), float(tasks.info["phase"][i])
        grid = torch.linspace(x_lo, x_hi, points, dtype=train[0].dtype, device=train[0].device)
        grid = grid.view(-1, 1)
        iterates = gd_iterates(loss, theta, train, inner_lr, max(ks))
        curves = {"true": Sinusoid.target(grid, amp, phase)}
        for k in ks:
            with torch.no_grad():
                curves[f"k={k}"] = functional_call(model, iterates[k], (grid,))
        for name, y in curves.items():
            rows += [(i, name, float(a), float(b))
                     for a, b in zip(grid.view(-1), y.view(-1), strict=True)]
        rows += [(i, "support", float(a), float(b))
                 for a, b in zip(train[0].view(-1), train[1].view(-1), strict=True)]
    return pd.DataFrame(rows, columns=["task", "curve", "x", "y"])


def evaluate(loss, params: Mapping[str, torch.Tensor], cfg, split: str = "test",
             eval_lr: float | None = None) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """Evaluate ``params`` on the test tasks (``split="test"``: one set per entry of
    ``cfg.eval_shots``) or on the validation tasks (``"validation"``: ``cfg.shots`` only),
    adapting with ``eval_lr`` (default ``cfg.eval_lr``). Returns the evaluation dict per
    number of shots (keys ``"5"``, ``"10"``, …) and the per-task table.

    The task sets are looked up through :mod:`metagrad.train.config` at call time, so the
    test tasks are drawn only here and only for ``split="test"``.
    """
    lr = cfg.eval_lr if eval_lr is None else eval_lr
    max_steps = max(max(cfg.eval_steps), 10)
    results: dict[str, dict[str, Any]] = {}
    frames = []
    for shots, tasks, seed, source in _task_sets(cfg, split):
        per = adaptation_losses(loss, params, tasks, lr, max_steps)
        sup = support_losses(loss, params, tasks)
        query = int(tasks.val[0].shape[1])
        results[str(shots)] = evaluation_dict(
            per, sup, tasks=tasks.num_tasks, query=query, seed=seed, source=source, shots=shots,
            eval_lr=lr, eval_steps=cfg.eval_steps)
        frames.append(per_task_frame(per, sup, shots, tasks, lr))
    return results, pd.concat(frames, ignore_index=True)


def _task_sets(cfg, split: str):
    """``(shots, tasks, seed, source)`` for each support size evaluated on ``split``: the
    held-out test tasks at every ``eval_shots`` (their own seed and source), or the
    validation tasks at the training ``shots``."""
    from . import config as _config  # looked up at call time (see evaluate)

    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    for shots in (cfg.eval_shots if split == "test" else (cfg.shots,)):
        if split == "test":
            yield shots, _config.heldout_tasks(cfg, shots), cfg.heldout_seed, cfg.heldout_source
        else:
            yield shots, _config.validation_tasks(cfg, shots), cfg.validation_seed, "torch"


def evaluate_own(loss, params: Mapping[str, torch.Tensor], cfg, method: Method,
                 split: str = "test") -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
    """:func:`evaluate` with the method's own adaptation (:func:`own_adaptation_losses`)
    instead of plain GD at ``eval_lr``: k = 0 … K = ``method.steps``. The evaluation dict's
    ``inner_lr`` describes the step sizes used (a number, or the forms of the rates) and
    ``rule`` the update rule."""
    steps = method.steps
    lr = _rates.describe(method.inner_loop.inner_lr)
    results: dict[str, dict[str, Any]] = {}
    frames = []
    for shots, tasks, seed, source in _task_sets(cfg, split):
        per = own_adaptation_losses(loss, params, tasks, method)
        sup = support_losses(loss, params, tasks)
        results[str(shots)] = {
            **evaluation_dict(per, sup, tasks=tasks.num_tasks, query=int(tasks.val[0].shape[1]),
                              seed=seed, source=source, shots=shots, eval_lr=lr,
                              eval_steps=range(1, steps + 1)),
            "steps": steps, "rule": method.config()["inner"],
            "adaptation": "the method's own inner loop (its steps, update rule and step "
                          "sizes)"}
        frames.append(per_task_frame(per, sup, shots, tasks, lr))
    return results, pd.concat(frames, ignore_index=True)
