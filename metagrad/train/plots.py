"""Figures of meta-training runs (seaborn, one fixed colour per method).

All functions take what ``metagrad.train`` writes (the per-step log, the
summary dict, the prediction table), keyed by method name, so they work the
same on fresh results and on folders read back from disk.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.ticker import MaxNLocator

from .. import plotting
from ..methods import METHOD_NAMES

BASELINE = "baseline"
BASELINE_COLOR = (0.25, 0.25, 0.25)
STUDY_FIGURES = {
    "curves": "learning_curves.png",
    "heldout": "heldout_mse.png",
    "comparison": "comparison.png",
    "accuracy": "accuracy_along_training.png",
    "tuning": "tuning.png",
}
"""The figure files of a study."""


def _ordered(names) -> list[str]:
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    return sorted(names, key=lambda m: (order.get(m, len(order)), m))


def smooth(values: pd.Series, window: int | None = None) -> pd.Series:
    """Trailing moving average; the window defaults to 1/40 of the run (at least 1)."""
    if window is None:
        window = max(1, len(values) // 40)
    return values.rolling(window, min_periods=1).mean()


def plot_learning_curves(logs: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """Pre-update loss (train split, before adaptation) and post-update loss (val split,
    after K steps) per meta-step: raw trace faint, moving average on top."""
    plotting.setup()
    colors = plotting.palette()
    fig, axes = plotting.plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, column, title in zip(axes, ("pre_update_loss", "post_update_loss"),
                                 ("pre-update loss (train split, θ)",
                                  "post-update loss (val split, φ)"), strict=True):
        for name in _ordered(logs):
            log = logs[name]
            color = colors.get(name)
            ax.plot(log["meta_step"], log[column], color=color, alpha=0.18, lw=0.6)
            ax.plot(log["meta_step"], smooth(log[column]), color=color, lw=1.8, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("meta-step")
        ax.set_title(title)
        plotting.plain_log_labels(ax, "y")
    axes[0].set_ylabel("MSE (meta-batch mean)")
    # Beside the panels, not over the curves.
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return plotting.save(fig, path)


def plot_heldout(summaries: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Held-out MSE against the number of plain GD adaptation steps, with the
    joint-training baseline for comparison."""
    plotting.setup()
    colors = plotting.palette()
    fig, ax = plotting.plt.subplots(figsize=(8.0, 4.0))
    for name in _ordered(summaries):
        curve = summaries[name]["heldout"]["mse_by_steps"]
        ax.plot(range(len(curve)), curve, marker="o", ms=3, color=colors.get(name), label=name)
    first = next(iter(summaries.values()), None)
    if first is not None:
        curve = first["baseline"]["mse_by_steps"]
        ax.plot(range(len(curve)), curve, ls="--", marker="s", ms=3, color=BASELINE_COLOR,
                label="joint-training baseline")
        held = first["heldout"]
        ax.set_title(f"held-out tasks ({held['tasks']}, {held['query']} query points each)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    plotting.plain_log_labels(ax, "y")
    ax.set_xlabel(r"adaptation steps (plain GD, inner_lr)")
    ax.set_ylabel("held-out MSE")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return plotting.save(fig, path)


def _label(curve: str) -> str:
    k = int(curve.removeprefix("k="))
    return "before adaptation" if k == 0 else f"after {k} step{'s' if k > 1 else ''}"


def plot_predictions(predictions: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """Adapted predictions vs the true sine on a few held-out tasks: rows are tasks,
    columns are methods (and the baseline, key ``"baseline"``)."""
    plotting.setup()
    colors = {**plotting.palette(), BASELINE: BASELINE_COLOR}
    names = _ordered([n for n in predictions if n != BASELINE])
    if BASELINE in predictions:
        names.append(BASELINE)
    tasks = sorted(set().union(*(set(p["task"]) for p in predictions.values())))
    fig, axes = plotting.plt.subplots(len(tasks), len(names), squeeze=False, sharex=True,
                                      sharey="row",
                                      figsize=(2.6 * len(names) + 0.6, 2.2 * len(tasks) + 0.4))
    styles = {"k=0": (":", 0.6), "k=1": ("--", 0.8), "k=10": ("-", 1.0)}
    for col, name in enumerate(names):
        frame = predictions[name]
        for row, task in enumerate(tasks):
            ax = axes[row][col]
            t = frame[frame["task"] == task]
            true = t[t["curve"] == "true"]
            ax.plot(true["x"], true["y"], color="black", lw=1.2, label="true")
            for curve, (ls, alpha) in styles.items():
                c = t[t["curve"] == curve]
                if len(c):
                    ax.plot(c["x"], c["y"], ls=ls, alpha=alpha, color=colors.get(name),
                            lw=1.4, label=_label(curve))
            sup = t[t["curve"] == "support"]
            ax.scatter(sup["x"], sup["y"], s=12, color="black", marker="^", zorder=3,
                       label="support points")
            if row == 0:
                ax.set_title(name)
            if row == len(tasks) - 1:
                ax.set_xlabel("x")
            if col == 0:
                ax.set_ylabel(f"y (task {task})")
    # One legend for the figure, below the panels, not over any curve.
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small",
               frameon=False)
    return plotting.save(fig, path, rect=(0, 0.07, 1, 1))


# --------------------------------------------------------------------------------------------
# a study: several seeds per variant, bands are 95 % t intervals across seeds

REGIME_STYLE = {"k1": "-", "solved": "--", "matched": ":"}


def _variant_style(name: str) -> tuple[Any, str]:
    """A variant's colour (its method's; a method with inner-loop forms, ``metasgd`` or
    ``maml+per_step``, one of its own) and line style (its regime's)."""
    base, _, regime = name.partition("-")
    colors = {**plotting.palette(), BASELINE: BASELINE_COLOR}
    if base not in colors:  # stable across figures and runs: chosen by the name itself
        extra = plotting.sns.color_palette("dark", 8)
        colors[base] = extra[zlib.crc32(base.encode()) % len(extra)]
    return colors[base], REGIME_STYLE.get(regime or "k1", "-")


def _band(rows: list[list[float]], log: bool = False
          ) -> tuple[list[float], list[float], list[float]]:
    """Mean with the t interval across seeds (rows) at every position (columns), from the
    seeds that have a finite number there; with ``log``, of log10 of the values (a
    geometric mean and a band that stays positive, for numbers spanning decades)."""
    import math

    from .stats import seed_interval

    mean: list[float] = []
    low: list[float] = []
    high: list[float] = []
    for col in zip(*rows, strict=True):
        vals = [v for v in col if v == v and abs(v) != float("inf") and (v > 0 or not log)]
        if not vals:
            for series in (mean, low, high):
                series.append(math.nan)
            continue
        iv = seed_interval([math.log10(v) for v in vals] if log else vals)
        half = 0.0 if iv.half_width != iv.half_width else iv.half_width
        m, lo, hi = iv.mean, iv.mean - half, iv.mean + half
        if log:
            m, lo, hi = 10 ** m, 10 ** lo, 10 ** hi
        for series, value in ((mean, m), (low, lo), (high, hi)):
            series.append(value)
    return mean, low, high


def _plot_band(ax, x, rows, name: str, label: str | None = None, log: bool = False) -> None:
    mean, low, high = _band(rows, log)
    color, ls = _variant_style(name)
    ax.plot(x, mean, color=color, ls=ls, lw=1.6, label=label or name)
    ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)


