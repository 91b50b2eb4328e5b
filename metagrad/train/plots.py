"""Figures of meta-training runs (seaborn, one fixed colour per method).

All functions take what ``metagrad.train`` writes (the per-step log, the
summary dict, the prediction table), keyed by method name, so they work the
same on fresh results and on folders read back from disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .. import plotting
from ..methods import METHOD_NAMES

BASELINE = "baseline"
BASELINE_COLOR = (0.25, 0.25, 0.25)


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
    axes[0].set_ylabel("MSE (meta-batch mean)")
    axes[1].legend(loc="upper right", fontsize="small")
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
    axes[0][-1].legend(fontsize="x-small", loc="best")
    return plotting.save(fig, path)
