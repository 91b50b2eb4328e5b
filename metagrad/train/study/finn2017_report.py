"""The result of ``metagrad train --preset finn2017`` next to the published numbers:
``finn2017.md``, ``finn2017.csv`` and ``finn2017.png``.

For each test support size K and number of adaptation steps k: the test MSE of the
meta-trained model and of the joint-training baseline on the reference's 600 test tasks,
mean over seeds with the 95 % interval for seeds and test tasks together
(:func:`metagrad.train.stats.combined_interval`), the seed part alone, and Finn et al.'s
interval over the tasks of one run (1.96·std/√600, ddof = 0); and the value of Finn et
al. 2017, Table 2 where there is one (K = 5; no interval was published).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ... import plotting
from .. import plots
from ..evaluation import DIVERGED, divergent_tasks, task_median
from ..stats import combined_interval, seed_interval, task_sd_from_interval
from .finn2017 import PUBLISHED

REPORTED_STEPS = ("1", "5", "10")
META, BASELINE = "meta", "baseline"
"""The two models of the report: the meta-trained one and the joint-training baseline."""


def _with_robust(evaluation: dict[str, Any], per_task: pd.DataFrame | None) -> dict[str, Any]:
    """``evaluation`` with its median, diverged-task count and mean over the other tasks
    per number of steps, recomputed from the per-task table where the summary predates
    them."""
    if "median_by_steps" in evaluation or per_task is None:
        return evaluation
    cols = [c for c in per_task.columns if c.startswith("mse_")]
    x = torch.tensor(per_task[cols].to_numpy())
    diverged = divergent_tasks(x)
    return {**evaluation, "median_by_steps": task_median(x),
            "diverged_tasks_by_steps": diverged.sum(0).tolist(),
            "mean_without_diverged_by_steps": [float(x[~diverged[:, k], k].mean())
                                               for k in range(x.shape[1])]}


def _evaluations(summaries: Sequence[dict[str, Any]], folders: Sequence[Path | None] | None,
                 baseline_folders: Sequence[Path | None] | None = None
                 ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """model (:data:`META`: the meta-trained runs, :data:`BASELINE`) → support size → one
    evaluation dict per run, with the robust statistics (see :func:`_with_robust`) and,
    where the run's per-task table is on disk, its per-task MSE (``per_task``: a frame of
    ``mse_k`` columns in task order)."""
    folders = list(folders) if folders is not None else [None] * len(summaries)
    bases = list(baseline_folders) if baseline_folders is not None else [None] * len(summaries)
    shots = sorted(summaries[0]["heldout_shots"], key=int)
    out: dict[str, dict[str, list[dict[str, Any]]]] = {META: {}, BASELINE: {}}
    for model in out:
        for K in shots:
            evals = []
            for s, folder, base in zip(summaries, folders, bases, strict=True):
                e = (s["heldout_shots"] if model == META else
                     s["baseline"]["heldout_shots"])[K]
                where = folder if model == META else base
                per_task = None
                if where is not None and (where / "heldout_per_task.csv").is_file():
                    f = pd.read_csv(where / "heldout_per_task.csv")
                    per_task = f[f["shots"] == int(K)]
                e = _with_robust(e, per_task if model == META else None)
                if per_task is not None:
                    e = {**e, "per_task": _chosen_rows(per_task, e)}
                evals.append(e)
            out[model][K] = evals
    return out


def _chosen_rows(per_task: pd.DataFrame, evaluation: dict[str, Any]) -> pd.DataFrame:
    """Per-task MSE after each k in task order; for the baseline, each k's column from the
    rows of the step size chosen for that k."""
    chosen = evaluation.get("eval_lr_by_steps")
    cols = {}
    for c in [c for c in per_task.columns if c.startswith("mse_")]:
        rows = per_task if chosen is None or c[4:] not in chosen else \
            per_task[per_task["eval_lr"] == chosen[c[4:]]]
        cols[c] = rows.sort_values("task")[c].to_numpy()
    return pd.DataFrame(cols)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1000 else f"{v:.3f}"


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _mean(values: Sequence[Any]) -> float:
    return sum(_num(v) for v in values) / len(values)


def _interval(evals: list[dict[str, Any]], i: int):
    """The seeds-and-tasks interval of the mean over runs after ``i`` steps: the task part
    from the per-task tables where every run has one, else bounded by the runs' stds."""
    values = [e["mse_by_steps"][i] for e in evals]
    n = int(evals[0]["tasks"])
    if all("per_task" in e for e in evals):
        averaged = sum(e["per_task"][f"mse_{i}"] for e in evals) / len(evals)
        return combined_interval(values, float(pd.Series(averaged).std(ddof=1)), n)
    sd = _mean([task_sd_from_interval(e["ci95_by_steps"][i], n) for e in evals])
    return combined_interval(values, sd, n, bound=True)


