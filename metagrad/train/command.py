"""``metagrad train``: meta-train one or all methods on sinusoid regression.

    metagrad train --method all --out runs/train         # 2000 meta-steps per method
    metagrad train --method maml --meta-steps 500 --snapshot-every 50
    metagrad train --method maml --meta-steps 500 --resume  # continue a killed run exactly

One folder per run (``--out``; with ``--method all`` one subfolder per method)
holding ``train_log.csv``, ``snapshot.pt``, ``summary.json`` and
``predictions.csv``; the top folder also gets ``comparison.csv`` and the
figures ``learning_curves.png``, ``heldout_mse.png`` and ``predictions.png``.
The loop itself is :func:`metagrad.train.train`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._app import UsageError, check_device, markdown_table
from ..methods import METHOD_NAMES, method_class
from . import plots
from .baseline import train_baseline
from .config import METHOD_SETTINGS, SETTING_DEFAULTS, TrainConfig
from .loop import FILES, TrainingDiverged, TrainResult, train

FIGURES = {
    "curves": "learning_curves.png",
    "heldout": "heldout_mse.png",
    "predictions": "predictions.png",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train", help="meta-train on sinusoid regression: curves, held-out evaluation, resume",
        description="Meta-train on sinusoid regression (Finn et al. 2017) and evaluate on "
                    "held-out tasks against a joint-training baseline.")
    p.add_argument("--method", default="maml", choices=[*METHOD_NAMES, "all"],
                   help="method to train, or all six one after another (default: maml)")
    p.add_argument("--meta-steps", type=int, default=d.meta_steps,
                   help=f"outer steps (default {d.meta_steps})")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"inner GD steps K during meta-training (default {d.steps}, as Finn "
                        "et al. for sinusoids)")
    p.add_argument("--inner-lr", type=float, default=d.inner_lr,
                   help=f"inner step size α (default {d.inner_lr})")
    for name in METHOD_SETTINGS:
        readers = [m for m in METHOD_NAMES if name in method_class(m).setting_names()]
        defaults = ", ".join(
            f"{m} {({**method_class(m).default_settings(), **SETTING_DEFAULTS.get(m, {})})[name]:g}"
            for m in readers)
        p.add_argument(f"--{name.replace('_', '-')}", type=float if name in ("lam", "step")
                       else int, default=None, help=f"{name} (default: {defaults})")
    p.add_argument("--meta-batch", type=int, default=d.meta_batch,
                   help=f"tasks per meta-step (default {d.meta_batch})")
    p.add_argument("--meta-lr", type=float, default=None,
                   help="outer rate: Adam lr (default 1e-3); for reptile its ε (default 1.0)")
    p.add_argument("--seed", type=int, default=d.seed, help="initialisation and task stream")
    p.add_argument("--device", default=d.device, help="cpu or cuda (default: cpu)")
    p.add_argument("--out", default="train_out", help="output folder (default: train_out/)")
    p.add_argument("--snapshot-every", type=int, default=d.snapshot_every,
                   help=f"write a resumable snapshot every N meta-steps, 0: only at the end "
                        f"(default {d.snapshot_every})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its snapshot (same settings)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again even if --out already holds a run")
    p.add_argument("--heldout-tasks", type=int, default=d.heldout_tasks,
                   help=f"held-out evaluation tasks (default {d.heldout_tasks})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"CPU threads for torch (default {d.threads}: faster for these tiny ops)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    names = list(METHOD_NAMES) if args.method == "all" else [args.method]
    given = {name: getattr(args, name) for name in METHOD_SETTINGS
             if getattr(args, name) is not None}
    for name in given:  # a flag no chosen method reads would silently do nothing
        if not any(name in method_class(m).setting_names() for m in names):
            raise UsageError(f"--{name.replace('_', '-')} is not read by {args.method}")
    configs = []
    for name in names:
        reads = method_class(name).setting_names()
        cfg = TrainConfig(
            method=name, meta_steps=args.meta_steps, steps=args.steps, inner_lr=args.inner_lr,
            **{k: v for k, v in given.items() if k in reads},
            meta_batch=args.meta_batch, meta_lr=args.meta_lr, seed=args.seed,
            device=args.device, snapshot_every=args.snapshot_every,
            heldout_tasks=args.heldout_tasks, threads=args.threads)
        try:
            configs.append(cfg.resolved())
        except (ValueError, TypeError) as err:
            raise UsageError(f"{name}: {err}") from None
    return configs


def train_many(configs: Sequence[TrainConfig], out: Path, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True,
               subfolders: bool = True) -> tuple[dict[str, TrainResult], dict[str, str]]:
    """Train each config (one subfolder per method), sharing one joint-training baseline:
    every config differs only in the method, so the baseline is the same for all.

    Returns the finished runs and, for several methods, the ones that diverged (method ->
    message); a diverging single run raises :class:`TrainingDiverged`."""
    baseline = None
    results: dict[str, TrainResult] = {}
    failed: dict[str, str] = {}
    for cfg in configs:
        folder = out / cfg.method if subfolders else out
        has_snapshot = (folder / FILES["snapshot"]).exists()
        if resume and not has_snapshot and not subfolders:
            raise UsageError(f"--resume: no snapshot at {folder / FILES['snapshot']}; "
                             "run without --resume to start")
        if baseline is None:
            baseline = train_baseline(cfg, progress=progress)
        try:
            results[cfg.method] = train(cfg, folder, resume=resume and has_snapshot,
                                        overwrite=overwrite, progress=progress,
                                        baseline=baseline)
        except TrainingDiverged as err:
            if not subfolders:
                raise
            print(f"metagrad train: {err}", file=sys.stderr)
            failed[cfg.method] = f"diverged at meta-step {err.meta_step}"
    return results, failed


def comparison_frame(results: dict[str, TrainResult],
                     failed: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per method (held-out MSE before / after k steps, time) plus the baseline;
    diverged methods get a row with only their status."""
    rows: list[dict[str, Any]] = []
    baseline = None
    failed = failed or {}
    for name in [n for n in METHOD_NAMES if n in results or n in failed]:
        if name in failed:
            rows.append({"method": name, "status": failed[name]})
            continue
        s = results[name].summary
        assert s is not None
        baseline = s["baseline"]
        rows.append({"method": name, **_mse_columns(s["heldout"]),
                     "train_time_s": s["train_time_s"],
                     "step_ms": 1e3 * s["mean_step_time_s"],
                     "status": _status(s)})
    if baseline is not None:
        rows.append({"method": "baseline (joint training)", **_mse_columns(baseline),
                     "train_time_s": baseline["train_time_s"],
                     "step_ms": 1e3 * baseline["train_time_s"] / max(1, _meta_steps(results)),
                     "status": "ok"})
    return pd.DataFrame(rows)


