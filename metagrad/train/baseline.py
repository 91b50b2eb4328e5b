"""The joint-training baseline of Finn et al. 2017 §5.1 ("pretrained"): one network,
no adaptation during training, fine-tuned at test time by plain GD like the meta-trained
ones, with a fine-tuning step size chosen on validation tasks."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .._module import module_loss, params_of
from ..timing import synchronize
from . import config as _config
from .config import ADAM_META_LR, TrainConfig, make_model, task_family
from .evaluation import evaluate, prediction_frame


@contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, restoring the old count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class BaselineResult:
    params: dict[str, torch.Tensor]
    evaluation: dict[str, Any]
    predictions: pd.DataFrame
    train_time_s: float
    per_task: pd.DataFrame | None = None


def train_baseline(cfg: TrainConfig, progress: bool = False) -> BaselineResult:
    """The same network and task stream (same seed), trained by Adam (lr 1e-3) for
    ``baseline_steps`` steps on the MSE of each batch's points (``baseline_data``: support
    and query pooled, or the support points only as Finn et al.'s code), i.e. on
    E_tasks[L(θ)] with no adaptation; evaluated like the methods.
    """
    cfg = cfg.resolved()
    with torch_threads(cfg.threads):
        return _train_baseline(cfg, progress)


def _train_baseline(cfg: TrainConfig, progress: bool) -> BaselineResult:
    model = make_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=ADAM_META_LR)
    gen = torch.Generator().manual_seed(cfg.seed)
    family = task_family(cfg)
    started = time.perf_counter()
    for _ in tqdm(range(cfg.baseline_adam_steps), desc="baseline", disable=not progress,
                  leave=False):
        tasks = family.sample(cfg.meta_batch, generator=gen, device=cfg.device)
        if cfg.baseline_data == "support":
            x, y = tasks.train[0].reshape(-1, 1), tasks.train[1].reshape(-1, 1)
        else:
            x = torch.cat([tasks.train[0], tasks.val[0]], dim=1).reshape(-1, 1)
            y = torch.cat([tasks.train[1], tasks.val[1]], dim=1).reshape(-1, 1)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        opt.step()
    synchronize(cfg.device)
    elapsed = time.perf_counter() - started
    loss = module_loss(model, F.mse_loss)
    params = {k: v.detach().clone() for k, v in params_of(model).items()}
    evaluation, per_task = evaluate_tuned(loss, params, cfg)
    evaluation.update(train_time_s=elapsed, meta_lr=ADAM_META_LR,
                      adam_steps=cfg.baseline_adam_steps, data=cfg.baseline_data)
    best_lr = evaluation["eval_lr_by_steps"][str(max(cfg.eval_steps))]
    preds = prediction_frame(model, loss, params, _config.heldout_tasks(cfg), best_lr)
    return BaselineResult(params, evaluation, preds, elapsed, per_task)


def evaluate_tuned(loss, params, cfg: TrainConfig) -> tuple[dict[str, Any], pd.DataFrame]:
    """Test evaluation with the fine-tuning step size chosen, for each number of steps k
    and each support size, among ``cfg.baseline_eval_lrs`` by the mean MSE on the
    validation tasks (never on the test tasks). Returns the evaluation dict of the
    training support size (its ``heldout_shots`` holds every support size) and the
    per-task table of the chosen step sizes."""
    lrs = cfg.baseline_eval_lrs
    # With one step size there is nothing to choose: the validation tasks are not needed.
    validation = {lr: evaluate(loss, params, cfg, "validation", lr)[0][str(cfg.shots)]
                  for lr in lrs} if len(lrs) > 1 else {}
    tests = {lr: evaluate(loss, params, cfg, "test", lr) for lr in lrs}
    by_shots: dict[str, dict[str, Any]] = {}
    frames = []
    for shots in map(str, cfg.eval_shots):
        # The validation tasks have the training support size; its choice serves every size.
        curve_len = len(tests[lrs[0]][0][shots]["mse_by_steps"])
        chosen = [_best(lrs, validation, k) for k in range(curve_len)]
        base = dict(tests[lrs[0]][0][shots])
        for key in ("mse_by_steps", "ci95_by_steps", "median_by_steps",
                    "diverged_tasks_by_steps", "mean_without_diverged_by_steps"):
            base[key] = [tests[chosen[k]][0][shots][key][k] for k in range(curve_len)]
        base["pre_update_mse"] = base["mse_by_steps"][0]
        base["post_update_mse"] = {str(k): base["mse_by_steps"][k] for k in cfg.eval_steps}
        base["post_update_ci95"] = {str(k): base["ci95_by_steps"][k] for k in cfg.eval_steps}
        base["inner_lr"] = None
        base["eval_lr_by_steps"] = {str(k): chosen[k] for k in range(curve_len)}
        base["eval_lr_grid"] = list(lrs)
        base["validation_mse_by_lr"] = {repr(lr): validation[lr]["mse_by_steps"]
                                        for lr in validation}
        by_shots[shots] = base
        for lr in sorted(set(chosen)):
            frame = tests[lr][1]
            frames.append(frame[frame["shots"] == int(shots)])
    evaluation = dict(by_shots[str(cfg.shots)])
    evaluation["heldout_shots"] = by_shots
    return evaluation, pd.concat(frames, ignore_index=True)


def _best(lrs: tuple[float, ...], validation: dict[float, dict[str, Any]], k: int) -> float:
    """The step size with the lowest validation MSE after k steps (the only one if there
    is nothing to choose)."""
    if not validation:
        return lrs[0]
    return min(lrs, key=lambda lr: validation[lr]["mse_by_steps"][k])
