"""The meta-training loop on sinusoid regression (Finn, Abbeel & Levine 2017, §5.1).

Each meta-step samples a meta-batch of tasks, asks a metagrad method for the
meta-gradient g = (1/T) Σᵢ gᵢ and takes one outer step: Adam (Kingma & Ba 2015)
with ``meta_lr`` for MAML, FOMAML, IMAML, Neumann and Penalty; plain SGD with rate
ε = ``meta_lr`` for Reptile (θ ← θ − ε g = θ + ε(φ̄ − θ), Nichol et al. 2018, Alg. 1).

Every meta-step appends ``meta_step, pre_update_loss, post_update_loss, step_time_s,
wall_time_s, warnings, findings`` (the number and the kinds of the method's numerical
findings) plus the method's own ``log_columns`` (e.g. IMAML's smallest CG curvature) to
``train_log.csv``. At the meta-steps of ``probe_at`` the meta-gradient is compared with
the exact ones (``probe.csv``, see :mod:`metagrad.train.probe`). At the end the model is
evaluated on the fixed held-out test tasks (their own seed), before adaptation and after
k plain GD steps with ``eval_lr`` (the same adaptation for every method), and so is the
joint-training baseline; then again with the method's own adaptation (its inner loop: its
K steps, its update rule, its learned rates; ``heldout_own``); results go to
``summary.json`` (strict JSON) and the per-task numbers to ``heldout_per_task.csv`` and
``heldout_own_per_task.csv``. A tuning run (``evaluate="validation"``) is evaluated on the
validation tasks instead and never draws the test tasks.

**Learned step sizes** (an inner-loop form with learned rates, ``TrainConfig.inner``) are
meta-parameters like θ: they are a second parameter group of the same outer optimizer,
every meta-step writes the method's ``out.hyper_grad["inner_lr"]`` into their ``.grad``
(as ``metagrad.set_grads`` writes ``out.grad`` into θ's), snapshots hold them, and the
ranks of a torchrun check them identical with θ. The log adds their mean, smallest and
largest entry after each meta-step (``rate_mean``, ``rate_min``, ``rate_max``) and the
summary their final values per inner step and per tensor (``rates``). Nothing keeps them
positive (Li et al. 2017 do not either): a negative rate shows in ``rate_min``.

Runs resume exactly: a snapshot (``metagrad.train.snapshot``) holds model and optimizer
state, the task generator's and torch's RNG states, the meta-step and the log, so a
killed and resumed run is bit-identical to an uninterrupted one on CPU.

Under ``torchrun`` (a ``torch.distributed`` process group of several processes, see
:mod:`metagrad.train.ranks`) every process runs this loop on the same task stream: the
meta-batch of each meta-step is drawn from the seed by every rank alike, each rank
computes the meta-gradient of its slice (``metagrad.shard_tasks``) and
``metagrad.distributed`` gives every rank the mean over the whole meta-batch, so every
rank takes the same optimizer step. The per-task diagnostics are gathered, so the log's
method columns and the numerical checks see every task, as in one process. The global
task stream does not depend on the number of processes: a run may be resumed with
another one (equal up to the rounding of the reduction order). Rank 0 alone writes.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .. import _rates
from .._files import atomic_write_bytes
from .._module import module_loss, params_of, set_grads
from ..compiled import compile as compile_method
from ..distributed import distributed, shard_tasks
from ..methods import Method
from ..timing import synchronize
from . import config as _config
from . import outdir
from . import snapshot as snap
from .baseline import BaselineResult, torch_threads, train_baseline
from .config import TrainConfig, learned_rates, make_method, make_model, task_family
from .evaluation import evaluate, evaluate_own, prediction_frame
from .probe import COLUMNS as PROBE_COLUMNS
from .probe import GradientProbe
from .ranks import Ranks
from .ranks import current as current_ranks

SNAPSHOT_FORMAT = 2
LOG_COLUMNS = ["meta_step", "pre_update_loss", "post_update_loss", "step_time_s",
               "wall_time_s", "warnings", "findings"]
RATE_COLUMNS = ["rate_mean", "rate_min", "rate_max"]
"""Log columns of a run with learned step sizes: their mean, smallest and largest entry."""
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "min": torch.amin, "max": torch.amax, "mean": torch.mean}

FILES = {
    "log": "train_log.csv",
    "summary": "summary.json",
    "snapshot": "snapshot.pt",
    "predictions": "predictions.csv",
    "per_task": "heldout_per_task.csv",
    "own_per_task": "heldout_own_per_task.csv",
    "probe": "probe.csv",
}
EVALUATE = ("test", "validation")

_COMPILED: dict[tuple, Any] = {}
"""Compiled methods shared by the runs of one process, keyed by the method's configuration
and the network: a study compiles each configuration once, not once per seed."""


class TrainingDiverged(ValueError):
    """The loss or meta-gradient became non-finite; raised before the bad update."""

    def __init__(self, message: str, meta_step: int):
        super().__init__(message)
        self.meta_step = meta_step


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
    probes: pd.DataFrame | None = None
    rates: dict[str, torch.Tensor] = field(default_factory=dict)
    """The learned step sizes at the end (copies; empty when the run learns none)."""


def _shapes(params: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in params.items()}


def _rng_states(gen: torch.Generator, ranks: Ranks, device: str) -> dict[str, Any]:
    states: dict[str, Any] = {"tasks": gen.get_state(), "torch": torch.get_rng_state()}
    if not ranks.distributed:
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
    elif torch.device(device).type == "cuda":
        # One process per GPU: the state of this rank's own GPU only (reading every GPU's
        # would open a CUDA context on each of them from this process).
        states["cuda_device"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(gen: torch.Generator, states: Mapping[str, Any], ranks: Ranks,
                    device: str) -> None:
    gen.set_state(states["tasks"])
    torch.set_rng_state(states["torch"])
    cuda = torch.cuda.is_available() and torch.device(device).type == "cuda"
    if "cuda_device" in states and cuda:
        torch.cuda.set_rng_state(states["cuda_device"])
    elif "cuda" in states and torch.cuda.is_available() and not ranks.distributed:
        torch.cuda.set_rng_state_all(states["cuda"])
    # (Training draws no random number on the GPU: the tasks come from the CPU generator.)


def _format(value: Any) -> str:
    # repr of a Python float is the shortest string that reads back to the same double.
    return repr(value) if isinstance(value, float) else str(value)


class _LogFile:
    """The writer's ``train_log.csv``, one row appended per meta-step.

    In one process a failed write raises at once. Under torchrun it is kept until the
    next snapshot (:meth:`raise_pending`, run through ``Ranks.from_writer``), where every
    rank stops with it: raising on rank 0 alone would leave the others waiting. Nothing is
    lost: a resumed run rewrites the log from the snapshot."""

    def __init__(self, path: Path | None, columns: list[str], hold_errors: bool):
        self.columns, self.hold_errors = columns, hold_errors
        self.pending: OSError | None = None
        self._file: Any = None
        self._csv: Any = None
        if path is not None:
            try:
                self._file = path.open("a", newline="")
            except OSError as err:
                if not hold_errors:
                    raise
                self.pending = err
            else:
                self._csv = csv.writer(self._file)

    def write(self, row: Mapping[str, Any]) -> None:
        if self._csv is None or self.pending is not None:
            return
        try:
            self._csv.writerow([_format(row[c]) for c in self.columns])
            self._file.flush()
        except OSError as err:
            if not self.hold_errors:
                raise
            self.pending = err

    def raise_pending(self) -> None:
        if self.pending is not None:
            raise self.pending

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # a write failure is reported through raise_pending / write


def _write_log(path: Path, columns: list[str], log: Mapping[str, list]) -> None:
    """Rewrite the CSV from the in-memory log (used when starting and when resuming)."""
    lines = [",".join(columns)]
    for i in range(len(log[columns[0]]) if log else 0):
        lines.append(",".join(_format(log[c][i]) for c in columns))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def log_columns(cfg: TrainConfig) -> list[str]:
    """The log's columns: the common ones, then the method's own diagnostics, then the
    learned step sizes' (where the run learns them)."""
    method = make_method(cfg)
    return LOG_COLUMNS + list(method.log_columns) + (RATE_COLUMNS if learned_rates(method)
                                                     else [])


