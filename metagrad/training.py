"""Meta-training on sinusoid regression (Finn, Abbeel & Levine 2017, §5.1).

Each meta-step samples a meta-batch of tasks, asks a metagrad method for the
meta-gradient g = (1/T) Σᵢ gᵢ (see DESIGN.md for each gᵢ) and takes one outer
step:

* MAML, FOMAML, IMAML, Neumann, Penalty: Adam (Kingma & Ba 2015) on g with
  ``meta_lr`` (default 1e-3, as Finn et al.).
* Reptile (Nichol, Achiam & Schulman 2018, Alg. 1): its own rule
  θ ← θ + ε(φ̄ − θ), i.e. plain SGD with rate ε on g = θ − φ̄. Here ``meta_lr``
  is ε, default 1.0: Nichol et al. use an outer step size of 1 (annealed), and
  since g already carries the inner rate (g = α Σₖ ∇L_tr(θ⁽ᵏ⁾)), ε = 1 with
  α = 0.01 moves θ by 0.01·∇L_tr per step for K = 1, a stable plain-SGD rate for
  this problem. Note that for K = 1, Reptile *is* joint training on the train
  split (SGD on E[L_tr]); it only becomes meta-learning for K ≥ 2 (Nichol et
  al. §5): expect it to match the joint-training baseline.

Defaults (DESIGN.md): MLP 1-40-40-1 ReLU, meta-batch 25, 10 + 10 shots,
``inner_lr`` 0.01, 2000 meta-steps, float32, and ``steps`` K = 1 inner step as
in Finn et al.'s sinusoid experiment (one step in meta-training; up to 10 at
test time). The implicit methods need λ chosen for this problem. Meta-training
sharpens the net: the largest train-loss Hessian eigenvalue L grows from ~35 at
initialisation to 150-400 (MAML wants α·L ≈ 1), and the smallest reaches about −75.
IMAML defaults to ``lam = 300``: CG needs I + H/λ positive definite (λ > −λ_min(H));
with λ = 100 the system turned indefinite and training went unstable (measured).
Neumann defaults to ``lam = 1000`` with η = 1: the series converges only while
ρ(H/λ) < 1, and at λ = 100 or 300 (also with η = 0.5 at λ = 100) it diverged after
400-600 meta-steps and wrecked training. Larger λ means a milder correction
(λ → ∞ is FOMAML). With K = 1 the proximal inner problem is far from solved
whatever λ, so the implicit gradient is a preconditioned first-order direction
here, not the exact bilevel gradient; the core's diagnostics say so ("the
proximal inner loop cannot converge"), counted in the log's ``warnings`` column.
Penalty defaults to ``lam = 0.001``: ‖∇L_tr(φ)‖² is 1-20 here against L_val ≈ 1-4,
and at λ = 0.1 the penalty won, training collapsed to a near-constant predictor
(held-out MSE 4.07 ≈ E[A²]/2 before and after adaptation); λ = 0.01 only matched
the joint-training baseline; λ = 0.001 meta-learns (post-update MSE 1.25, measured
over 2000 meta-steps).

Every step appends ``step, pre_update_loss, post_update_loss, step_time_s,
wall_time_s`` (plus method diagnostics) to ``train_log.csv``. At the end the
model is evaluated on a fixed held-out task set (its own seed): val MSE before
adaptation and after k plain GD steps with ``inner_lr`` (``metagrad.adapt``),
and so is a joint-training baseline (Finn et al. §5.1: one network trained by
Adam on the pooled data of the same task stream, no adaptation in training,
then fine-tuned at test time the same way). Results go to ``summary.json``.

Runs resume exactly: a checkpoint (``metagrad.checkpoint``) holds model and
optimizer state, the task generator's and torch's RNG states, the step and
the log, so a killed and resumed run is bit-identical to an uninterrupted one
on CPU.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from ._inner import adapt
from ._module import module_loss, params_of, set_grads
from ._task import Task
from ._validate import non_negative_int, positive_float, positive_int
from .diagnose import MetaGradientWarning
from .distributions import Sinusoid
from .methods import METHODS, Method
from .models import mlp
from .timing import synchronize

CHECKPOINT_FORMAT = 1
LOG_COLUMNS = ["step", "pre_update_loss", "post_update_loss", "step_time_s", "wall_time_s",
               "warnings"]

ADAM_META_LR = 1e-3
"""Finn et al.'s meta learning rate (Adam), also used for the joint-training baseline."""
REPTILE_META_LR = 1.0
"""Reptile's outer step size ε (see module docstring)."""
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "imaml": {"lam": 300.0, "cg_iters": 5},
    "neumann": {"lam": 1000.0, "terms": 5, "step": 1.0},
    "penalty": {"lam": 0.001},
}
"""Settings each method takes beyond (steps, inner_lr), with their defaults."""

