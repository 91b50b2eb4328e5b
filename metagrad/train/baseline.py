"""The joint-training baseline of Finn et al. 2017 §5.1 ("pretrained"): one network,
no adaptation during training, fine-tuned at test time like the meta-trained ones."""

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
from .config import ADAM_META_LR, TrainConfig, heldout_tasks, make_model, task_family
from .evaluation import adaptation_curve, evaluation_dict, prediction_frame


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


def train_baseline(cfg: TrainConfig, progress: bool = False) -> BaselineResult:
    """The same network and task stream (same seed), trained by Adam (lr 1e-3) for
    ``meta_steps`` steps on the pooled MSE of each batch's train + val points, i.e. on
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
    for _ in tqdm(range(cfg.meta_steps), desc="baseline", disable=not progress, leave=False):
        tasks = family.sample(cfg.meta_batch, generator=gen, device=cfg.device)
        x = torch.cat([tasks.train[0], tasks.val[0]], dim=1).reshape(-1, 1)
        y = torch.cat([tasks.train[1], tasks.val[1]], dim=1).reshape(-1, 1)
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        opt.step()
    synchronize(cfg.device)
    elapsed = time.perf_counter() - started
    loss = module_loss(model, F.mse_loss)
    params = {k: v.detach().clone() for k, v in params_of(model).items()}
    held = heldout_tasks(cfg)
    curve = adaptation_curve(loss, params, held, cfg.inner_lr, max(max(cfg.eval_steps), 10))
    evaluation = evaluation_dict(curve, cfg)
    evaluation["train_time_s"] = elapsed
    evaluation["meta_lr"] = ADAM_META_LR
    preds = prediction_frame(model, loss, params, held, cfg.inner_lr)
    return BaselineResult(params, evaluation, preds, elapsed)
