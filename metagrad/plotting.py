"""Shared figure helpers (seaborn on a headless matplotlib backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .methods import METHOD_NAMES  # noqa: E402


def setup() -> None:
    sns.set_theme(context="notebook", style="whitegrid")


def palette() -> dict[str, tuple[float, float, float]]:
    """One fixed colour per method, the same in every figure."""
    colors = sns.color_palette("colorblind", len(METHOD_NAMES))
    return dict(zip(METHOD_NAMES, colors))


def value_ticks(ax: plt.Axes, values, axis: str = "x", most: int = 8) -> None:
    """Label the axis at the values that were run (K = 1, 2, 5, 20, ...) in plain numbers,
    instead of log-scale decades that may fall outside them; with more than ``most``
    values, plain labels at matplotlib's own positions."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    ticks = sorted({float(v) for v in values if v == v})  # NaN is not a setting
    if 0 < len(ticks) <= most:
        target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def plain_log_labels(ax: plt.Axes, axis: str = "y") -> None:
    """Readable labels on a log axis (call after plotting): over three decades or more,
    the decades alone; over less, plain numbers at 1, 2 and 5 times powers of ten (a
    short range would otherwise show no decade, or labels like "6×10⁰")."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    if lo > 0 and math.log10(hi / lo) < 3:
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def save(fig: plt.Figure, path: Path, rect: tuple[float, float, float, float] | None = None
         ) -> Path:
    """Lay out (within ``rect`` of the figure, leaving room for a figure legend) and write."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