# Per-task diagnostics worth a CSV column, with the reduction over tasks that flags trouble.
DIAGNOSTIC_COLUMNS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "cg_min_curvature": ("cg_min_curvature", torch.amin),  # ≤ 0: I + H/λ not positive definite
    "neumann_last_term_norm": ("neumann_last_term_norm", torch.amax),  # growing: series diverges
    "penalty": ("penalty", torch.mean),  # ‖∇L_tr(φ)‖²
}

FILES = {
    "log": "train_log.csv",
    "summary": "summary.json",
    "checkpoint": "checkpoint.pt",
    "predictions": "predictions.csv",
}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a meta-training run (the CLI flags, one vocabulary)."""

    method: str = "maml"
    meta_steps: int = 2000
    steps: int = 1
    inner_lr: float = 0.01
    lam: float | None = None
    cg_iters: int | None = None
    terms: int | None = None
    step: float | None = None
    meta_batch: int = 25
    meta_lr: float | None = None
    seed: int = 0
    device: str = "cpu"
    shots: int = 10
    query: int = 10
    hidden: tuple[int, ...] = (40, 40)
    checkpoint_every: int = 100
    heldout_tasks: int = 500
    heldout_query: int = 100
    heldout_seed: int = 2017
    eval_steps: tuple[int, ...] = (1, 5, 10)
    threads: int = 1
    """CPU threads for torch ops during the run. One by default: every op here is tiny
    (40-wide layers, 10 points per task), so intra-op threads only add synchronisation;
    on the 2-core dev machine one thread made a meta-step 2-7x faster than two."""

    # Settings that may change between a run and its resumption. (A different ``threads``
    # count can change float rounding, so bit-identical resumes need the same count.)
    RESUMABLE_CHANGES = ("meta_steps", "checkpoint_every", "threads")

    def resolved(self) -> TrainConfig:
        """Validate, and fill method-specific defaults (settings a method ignores become None)."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {sorted(METHODS)}")
        extra = METHOD_DEFAULTS.get(self.method, {})
        filled: dict[str, Any] = {}
        for name in ("lam", "cg_iters", "terms", "step"):
            value = getattr(self, name)
            filled[name] = (extra[name] if value is None else value) if name in extra else None
        meta_lr = self.meta_lr
        if meta_lr is None:
            meta_lr = REPTILE_META_LR if self.method == "reptile" else ADAM_META_LR
        cfg = replace(self, meta_lr=meta_lr, hidden=tuple(self.hidden),
                      eval_steps=tuple(sorted(set(self.eval_steps))), **filled)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name in ("meta_steps", "meta_batch", "shots", "query", "heldout_tasks",
                     "heldout_query", "threads"):
            positive_int(name, getattr(self, name))
        for name in ("steps", "checkpoint_every", "seed", "heldout_seed"):
            non_negative_int(name, getattr(self, name))
        for name in ("inner_lr", "meta_lr"):
            positive_float(name, getattr(self, name))
        if not self.hidden:
            raise ValueError("hidden must list at least one layer width")
        for width in self.hidden:
            positive_int("hidden width", width)
        if not self.eval_steps:
            raise ValueError("eval_steps must list at least one number of adaptation steps")
        for k in self.eval_steps:
            positive_int("eval_steps entry", k)
        make_method(self)  # the method checks its own settings (lam, cg_iters, terms)

    @property
    def optimizer(self) -> str:
        return "sgd" if self.method == "reptile" else "adam"

    def identity(self) -> dict[str, Any]:
        """Settings that determine the run's numbers; a checkpoint must match all of them."""
        d = asdict(self)
        for name in self.RESUMABLE_CHANGES:
            d.pop(name)
        d["hidden"] = list(self.hidden)
        d["eval_steps"] = list(self.eval_steps)
        return d

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["eval_steps"] = list(self.eval_steps)
        d["optimizer"] = self.optimizer
        return d


