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


def save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