def table(summaries: Sequence[dict[str, Any]],
          folders: Sequence[Path | None] | None = None,
          baseline_folders: Sequence[Path | None] | None = None) -> pd.DataFrame:
    """One row per (model, K, k): mean over seeds with the 95 % interval for seeds and test
    tasks (``ci95``; ``task_part``: from the per-task tables, or the bound), the seed part
    alone, the mean of the per-run task intervals, the published value; and, because plain
    GD with a fixed step can diverge on a few tasks and then decide the mean, the median
    over tasks, the number of diverged tasks (summed over seeds) and the mean over the
    other tasks. ``model`` is the meta-trained method's name, or ``baseline``."""
    rows = []
    method = summaries[0]["method"]
    for role, by_shots in _evaluations(summaries, folders, baseline_folders).items():
        for K, evals in by_shots.items():
            for k in ("0", *REPORTED_STEPS):
                i = int(k)
                iv = _interval(evals, i)
                pub = PUBLISHED[role]
                published = pub["post_update_mse"].get(k) if int(K) == pub["shots"] else None
                robust = all("median_by_steps" in e for e in evals)
                rows.append({
                    "model": method if role == META else BASELINE, "shots": int(K),
                    "steps": i, "mse": iv.mean, "ci95": iv.half_width,
                    "task_part": "bound" if "bounded" in iv.method else "per-task",
                    "seed_ci95": seed_interval([e["mse_by_steps"][i] for e in evals]
                                               ).half_width,
                    "task_ci95": _mean([e["ci95_by_steps"][i] for e in evals]),
                    "seeds": len(evals),
                    "runs_not_finite": sum(1 for e in evals
                                           if not math.isfinite(_num(e["mse_by_steps"][i]))),
                    "median": _mean([e["median_by_steps"][i] for e in evals])
                    if robust else math.nan,
                    "diverged_tasks": sum(e["diverged_tasks_by_steps"][i] for e in evals)
                    if robust else math.nan,
                    "mean_without_diverged": _mean([e["mean_without_diverged_by_steps"][i]
                                                    for e in evals]) if robust else math.nan,
                    "eval_lr": evals[0]["inner_lr"] if role == META else
                    evals[0]["eval_lr_by_steps"][k],
                    "published": published})
    return pd.DataFrame(rows)


ROBUST = ("median", "diverged_tasks", "mean_without_diverged")


def _carry_robust(frame: pd.DataFrame, earlier: Path) -> pd.DataFrame:
    """Where the summaries predate the robust statistics and the per-task tables are gone,
    take them from an earlier report of the same runs (``finn2017.csv`` with the same
    model, shots, steps and mean, bit for bit)."""
    if not earlier.is_file() or not frame[list(ROBUST)].isna().any().any():
        return frame
    old = pd.read_csv(earlier)
    frame = frame.copy()
    for i, row in frame.iterrows():
        if not any(math.isnan(row[c]) for c in ROBUST):
            continue
        match = old[(old["model"] == row["model"]) & (old["shots"] == row["shots"])
                    & (old["steps"] == row["steps"])]
        same = len(match) == 1 and (match["mse"].iloc[0] == row["mse"] or (
            math.isnan(match["mse"].iloc[0]) and math.isnan(row["mse"])))
        if same:
            for c in ROBUST:
                frame.loc[i, c] = match[c].iloc[0]
    return frame