def make_method(cfg: TrainConfig) -> Method:
    """The metagrad method object for ``cfg`` (defaults filled by :meth:`TrainConfig.resolved`)."""
    extra = {name: getattr(cfg, name) for name in METHOD_DEFAULTS.get(cfg.method, {})}
    return METHODS[cfg.method](steps=cfg.steps, inner_lr=cfg.inner_lr, **extra)


def make_model(cfg: TrainConfig) -> torch.nn.Sequential:
    """The 1-h₁-…-1 ReLU MLP, initialised from ``cfg.seed`` (float32)."""
    return mlp((1, *cfg.hidden, 1), seed=cfg.seed, dtype=torch.float32, device=cfg.device)


def task_family(cfg: TrainConfig) -> Sinusoid:
    return Sinusoid(shots=cfg.shots, query=cfg.query)


def heldout_tasks(cfg: TrainConfig) -> Task:
    """The fixed evaluation tasks: ``heldout_seed``, ``shots`` support and ``heldout_query``
    query points each (more query points than in training: a less noisy MSE)."""
    return Sinusoid(shots=cfg.shots, query=cfg.heldout_query).sample(
        cfg.heldout_tasks, seed=cfg.heldout_seed, device=cfg.device)


# --------------------------------------------------------------------------------------------
# evaluation


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


# --------------------------------------------------------------------------------------------
# joint-training baseline


@dataclass
class BaselineResult:
    params: dict[str, torch.Tensor]
    evaluation: dict[str, Any]
    predictions: pd.DataFrame
    train_time_s: float


def train_baseline(cfg: TrainConfig, progress: bool = False) -> BaselineResult:
    """Finn et al.'s "pretrained" baseline: the same network and task stream (same seed),
    trained by Adam (lr 1e-3) for ``meta_steps`` steps on the pooled MSE of each batch's
    train + val points, i.e. on E_tasks[L(θ)] with no adaptation; evaluated like the methods.
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


# --------------------------------------------------------------------------------------------
# the meta-training loop


class TrainingDiverged(ValueError):
    """The loss or meta-gradient became non-finite; raised before the bad update."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass
class TrainResult:
    config: TrainConfig
    out_dir: Path
    log: pd.DataFrame
    params: dict[str, torch.Tensor]
    finished: bool
    summary: dict[str, Any] | None = None
    predictions: pd.DataFrame | None = None
    baseline: BaselineResult | None = field(default=None, repr=False)


def _shapes(params: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in params.items()}


