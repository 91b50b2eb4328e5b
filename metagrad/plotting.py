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
    the decades alone; over less, plain numbers at 1, 2 and 5 times powers of ten, and
    within half a decade at every integer multiple (a short range would otherwise show no
    decade, a single label, or labels like "6×10⁰")."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    if lo > 0 and math.log10(hi / lo) < 3:
        subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) >= 0.5 else tuple(map(float, range(1, 10)))
        target.set_major_locator(LogLocator(base=10, subs=subs))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


DPI = 120
FONT_KEY = "metagrad:min_font_px"
"""PNG text chunk holding the smallest font size in the image, in image pixels: what the
documentation's browser check (``scripts/check_docs.py``) scales by the figure's rendered
width to tell whether its text is readable on the page."""


def min_font_px(fig: plt.Figure, dpi: float = DPI) -> float:
    """The smallest font size of any visible, non-empty text in ``fig`` (titles, labels,
    tick labels, legends, annotations), in pixels of the image saved at ``dpi``:
    points × dpi / 72.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure, laid out as it will be saved.
    dpi : float
        Resolution of the saved image.

    Returns
    -------
    float
        The size in pixels (``inf`` for a figure without text).
    """
    from matplotlib.text import Text

    # Tick labels outside the axis limits are not drawn, but share their axis's size.
    sizes = [float(t.get_fontsize()) for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip()]
    return min(sizes, default=float("inf")) * dpi / 72


def save(fig: plt.Figure, path: Path, rect: tuple[float, float, float, float] | None = None
         ) -> Path:
    """Lay out the figure and write it as a PNG that records its smallest font size.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure; it is closed afterwards.
    path : Path
        Where to write the PNG.
    rect : tuple[float, float, float, float], optional
        The part of the figure (left, bottom, right, top, in figure fractions) the axes
        are laid out in, leaving room for a figure legend.

    Returns
    -------
    Path
        ``path``.
    """
    fig.tight_layout(rect=rect)
    path = Path(path)
    record = {FONT_KEY: f"{min_font_px(fig):.1f}"} if path.suffix == ".png" else None
    fig.savefig(path, dpi=DPI, metadata=record)
    plt.close(fig)
    return path