def plot_study_curves(logs: Mapping[str, Mapping[int, pd.DataFrame]], path: Path) -> Path:
    """Pre- and post-update loss along meta-training (moving average per seed), mean over
    seeds with the 95 % t band."""
    plotting.setup()
    fig, axes = plotting.plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, column, title in zip(axes, ("pre_update_loss", "post_update_loss"),
                                 ("pre-update loss (train split, θ)",
                                  "post-update loss (val split, φ)"), strict=True):
        for name, runs in logs.items():
            series = [smooth(log[column]).tolist() for log in runs.values()]
            n = min(map(len, series))
            x = next(iter(runs.values()))["meta_step"].tolist()[:n]
            _plot_band(ax, x, [s[:n] for s in series], name)
        ax.set_yscale("log")
        ax.set_xlabel("meta-step")
        ax.set_title(title)
    axes[0].set_ylabel("MSE (meta-batch mean)")
    axes[1].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return plotting.save(fig, path)


def plot_study_heldout(runs: pd.DataFrame, path: Path) -> Path:
    """Test MSE against the number of adaptation steps, mean over seeds ± 95 % t band."""
    plotting.setup()
    fig, ax = plotting.plt.subplots(figsize=(9, 4.4))
    ks = sorted(int(c[4:]) for c in runs.columns if c.startswith("mse_"))
    for name in dict.fromkeys(runs["variant"]):
        r = runs[runs["variant"] == name]
        _plot_band(ax, ks, [[row[f"mse_{k}"] for k in ks] for _, row in r.iterrows()], name)
    ax.set_yscale("log")
    ax.set_xlabel("adaptation steps (plain GD, eval_lr)")
    ax.set_ylabel("test MSE")
    ax.set_title("held-out test tasks: mean over seeds, 95 % t band")
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return plotting.save(fig, path)


