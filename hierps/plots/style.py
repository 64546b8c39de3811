"""The one matplotlib style of hierps' figures: colours by role, rc settings, axes helpers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from hierps.exceptions import ArgumentTypeError

__all__ = ["COLORS", "STYLE", "interval_lines", "legend", "new_axes", "new_axes_pair", "style"]

#: One colour per role, from the Okabe–Ito palette (readable with colour-vision deficiency).
COLORS = {
    "before": "#8C8C8C",
    "after": "#0072B2",
    "within": "#D55E00",
    "posterior": "#0072B2",
    "map": "#D55E00",
    "pooled": "#009E73",
    "ess": "#CC79A7",
    "reference": "#4D4D4D",
    "muted": "#B3B3B3",
}

#: The rc settings every hierps figure is drawn under.
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.6,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 5,
}


@contextmanager
def style() -> Iterator[None]:
    """The rc context of hierps figures; use it to draw your own panels in the same style."""
    with mpl.rc_context(STYLE):
        yield


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise ArgumentTypeError(f"ax must be a matplotlib Axes, not {type(ax).__name__}")
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def new_axes_pair(
    axes: Sequence[Axes] | None, figsize: tuple[float, float]
) -> tuple[Figure, np.ndarray]:
    if axes is not None:
        axes = np.asarray(axes, dtype=object).ravel()
        if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
            raise ArgumentTypeError("axes must be two matplotlib Axes")
        return axes[0].figure, axes
    fig, axes = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    return fig, np.asarray(axes)


def legend(
    fig: Figure,
    ax: Axes,
    own_figure: bool,
    ncols: int = 3,
    handles: Sequence[Artist] | None = None,
) -> None:
    """Below the plot when the figure is ours (never over the data); inside the axes when
    drawing into someone else's figure, whose layout is theirs."""
    handles = ax.get_legend_handles_labels()[0] if handles is None else handles
    labels = [handle.get_label() for handle in handles]
    if own_figure:
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols)
    else:
        ax.legend(handles, labels, loc="best")


def interval_lines(ax: Axes, y: np.ndarray, lower: ArrayLike, upper: ArrayLike, role: str) -> None:
    """Horizontal interval bars, leaving out rows without an interval."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    keep = np.isfinite(lower) & np.isfinite(upper)
    if keep.any():
        ax.hlines(y[keep], lower[keep], upper[keep], color=COLORS[role], alpha=0.55, linewidth=2.5)
