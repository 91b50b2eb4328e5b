"""Held-out evaluation of a meta-trained model: MSE before and after k plain GD steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch.func import functional_call, vmap

from .._inner import adapt
from .._task import Task
from ..distributions import Sinusoid
from .config import TrainConfig


def gd_iterates(loss, theta: Mapping[str, torch.Tensor], train, inner_lr: float,
                max_steps: int) -> list[dict[str, torch.Tensor]]:
    """φ⁽⁰⁾ = θ, …, φ⁽ᴷ⁾ of plain GD on one task's train batch (``metagrad.adapt`` keeping
    every iterate)."""
    run = adapt(loss, dict(theta), train, max_steps, inner_lr, keep_every=1)
    return (run.trajectory or []) + [run.phi]


def adaptation_curve(loss, params: Mapping[str, torch.Tensor], tasks: Task, inner_lr: float,
                     max_steps: int) -> list[float]:
    """Held-out MSE after k = 0 … ``max_steps`` plain GD steps, averaged over tasks.

    For each task: φ⁽⁰⁾ = θ, φ⁽ᵏ⁺¹⁾ = φ⁽ᵏ⁾ − α ∇L_tr(φ⁽ᵏ⁾) on its support points,
    then L_val(φ⁽ᵏ⁾) on its query points.
    """
    theta = {k: v.detach() for k, v in params.items()}

    def one(train, val):
        return torch.stack([loss(phi, val) for phi in gd_iterates(loss, theta, train, inner_lr,
                                                                 max_steps)])

    per_task = vmap(one)(tasks.train, tasks.val)  # (T, max_steps + 1)
    return [float(v) for v in per_task.mean(0)]


def evaluation_dict(curve: list[float], cfg: TrainConfig) -> dict[str, Any]:
    return {
        "tasks": cfg.heldout_tasks,
        "query": cfg.heldout_query,
        "seed": cfg.heldout_seed,
        "inner_lr": cfg.inner_lr,
        "pre_update_mse": curve[0],
        "post_update_mse": {str(k): curve[k] for k in cfg.eval_steps},
        "mse_by_steps": curve,
    }


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