def plot_study_comparison(comp: pd.DataFrame, path: Path, ks: tuple[str, ...]) -> Path:
    """Test MSE after k steps per variant: mean over seeds with the 95 % interval for seeds
    and test tasks (thick) and Finn et al.'s interval over the tasks of one run (thin)."""
    plotting.setup()
    fig, axes = plotting.plt.subplots(1, len(ks), figsize=(5.2 * len(ks), 0.42 * len(comp) + 1.4),
                                      sharey=True, squeeze=False)
    y = list(range(len(comp)))[::-1]
    for ax, k in zip(axes[0], ks, strict=True):
        for yi, (_, row) in zip(y, comp.iterrows(), strict=True):
            color, ls = _variant_style(row["variant"])
            half = 0.0 if row[f"mse_{k}_ci"] != row[f"mse_{k}_ci"] else row[f"mse_{k}_ci"]
            ax.errorbar(row[f"mse_{k}"], yi, xerr=half, fmt="o", color=color, capsize=4, lw=2.2)
            ax.errorbar(row[f"mse_{k}"], yi + 0.22, xerr=row[f"task_ci_{k}"], fmt="none",
                        color=color, alpha=0.5, lw=1, capsize=2)
        ax.set_xscale("log")
        ax.set_title(f"test MSE after {k} step{'s' if k != '1' else ''}")
        ax.set_xlabel("MSE (thick: ± seeds and tasks; thin: ± tasks of one run)")
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels(comp["variant"])
    return plotting.save(fig, path)


def plot_accuracy(probes: pd.DataFrame, logs: Mapping[str, Mapping[int, pd.DataFrame]],
                  path: Path) -> Path:
    """Meta-gradient accuracy during meta-training next to the loss: relative error and
    cosine against exact MAML (same K, inner_lr), relative error against the exact implicit
    gradient (IMAML, Neumann), and the post-update loss, each over the seeds with a finite
    number ± t band (errors: geometric mean, the t band of log10)."""
    plotting.setup()
    fig, axes = plotting.plt.subplots(1, 4, figsize=(19, 4.2))
    panels = (("err_maml", "error vs exact MAML (same K, inner_lr)", True),
              ("cos_maml", "cosine with exact MAML", False),
              ("err_implicit", "error vs exact implicit gradient", True))
    for ax, (col, title, log) in zip(axes, panels, strict=False):
        for name in dict.fromkeys(probes["variant"]):
            p = probes[probes["variant"] == name]
            table = p.pivot(index="seed", columns="meta_step", values=col)
            table = table.dropna(axis=1, how="all")
            if table.empty:
                continue
            _plot_band(ax, list(table.columns), table.values.tolist(), name, log=log)
        if log:
            ax.set_yscale("log")
            title += " (geometric mean)"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("meta-step")
    for name, runs in logs.items():
        series = [smooth(log["post_update_loss"]).tolist() for log in runs.values()]
        n = min(map(len, series))
        x = next(iter(runs.values()))["meta_step"].tolist()[:n]
        _plot_band(axes[3], x, [s[:n] for s in series], name)
    axes[3].set_yscale("log")
    axes[3].set_title("post-update loss (training tasks)")
    axes[3].set_xlabel("meta-step")
    axes[3].legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return plotting.save(fig, path)


def plot_tuning(tuning: pd.DataFrame, path: Path) -> Path:
    """Validation MSE after one adaptation step at every grid point, per variant (the
    chosen point filled)."""
    plotting.setup()
    names = list(dict.fromkeys(tuning["variant"]))
    fig, axes = plotting.plt.subplots(1, len(names), figsize=(3.6 * len(names), 4.4),
                                      squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        t = tuning[tuning["variant"] == name]
        color, _ = _variant_style(name)
        x = list(range(len(t)))
        scores = t["validation_mse_1"].where(t["validation_mse_1"].map(
            lambda v: v == v and v != float("inf")))
        ax.scatter(x, scores, color=color, facecolors="none")
        chosen = t["chosen"].astype(bool).tolist()
        ax.scatter([i for i, c in zip(x, chosen, strict=True) if c],
                   [s for s, c in zip(scores, chosen, strict=True) if c], color=color, s=60)
        ax.set_xticks(x)
        ax.set_xticklabels(t["point"], rotation=70, fontsize="x-small")
        ax.set_yscale("log")
        ax.set_title(name)
    axes[0][0].set_ylabel("validation MSE after 1 step")
    return plotting.save(fig, path)
