"""Love plots: covariate balance before and after weighting, globally and per group."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hierps.balance.table import as_balance_table
from hierps.plots.style import COLORS, interval_lines, legend, new_axes, style

__all__ = ["plot_love"]


def plot_love(
    result_or_table: Any, threshold: float | None = None, ax: Axes | None = None
) -> tuple[Figure, Axes]:
    """Love plot: |SMD| per covariate before and after weighting, globally and in the worst
    group.

    Circles show the global |SMD| (open: before, filled: after), triangles the largest
    within-group |SMD| over groups (unit covariates only; group covariates are constant
    within a group). Covariates are ordered by their global imbalance before weighting,
    largest at the top. With a posterior's balance table, lines show the per-draw intervals
    of the global |SMD| and of the within-group maximum.

    Parameters
    ----------
    result_or_table
        A :class:`~hierps.balance.table.BalanceTable`, or a result to pass to
        :func:`~hierps.balance.table.balance_table`.
    threshold
        The dashed reference line; default the table's threshold (0.1).
    ax
        Axes to draw into.

    Returns
    -------
    (Figure, Axes)
    """
    table = as_balance_table(result_or_table, threshold)
    threshold = table.threshold if threshold is None else float(threshold)
    overall = table.global_.copy()
    overall["abs_before"] = overall["smd_before"].abs()
    overall = overall.sort_values("abs_before", kind="stable", na_position="first")
    across = table.across_groups.set_index("covariate")
    y = np.arange(len(overall))
    labels = [
        f"{name} (group)" if level == "group" else str(name)
        for name, level in zip(overall["covariate"], overall["level"], strict=True)
    ]
    worst = across.reindex(overall["covariate"])
    own_figure = ax is None
    with style():
        fig, ax = new_axes(ax, (6.4, 2.2 + 0.24 * len(overall)))
        if table.has_intervals:
            interval_lines(
                ax, y, overall["abs_smd_after_lower"], overall["abs_smd_after_upper"], "after"
            )
            if "max_abs_smd_after_lower" in worst:
                interval_lines(
                    ax,
                    y,
                    worst["max_abs_smd_after_lower"],
                    worst["max_abs_smd_after_upper"],
                    "within",
                )
        series = [
            ("global, before", overall["abs_before"], "o", "none", COLORS["before"]),
            ("global, after", overall["smd_after"].abs(), "o", COLORS["after"], COLORS["after"]),
            ("max over groups, before", worst["max_abs_smd_before"], "^", "none", COLORS["before"]),
            (
                "max over groups, after",
                worst["max_abs_smd_after"],
                "^",
                COLORS["within"],
                COLORS["within"],
            ),
        ]
        for label, values, marker, face, edge in series:
            values = np.asarray(values, dtype=float)
            keep = np.isfinite(values)
            if keep.any():
                ax.scatter(
                    values[keep],
                    y[keep],
                    marker=marker,
                    facecolors=face,
                    edgecolors=edge,
                    linewidths=1.1,
                    s=30,
                    zorder=3,
                    label=label,
                )
        ax.axvline(
            threshold,
            color=COLORS["reference"],
            linestyle="--",
            linewidth=1,
            label=f"threshold {threshold:g}",
        )
        ax.set_yticks(y, labels)
        ax.set_ylim(-0.7, len(overall) - 0.3)
        ax.set_xlim(left=0)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("|standardized mean difference|  (difference / treated SD)")
        ax.set_title(f"Covariate balance of the {table.weights}")
        legend(fig, ax, own_figure)
    return fig, ax