def _status(summary: dict) -> str:
    n = summary.get("warning_steps", 0)
    return "ok" if not n else f"ok, numerical warnings at {n} steps"


def _meta_steps(results: dict[str, TrainResult]) -> int:
    return next(iter(results.values())).config.meta_steps


def _mse_columns(evaluation: dict) -> dict[str, float]:
    cols = {"pre_update_mse": evaluation["pre_update_mse"]}
    for k, v in evaluation["post_update_mse"].items():
        cols[f"post_update_mse_{k}"] = v
    return cols


def write_figures(results: dict[str, TrainResult], out: Path, prefix: str = "") -> dict[str, Path]:
    if not results:
        return {}
    logs = {n: r.log for n, r in results.items()}
    summaries = {n: r.summary for n, r in results.items() if r.summary is not None}
    preds = {n: r.predictions for n, r in results.items() if r.predictions is not None}
    first = next(iter(results.values()))
    if first.baseline is not None:
        preds[plots.BASELINE] = first.baseline.predictions
    return {
        "curves": plots.plot_learning_curves(logs, out / f"{prefix}{FIGURES['curves']}"),
        "heldout": plots.plot_heldout(summaries, out / f"{prefix}{FIGURES['heldout']}"),
        "predictions": plots.plot_predictions(
            preds, out / f"{prefix}{FIGURES['predictions']}"),
    }


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    configs = configs_from_args(args)
    out = Path(args.out)
    started = time.perf_counter()
    results, failed = train_many(configs, out, resume=args.resume, overwrite=args.overwrite,
                                 progress=not args.quiet, subfolders=args.method == "all")
    out.mkdir(parents=True, exist_ok=True)
    frame = comparison_frame(results, failed)
    frame.to_csv(out / "comparison.csv", index=False)
    figures = write_figures(results, out)
    print(markdown_table(frame))
    print(f"total {time.perf_counter() - started:.1f} s; wrote {out / 'comparison.csv'}"
          + "".join(f", {p}" for p in figures.values()))
    return 1 if failed else 0