def write_report(out: Path, summaries: Sequence[dict[str, Any]],
                 folders: Sequence[Path | None] | None = None,
                 baseline_folders: Sequence[Path | None] | None = None) -> Path:
    """Write ``finn2017.md``, ``finn2017.csv`` and ``finn2017.png`` into ``out`` from the
    runs' summaries (and their per-task tables in ``folders`` and ``baseline_folders``,
    where given); returns the figure's path."""
    frame = _carry_robust(table(summaries, folders, baseline_folders), out / "finn2017.csv")
    frame.to_csv(out / "finn2017.csv", index=False)
    first = summaries[0]
    cfg = first["config"]
    n = len(summaries)
    steps_ms = sorted(1e3 * s["median_step_time_s"] for s in summaries)
    bounded = (frame["task_part"] == "bound").any()
    lines = [
        "# Finn et al. 2017 sinusoid protocol (`metagrad train --preset finn2017`)", "",
        f"{first['method']}, K = {cfg['shots']} support + {cfg['query']} query points, "
        f"{cfg['steps']} inner step with inner_lr = {cfg['inner_lr']}, "
        f"{cfg['optimizer'].capitalize()} meta_lr = {cfg['meta_lr']}, "
        f"meta-batch {cfg['meta_batch']}, {cfg['meta_steps']} meta-steps, MLP 1-"
        f"{'-'.join(map(str, cfg['hidden']))}-1 ReLU, initialisation `{cfg['init']}`; "
        f"{n} seed(s) ({', '.join(str(s['config']['seed']) for s in summaries)}). "
        f"Test: the reference code's {cfg['heldout_tasks']} test tasks "
        f"(`numpy.random.seed({cfg['heldout_seed']})`), K query points each, plain GD with "
        f"the training inner_lr; the baseline (Adam on the support points, "
        f"{first['baseline'].get('adam_steps')} steps) fine-tunes with the step size chosen "
        f"per k on validation tasks from {first['baseline'].get('eval_lr_grid')}.", "",
        f"Median time per meta-step {steps_ms[len(steps_ms) // 2]:.2f} ms "
        f"({'compiled' if cfg['compile'] else 'eager'}, {cfg['threads']} thread(s)); "
        f"training {sum(s['train_time_s'] for s in summaries) / n:.0f} s per seed.", "",
        "Intervals: **±** is the 95 % interval of the expected test MSE over training seeds "
        "and test tasks together (variance s²/S + σ²/T: s the std of the per-seed means, σ "
        "the std over the test tasks of the per-task MSE averaged over seeds; Student t "
        "with Welch–Satterthwaite degrees of freedom"
        + ("; σ bounded by the runs' mean std over tasks, the per-task tables not being "
           "at hand: conservative" if bounded else "") + "); *seed CI* is the seed part "
        "alone, the 95 % t interval across seeds (none for one seed); *task CI* Finn et "
        "al.'s 1.96·std/√600 over the test tasks of one run (population std), averaged "
        "over seeds. Finn et al. published no interval.", "",
    ]
    show = frame[frame["steps"] > 0].copy()
    show["ours"] = [f"not finite in {bad} of {n} runs" if bad else
                    f"{_fmt(m)} ± {_fmt(c)}" if c == c else _fmt(m) for m, c, bad in
                    zip(show["mse"], show["ci95"], show["runs_not_finite"], strict=True)]
    show["seed CI"] = show["seed_ci95"].map(lambda v: "" if v != v else f"± {_fmt(v)}")
    show["task CI"] = show["task_ci95"].map(lambda v: "" if v != v else f"± {_fmt(v)}")
    show["published"] = show["published"].map(lambda v: "" if v is None or v != v
                                              else f"{v:.2f}")
    for col in ("median", "mean_without_diverged"):
        show[col] = show[col].map(lambda v: "" if v != v else f"{v:.3f}")
    show["diverged_tasks"] = show["diverged_tasks"].map(lambda v: "" if v != v else
                                                        f"{int(v)} of {cfg['heldout_tasks'] * n}")
    lines += [show[["model", "shots", "steps", "ours", "seed CI", "task CI", "median",
                    "diverged_tasks", "mean_without_diverged", "eval_lr", "published"]]
              .rename(columns={"ours": "test MSE ± 95 % (seeds and tasks)",
                               "diverged_tasks": "diverged tasks",
                               "mean_without_diverged": "mean of the others"})
              .to_markdown(index=False), "",
              f"*Diverged tasks*: tasks whose MSE after k steps is above {DIVERGED:g}x their "
              "MSE before adaptation, or not finite: plain GD with a fixed step can blow up on a "
              "task where its support loss's curvature exceeds 2/inner_lr, and a few such tasks "
              "decide the mean (the protocol's statistic). The median and the mean of the "
              "other tasks (conditional on the outcome: a diagnostic, not a replacement for "
              "the mean) are averaged over seeds.", ""]
    (out / "finn2017.md").write_text("\n".join(lines) + "\n")
    return _figure(_evaluations(summaries, folders, baseline_folders), first["method"],
                   out / "finn2017.png")