def _rng_states(gen: torch.Generator) -> dict[str, Any]:
    states: dict[str, Any] = {"tasks": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(gen: torch.Generator, states: Mapping[str, Any]) -> None:
    gen.set_state(states["tasks"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _format(value: Any) -> str:
    # repr of a Python float is the shortest string that reads back to the same double.
    return repr(value) if isinstance(value, float) else str(value)


def _write_log(path: Path, columns: list[str], log: Mapping[str, list]) -> None:
    """Rewrite the CSV from the in-memory log (used when starting and when resuming)."""
    lines = [",".join(columns)]
    for i in range(len(log[columns[0]]) if log else 0):
        lines.append(",".join(_format(log[c][i]) for c in columns))
    ckpt.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def log_columns(cfg: TrainConfig) -> list[str]:
    method = make_method(cfg)
    probe = {"imaml": ["cg_min_curvature"], "neumann": ["neumann_last_term_norm"],
             "penalty": ["penalty"]}.get(method.name, [])
    return LOG_COLUMNS + probe


@contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, restoring the old count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          baseline: BaselineResult | None = None, stop_after: int | None = None) -> TrainResult:
    """Meta-train ``config.method`` for ``config.meta_steps`` steps; write log, checkpoints,
    held-out evaluation and ``summary.json`` into ``out_dir``.

    ``resume``: continue from ``out_dir/checkpoint.pt`` (refused if it was written for
    other settings). Without it, an existing checkpoint is only replaced with ``overwrite``.
    ``baseline``: a joint-training baseline already computed for the same settings (shared
    across methods by ``metagrad train --method all``); trained here when None.
    ``stop_after``: return right after that step, as if the process were killed there
    (checkpoints written so far stay; for tests and for splitting long runs).
    """
    cfg = config.resolved()
    with torch_threads(cfg.threads):
        return _train(cfg, Path(out_dir), resume, overwrite, progress, baseline, stop_after)


def _train(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool, progress: bool,
           baseline: BaselineResult | None, stop_after: int | None) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}

    model = make_model(cfg)
    loss = module_loss(model, F.mse_loss)
    method = make_method(cfg)
    assert cfg.meta_lr is not None  # filled by TrainConfig.resolved()
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.meta_lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.meta_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    family = task_family(cfg)
    columns = log_columns(cfg)
    expected = {"format": CHECKPOINT_FORMAT, "method": cfg.method, "config": cfg.identity(),
                "shapes": _shapes(params_of(model))}

    log: dict[str, list] = {c: [] for c in columns}
    start, elapsed_before = 0, 0.0
    if resume:
        payload = ckpt.load_checkpoint(paths["checkpoint"])
        ckpt.check_compatible(paths["checkpoint"], payload, expected,
                              ["format", "method", "config", "shapes"])
        if payload["step"] > cfg.meta_steps:
            raise ValueError(f"{paths['checkpoint']} is at step {payload['step']}, beyond "
                             f"--meta-steps {cfg.meta_steps}")
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        _set_rng_states(gen, payload["rng"])
        start, elapsed_before = int(payload["step"]), float(payload["elapsed_s"])
        log = {c: list(payload["log"][c]) for c in columns}
    elif paths["checkpoint"].exists() and not overwrite:
        raise ValueError(f"{out} already holds a run ({FILES['checkpoint']}); pass --resume to "
                         "continue it, --overwrite to start again, or choose another --out")
    # Drop rows a killed run logged after its last checkpoint: they are recomputed identically.
    _write_log(paths["log"], columns, log)

    saved_step = start

    def save(step: int, elapsed: float) -> None:
        nonlocal saved_step
        saved_step = step
        ckpt.save_checkpoint(paths["checkpoint"], {
            **expected, "step": step, "elapsed_s": elapsed,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": _rng_states(gen), "log": log, "method_config": method.config(),
        })

    bar = tqdm(total=cfg.meta_steps, initial=start, desc=cfg.method, disable=not progress,
               dynamic_ncols=True)
    step, finished = start, True
    seen_warnings: dict[str, str] = {}
    with bar, paths["log"].open("a", newline="") as log_file:
        writer = csv.writer(log_file)
        segment_start = time.perf_counter()
        for step in range(start + 1, cfg.meta_steps + 1):
            t0 = time.perf_counter()
            tasks = family.sample(cfg.meta_batch, generator=gen, device=cfg.device)
            with warnings.catch_warnings():
                # The method's numerical checks still run; their messages are counted in the
                # log and shown once each below, instead of once per meta-step.
                warnings.simplefilter("ignore", MetaGradientWarning)
                out_mg = method(loss, params_of(model), tasks)
            found = list(getattr(out_mg, "warnings", []))
            pre, post = float(out_mg.pre_update_loss), float(out_mg.post_update_loss)
            grad_finite = all(bool(torch.isfinite(g).all()) for g in out_mg.grad.values())
            finite = math.isfinite(pre) and math.isfinite(post) and grad_finite
            if finite:
                set_grads(model, out_mg.grad)
                opt.step()
            synchronize(cfg.device)
            now = time.perf_counter()
            row = {"step": step, "pre_update_loss": pre, "post_update_loss": post,
                   "step_time_s": now - t0, "wall_time_s": elapsed_before + now - segment_start,
                   "warnings": len(found)}
            for col in columns[len(LOG_COLUMNS):]:
                key, reduce = DIAGNOSTIC_COLUMNS[col]
                row[col] = float(reduce(out_mg.diagnostics[key]))
            for c in columns:
                log[c].append(row[c])
            writer.writerow([_format(row[c]) for c in columns])
            log_file.flush()
            if not finite:
                # Stopped before the update: parameters and the last checkpoint stay usable.
                raise TrainingDiverged(
                    f"{cfg.method} diverged at meta-step {step}: pre/post-update loss "
                    f"{pre:.4g} / {post:.4g}, meta-gradient finite: {grad_finite}"
                    + (f"; the method reported: {found[0]}" if found else "")
                    + f". Last checkpoint: step {saved_step}. Try a smaller --meta-lr or "
                    "--inner-lr, or (imaml/neumann) a larger --lam or a smaller --step",
                    step)
            for msg in found:
                # "the Neumann series diverges in task 3: ..." -> "the Neumann series diverges"
                kind = re.split(r"\s+in task|\d|:", msg)[0].strip()
                if kind not in seen_warnings:
                    seen_warnings[kind] = f"step {step}: {msg}"
                    bar.write(f"{cfg.method}: warning at meta-step {step} (later ones are "
                              f"counted in {FILES['log']}, column 'warnings'): {msg}",
                              file=sys.stderr)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or \
                    step == cfg.meta_steps:
                save(step, row["wall_time_s"])
            bar.set_postfix(pre=f"{pre:.3f}", post=f"{post:.3f}", refresh=False)
            bar.update()
            if stop_after is not None and step >= stop_after and step < cfg.meta_steps:
                finished = False
                break

    params = {k: v.detach().clone() for k, v in params_of(model).items()}
    frame = pd.DataFrame(log, columns=columns)
    result = TrainResult(cfg, out, frame, params, finished)
    if not finished:
        return result

    if baseline is None:
        baseline = train_baseline(cfg, progress=progress)
    held = heldout_tasks(cfg)
    curve = adaptation_curve(loss, params, held, cfg.inner_lr, max(max(cfg.eval_steps), 10))
    train_time = float(log["wall_time_s"][-1]) if log["wall_time_s"] else 0.0
    summary = {
        "method": cfg.method,
        "meta_steps": cfg.meta_steps,
        "config": cfg.as_dict(),
        "method_config": method.config(),
        "heldout": evaluation_dict(curve, cfg),
        "baseline": baseline.evaluation,
        "train_time_s": train_time,
        "mean_step_time_s": train_time / max(1, len(log["step"])),
        "final_pre_update_loss": _tail_mean(log["pre_update_loss"]),
        "final_post_update_loss": _tail_mean(log["post_update_loss"]),
        "warning_steps": sum(1 for w in log["warnings"] if w),
        "first_warnings": list(seen_warnings.values()),
        "torch": torch.__version__,
    }
    ckpt.atomic_write_bytes(paths["summary"], (json.dumps(summary, indent=2) + "\n").encode())
    preds = prediction_frame(model, loss, params, held, cfg.inner_lr)
    preds.to_csv(paths["predictions"], index=False)
    result.summary, result.predictions, result.baseline = summary, preds, baseline
    return result


def _tail_mean(values: list[float], n: int = 100) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def read_log(path: str | Path) -> pd.DataFrame:
    """Read ``train_log.csv`` back with every float exactly as logged."""
    return pd.read_csv(path)


def config_fields() -> list[str]:
    return [f.name for f in fields(TrainConfig)]