def rate_row(rates: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The log's rate columns: mean, smallest and largest entry over every learned rate."""
    flat = torch.cat([v.detach().reshape(-1).double() for v in rates.values()])
    return {"rate_mean": float(flat.mean()), "rate_min": float(flat.min()),
            "rate_max": float(flat.max())}


def rate_summary(method: Method, rates: Mapping[str, torch.Tensor],
                 params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The learned step sizes at the end of a run, for ``summary.json``: the rates applied
    at each inner step k (all entries of every tensor: mean, min, max) and per tensor."""

    def stats(values: list[torch.Tensor]) -> dict[str, float]:
        flat = torch.cat([v.detach().reshape(-1).double() for v in values])
        return {"mean": float(flat.mean()), "min": float(flat.min()),
                "max": float(flat.max())}

    steps = []
    for k in range(method.steps):
        at_k = _rates.at_step(rates, k, dict(params))
        assert isinstance(at_k, dict)
        steps.append({"step": k, **stats(list(at_k.values()))})
    return {"form": _rates.describe(method.inner_loop.inner_lr),
            "by_step": steps,
            "by_tensor": {k: {"shape": list(v.shape), **stats([v])} for k, v in rates.items()}}


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          baseline: BaselineResult | None = None, stop_after: int | None = None,
          evaluate: str = "test", label: str | None = None) -> TrainResult:
    """Meta-train ``config.method`` for ``config.meta_steps`` meta-steps; write log, snapshots,
    held-out evaluation and ``summary.json`` into ``out_dir`` (locked for the run).

    ``resume``: continue from ``out_dir/snapshot.pt`` (refused if it was written for
    other settings). Without it, an existing snapshot is only replaced with ``overwrite``.
    ``baseline``: a joint-training baseline already computed for the same settings (shared
    across methods by ``metagrad train --method all``); trained here when None.
    ``stop_after``: return right after that meta-step, as if the process were killed there
    (snapshots written so far stay; for tests and for splitting long runs).
    ``evaluate``: ``"test"`` (the held-out test tasks and the baseline) or
    ``"validation"`` (the validation tasks only: for choosing hyperparameters).
    ``label``: the name of the run in tables (default: its variant name, the method's
    name when it runs without inner-loop forms).

    With an initialised ``torch.distributed`` process group of several processes (the
    ``metagrad train`` command under torchrun sets it up, see
    :mod:`metagrad.train.ranks`), every process calls ``train`` with the same arguments:
    each computes the meta-gradient of its slice of every meta-batch, and rank 0 alone
    reads the snapshot (sending it to the others) and writes into ``out_dir``. Every rank
    returns the same result.
    """
    cfg = config.resolved()
    if evaluate not in EVALUATE:
        raise ValueError(f"evaluate must be one of {', '.join(EVALUATE)}, got {evaluate!r}")
    ranks = current_ranks()
    check_world(cfg, ranks.world)
    with ExitStack() as stack, torch_threads(cfg.threads):
        def claim() -> Path:  # the writer's: checked and locked for the run
            out = outdir.prepare(out_dir)
            stack.enter_context(outdir.hold(out))
            return out

        out = ranks.from_writer(claim)
        return _train(cfg, out, resume, overwrite, progress, baseline, stop_after, evaluate,
                      label or cfg.variant, ranks)


def check_world(cfg: TrainConfig, world: int) -> None:
    """Refuse more processes than tasks per meta-step: a process without tasks would
    only wait for the others."""
    if world > cfg.meta_batch:
        raise ValueError(f"--meta-batch {cfg.meta_batch} is smaller than the {world} "
                         "processes: every process needs at least one task of each "
                         "meta-batch (start fewer processes or raise --meta-batch)")


def shared_loss(cfg: TrainConfig):
    """``loss(params, batch)`` of the configured network (MSE). The parameters are passed
    explicitly, so one loss serves every run with this architecture."""
    key = ("loss", tuple(cfg.hidden), cfg.device)
    if key not in _COMPILED:
        _COMPILED[key] = module_loss(make_model(cfg), F.mse_loss)
    return _COMPILED[key]


def _meta_gradient(cfg: TrainConfig, method: Method):
    """The method itself, or its compiled form shared across runs (``cfg.compile``).

    Every compiled method traces the same Python function with other constants, and
    torch.compile allows only a few recompilations of one function (8 on torch 2.13; with
    ``fullgraph=True`` the next one is an error). So a new configuration starts from a
    reset compiler cache, keeping only the one in use (in its checked and unchecked forms,
    which differ by the final inner loss L_tr(φ) the checks read); recompiling a
    configuration seen before is then served by inductor's on-disk cache (under a second
    here).
    """
    if not cfg.compile:
        return method
    # A method holding learned rates holds the run's own rate tensors (its repr shows only
    # their shapes): a compiled form is shared only with methods holding the same tensors.
    held = tuple(id(v) for v in learned_rates(method).values())
    config = ("method", repr(replace(method, diagnose="off")), tuple(cfg.hidden), cfg.device,
              held)
    key = (*config, method.diagnose)
    if key not in _COMPILED:
        for old in [k for k in _COMPILED if k[0] == "method" and k[:-1] != config]:
            del _COMPILED[old]
        if not any(k[0] == "method" and k[:-1] == config for k in _COMPILED):
            torch._dynamo.reset()
        _COMPILED[key] = compile_method(method)
    return _COMPILED[key]


def _train(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool, progress: bool,
           baseline: BaselineResult | None, stop_after: int | None, evaluate_on: str,
           label: str, ranks: Ranks) -> TrainResult:
    paths = {k: out / v for k, v in FILES.items()}
    writer = ranks.writer

    model = make_model(cfg)
    loss = shared_loss(cfg)
    # The method's numerical checks run on every check_every-th meta-step (the checked
    # call also computes the final inner loss L_tr(φ), so K = 1 is checked too); their
    # findings are counted in the log and shown once per kind below, not once per step.
    method = replace(make_method(cfg, params_of(model)), diagnose="record")
    # Learned step sizes: held by the method, stepped by the optimizer below (in place).
    rates = learned_rates(method)
    checked = _meta_gradient(cfg, method)
    fast = _meta_gradient(cfg, replace(method, diagnose="off")) if cfg.check_every > 1 \
        else checked
    calls = [checked] if fast is checked else [checked, fast]

    def compiling() -> float:
        return sum(sum(c.compile_seconds.values()) for c in calls) if cfg.compile else 0.0

    # A compiled method is shared by the runs of a process: count only this run's compiling.
    compiled_before = compiling()
    # Under torchrun: the mean over the meta-batch from every rank's slice of it, with the
    # findings of every rank.
    runs = {True: checked, False: fast}  # by whether the meta-step is checked
    if ranks.distributed:
        runs = {check: distributed(call) for check, call in runs.items()}
    assert cfg.meta_lr is not None  # filled by TrainConfig.resolved()
    # θ, and the learned rates as a second group of the same optimizer (Li et al. 2017
    # update the initialisation and the rates together).
    groups: Any = model.parameters() if not rates else \
        [{"params": list(model.parameters())}, {"params": list(rates.values())}]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.meta_lr)
    else:
        opt = torch.optim.Adam(groups, lr=cfg.meta_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    family = task_family(cfg)
    columns = log_columns(cfg)
    reductions = {c: REDUCTIONS[r] for c, r in method.log_columns.items()}
    expected = {"format": SNAPSHOT_FORMAT, "method": cfg.method, "config": cfg.identity(),
                "shapes": _shapes({**params_of(model),
                                   **{f"inner_lr:{k}": v for k, v in rates.items()}})}
    probe = GradientProbe(cfg, method, loss) if cfg.probe_at else None

    log: dict[str, list] = {c: [] for c in columns}
    probes: list[dict[str, Any]] = []
    start, elapsed_before = 0, 0.0

    def starting_point() -> dict[str, Any] | None:
        """The writer's: the snapshot to resume from (None: a new run), checked, and the
        log rewritten from it."""
        payload = None
        if resume:
            payload = snap.load_snapshot(paths["snapshot"])
            snap.check_compatible(paths["snapshot"], payload, expected,
                                  ["format", "method", "config", "shapes"])
            if payload["meta_step"] > cfg.meta_steps:
                raise ValueError(f"{paths['snapshot']} is at meta-step "
                                 f"{payload['meta_step']}, beyond --meta-steps {cfg.meta_steps}")
        elif paths["snapshot"].exists() and not overwrite:
            raise ValueError(f"{out} already holds a run ({FILES['snapshot']}); pass --resume "
                             "to continue it, --overwrite to start again, or choose another "
                             "--out")
        # Drop rows a killed run logged after its last snapshot: they are recomputed
        # identically.
        _write_log(paths["log"], columns, {c: [] for c in columns} if payload is None
                   else {c: list(payload["log"][c]) for c in columns})
        return payload

    # Under torchrun rank 0 reads the snapshot and sends it to every rank: the other ranks
    # need no access to the folder (nor a shared file system across machines).
    payload = ranks.from_writer(starting_point)
    if payload is not None:
        model.load_state_dict(payload["model"])
        with torch.no_grad():  # in place: the method and the optimizer hold these tensors
            for name, rate in rates.items():
                rate.copy_(payload["rates"][name])
        opt.load_state_dict(payload["optimizer"])
        _set_rng_states(gen, payload["rng"], ranks, cfg.device)
        start, elapsed_before = int(payload["meta_step"]), float(payload["elapsed_s"])
        log = {c: list(payload["log"][c]) for c in columns}
        probes = [dict(row) for row in payload.get("probes", [])]
        del payload

    saved_at = start
    log_file = _LogFile(paths["log"] if writer else None, columns,
                        hold_errors=ranks.distributed)

    def save(meta_step: int, elapsed: float) -> None:
        nonlocal saved_at
        state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        if rates:
            state["rates"] = {k: v.detach().clone() for k, v in rates.items()}
        # Every rank took the same steps from the same state: their states must be
        # bit-identical. Checked before the snapshot, so a bad one never replaces a good one.
        ranks.check_identical(state, meta_step)

        def write() -> None:
            log_file.raise_pending()
            snap.save_snapshot(paths["snapshot"], {
                **expected, "meta_step": meta_step, "elapsed_s": elapsed, **state,
                "rng": _rng_states(gen, ranks, cfg.device), "log": log,
                "method_config": method.config(), "probes": probes,
                "processes": ranks.world,
            })

        ranks.from_writer(write)
        saved_at = meta_step

    def maybe_probe(meta_step: int) -> float:
        """Probe θ after ``meta_step`` updates if asked; the seconds it took (not training)."""
        if probe is None or meta_step not in cfg.probe_at or \
                any(r["meta_step"] == meta_step for r in probes):
            return 0.0
        row = probe.measure(params_of(model), meta_step)  # on every rank alike
        probes.append(row)
        ranks.from_writer(lambda: _write_probes(paths["probe"], probes))
        return float(row["probe_time_s"])

    bar = tqdm(total=cfg.meta_steps, initial=start, desc=label,
               disable=not (progress and writer), dynamic_ncols=True)
    finished = True
    first_findings: dict[str, str] = {}
    with bar, closing(log_file):
        segment_start = time.perf_counter()
        segment_start += maybe_probe(start)
        for meta_step in range(start + 1, cfg.meta_steps + 1):
            t0 = time.perf_counter()
            # The whole meta-batch, drawn alike by every rank; each computes its own slice.
            tasks = family.sample(cfg.meta_batch, generator=gen, device=cfg.device)
            mine = shard_tasks(tasks, ranks.rank, ranks.world) if ranks.distributed else tasks
            check = meta_step % cfg.check_every == 0
            out_mg = runs[check](loss, params_of(model), mine)
            diag = out_mg.diagnostics
            if ranks.distributed and reductions:
                diag = ranks.gather_tasks(diag, tasks)  # every task's row, in task order
            # One finding per kind (under torchrun each rank reports its own tasks).
            found = list({f.kind: f for f in out_mg.findings}.values())
            pre, post = float(out_mg.pre_update_loss), float(out_mg.post_update_loss)
            rate_grad = out_mg.hyper_grad.get("inner_lr", {}) if rates else {}
            grad_finite = all(bool(torch.isfinite(g).all()) for g in
                              [*out_mg.grad.values(), *(rate_grad[k] for k in rates)])
            finite = math.isfinite(pre) and math.isfinite(post) and grad_finite
            if finite:
                set_grads(model, out_mg.grad)
                if rates:
                    set_grads(rates, rate_grad)
                opt.step()
            synchronize(cfg.device)
            now = time.perf_counter()
            row: dict[str, Any] = {
                "meta_step": meta_step, "pre_update_loss": pre, "post_update_loss": post,
                "step_time_s": now - t0, "wall_time_s": elapsed_before + now - segment_start,
                "warnings": len(found), "findings": "+".join(sorted({f.kind for f in found}))}
            for col, reduce in reductions.items():
                row[col] = float(reduce(diag[col]))
            if rates:
                row.update(rate_row(rates))
            for c in columns:
                log[c].append(row[c])
            log_file.write(row)
            if not finite:
                # Stopped before the update: parameters and the last snapshot stay usable.
                raise TrainingDiverged(
                    f"{label} diverged at meta-step {meta_step}: pre/post-update loss "
                    f"{pre:.4g} / {post:.4g}, meta-gradient finite: {grad_finite}"
                    + (f"; the method reported: {found[0].message}" if found else "")
                    + f". Last snapshot: meta-step {saved_at}. Try a smaller --meta-lr or "
                    "--inner-lr, or (imaml/neumann) a larger --lam or a smaller --step",
                    meta_step)
            for finding in found:
                if finding.kind not in first_findings:
                    first_findings[finding.kind] = f"meta-step {meta_step}: {finding.message}"
                    if writer:
                        bar.write(f"{label}: warning at meta-step {meta_step} (later ones "
                                  f"are counted in {FILES['log']}, column 'warnings'): "
                                  f"{finding.message}", file=sys.stderr)
            segment_start += maybe_probe(meta_step)
            if (cfg.snapshot_every and meta_step % cfg.snapshot_every == 0) or \
                    meta_step == cfg.meta_steps:
                save(meta_step, row["wall_time_s"])
            bar.set_postfix(pre=f"{pre:.3f}", post=f"{post:.3f}", refresh=False)
            bar.update()
            if stop_after is not None and meta_step >= stop_after and meta_step < cfg.meta_steps:
                finished = False
                break
        # A log write that failed after the last snapshot (torchrun: held until now).
        ranks.from_writer(log_file.raise_pending)

    params = {k: v.detach().clone() for k, v in params_of(model).items()}
    frame = pd.DataFrame(log, columns=columns)
    result = TrainResult(cfg, out, frame, params, finished,
                         probes=pd.DataFrame(probes, columns=PROBE_COLUMNS) if probe else None,
                         rates={k: v.detach().clone() for k, v in rates.items()})
    if not finished:
        return result

    train_time = float(log["wall_time_s"][-1]) if log["wall_time_s"] else 0.0
    kinds: dict[str, int] = {}
    for value in log["findings"]:
        for kind in filter(None, str(value).split("+")):
            kinds[kind] = kinds.get(kind, 0) + 1
    summary: dict[str, Any] = {
        "method": cfg.method,
        "inner": list(cfg.inner),
        "variant": label,
        "meta_steps": cfg.meta_steps,
        "config": cfg.as_dict(),
        "identity": cfg.identity(),
        "method_config": method.config(),
        "gradient_equivalents": method.gradient_equivalents(),
        "train_time_s": train_time,
        "mean_step_time_s": train_time / max(1, len(log["meta_step"])),
        "median_step_time_s": float(pd.Series(log["step_time_s"]).median())
        if log["step_time_s"] else math.nan,
        "final_pre_update_loss": _tail_mean(log["pre_update_loss"]),
        "final_post_update_loss": _tail_mean(log["post_update_loss"]),
        "warning_steps": sum(1 for w in log["warnings"] if w),
        "checked_steps": sum(1 for s in log["meta_step"] if s % cfg.check_every == 0),
        "finding_steps": kinds,
        "first_warnings": list(first_findings.values()),
        "compile_seconds": compiling() - compiled_before
        if cfg.compile else 0.0,
        "first_step_time_s": float(log["step_time_s"][0]) if log["step_time_s"] else math.nan,
        "torch": torch.__version__,
        "processes": ranks.world,
    }
    if rates:
        summary["rates"] = rate_summary(method, rates, params)
    # Evaluation and baseline: computed by every rank alike (the same numbers), written by
    # rank 0; see metagrad.train.ranks.
    if evaluate_on == "validation":
        results, _ = evaluate(loss, params, cfg, "validation")
        summary["validation"] = results[str(cfg.shots)]
        own, _ = evaluate_own(loss, params, cfg, method, "validation")
        summary["validation_own"] = own[str(cfg.shots)]
        ranks.from_writer(lambda: outdir.write_json(paths["summary"], summary))
        result.summary = summary
        return result

    if baseline is None:
        baseline = train_baseline(cfg, progress=progress)
    results, per_task = evaluate(loss, params, cfg, "test")
    summary["heldout"] = results[str(cfg.shots)]
    summary["heldout_shots"] = results
    own, own_per_task = evaluate_own(loss, params, cfg, method, "test")
    summary["heldout_own"] = own[str(cfg.shots)]
    summary["heldout_own_shots"] = own
    summary["baseline"] = baseline.evaluation
    assert cfg.eval_lr is not None  # filled by TrainConfig.resolved()
    preds = prediction_frame(model, loss, params, _config.heldout_tasks(cfg), cfg.eval_lr)

    def write() -> None:
        outdir.write_json(paths["summary"], summary)
        per_task.to_csv(paths["per_task"], index=False)
        own_per_task.to_csv(paths["own_per_task"], index=False)
        preds.to_csv(paths["predictions"], index=False)

    ranks.from_writer(write)
    result.summary, result.predictions, result.baseline = summary, preds, baseline
    return result


def _write_probes(path: Path, rows: list[dict[str, Any]]) -> None:
    pd.DataFrame(rows, columns=PROBE_COLUMNS).to_csv(path, index=False)


def _tail_mean(values: list[float], n: int = 100) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def read_log(path: str | Path) -> pd.DataFrame:
    """Read ``train_log.csv`` back with every float exactly as logged (``findings``: an
    empty string where there were none)."""
    frame = pd.read_csv(path, dtype={"findings": str}, keep_default_na=False,
                        na_values={c: ["nan", "NaN"] for c in LOG_COLUMNS if c != "findings"})
    return frame