def _figure(evaluations: dict[str, dict[str, list[dict[str, Any]]]], method: str,
            path: Path) -> Path:
    """Test MSE against adaptation steps per support size: the mean over tasks (solid, with
    the task interval; missing where a run's mean is not finite), the median over tasks
    (dashed) and the published points."""
    from ...methods import method_class

    plotting.setup()
    shots = list(evaluations[META])
    fig, axes = plotting.plt.subplots(1, len(shots), figsize=(4.6 * len(shots), 4.0),
                                      sharey=True, squeeze=False)
    for ax, K in zip(axes[0], shots, strict=True):
        for role in (META, BASELINE):
            curves = evaluations[role][K]
            ks = list(range(len(curves[0]["mse_by_steps"])))
            mean = [_mean([c["mse_by_steps"][k] for c in curves]) for k in ks]
            ci = [_mean([c["ci95_by_steps"][k] for c in curves]) for k in ks]
            color = plotting.palette()[method] if role == META else plots.BASELINE_COLOR
            label = method_class(method).title if role == META else "joint-training baseline"
            ax.plot(ks, mean, color=color, marker="o", ms=3, label=f"{label}: mean")
            ax.fill_between(ks, [m - c for m, c in zip(mean, ci, strict=True)],
                            [m + c for m, c in zip(mean, ci, strict=True)], color=color,
                            alpha=0.2, lw=0)
            if all("median_by_steps" in c for c in curves):
                median = [_mean([c["median_by_steps"][k] for c in curves]) for k in ks]
                ax.plot(ks, median, color=color, ls="--", lw=1, label=f"{label}: median")
            pub = PUBLISHED[role]
            if int(K) == pub["shots"]:
                xs = [int(k) for k in pub["post_update_mse"]]
                ax.scatter(xs, list(pub["post_update_mse"].values()), color=color, marker="x",
                           s=70, zorder=4, label=f"{label}, Finn et al. Table 2")
        ax.set_yscale("log")
        ax.set_title(f"K = {K} test shots (± 1.96·std/√n over tasks)")
        ax.set_xlabel("adaptation steps")
    axes[0][0].set_ylabel("test MSE")
    axes[0][0].legend(fontsize="x-small")
    return plotting.save(fig, path)


__all__ = ["BASELINE", "META", "table", "write_report"]
