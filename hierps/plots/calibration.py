"""The calibration check of the propensity model: observed against predicted treated share."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hierps.plots.style import COLORS, legend, new_axes, style

__all__ = ["plot_calibration"]


def plot_calibration(
    result: Any, prob: float | None = None, ax: Axes | None = None
) -> tuple[Figure, Axes]:
    """Observed treated share of every group against its posterior predictive interval.

    Groups are sorted by predicted share; each has its posterior predictive mean (dot) and
    equal-tailed interval (bar) of the treated share and the observed share (black mark,
    orange when outside the interval). With a calibrated model about ``1 − prob`` of the
    groups fall outside.

    Parameters
    ----------
    result
        A posterior result with a ``posterior_predictive`` group, its DataTree, or the table
        of :func:`hierps.calibration`.
    prob
        Interval probability (default: the package's ``CI_PROB``); ignored for a table.
    ax
        Axes to draw into.

    Returns
    -------
    (matplotlib.figure.Figure, matplotlib.axes.Axes)
    """
    from hierps.mcmc.conventions import CI_PROB
    from hierps.posterior.checks import calibration

    if isinstance(result, pd.DataFrame):
        table = result
    else:
        table = calibration(result, prob=CI_PROB if prob is None else prob)
    table = table.sort_values("predicted")
    own_figure = ax is None
    with style():
        fig, ax = new_axes(ax, (6.0, max(3.0, 0.13 * len(table) + 1.2)))
        y = np.arange(len(table))
        ax.hlines(
            y,
            table["lower"],
            table["upper"],
            color=COLORS["posterior"],
            alpha=0.55,
            linewidth=2.5,
            label=f"{table.attrs.get('prob', CI_PROB):.0%} posterior predictive interval",
        )
        ax.plot(table["predicted"], y, "o", color=COLORS["posterior"], markersize=3, label=None)
        outside = table["outside"].to_numpy(dtype=bool)
        ax.plot(
            table["observed"][~outside],
            y[~outside],
            "|",
            color="black",
            markersize=8,
            label="observed share",
        )
        if outside.any():
            ax.plot(
                table["observed"][outside],
                y[outside],
                "|",
                color=COLORS["map"],
                markersize=10,
                markeredgewidth=2,
                label="observed, outside the interval",
            )
        ax.set_yticks(y, [str(label) for label in table.index])
        if len(table) > 40:
            ax.tick_params(axis="y", labelsize=5)
        ax.set_xlabel("treated share of the group")
        ax.set_title(
            f"Calibration: {int(outside.sum())} of {len(table)} groups outside their interval"
        )
        legend(fig, ax, own_figure)
    return fig, ax
