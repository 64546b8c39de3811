"""Love plots: covariate balance before and after weighting, globally and per group; one
weighting, or several compared with a marker each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hierps.balance.table import as_balance_table
from hierps.balance.weightings import BalanceComparison, compare_balance
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

    Several weightings — a dict of label → weighting as
    :func:`~hierps.balance.table.balance_table` takes it, or its
    :class:`~hierps.balance.weightings.BalanceComparison` — share one plot, one colour and
    marker per weighting: filled for the global |SMD|, open for the largest within-group |SMD|.

    Parameters
    ----------
    result_or_table
        A :class:`~hierps.balance.table.BalanceTable`, or a result to pass to
        :func:`~hierps.balance.table.balance_table`; or several weightings (a dict or a
        ``BalanceComparison``).
    threshold
        The dashed reference line; default the table's threshold (0.1).
    ax
        Axes to draw into.

    Returns
    -------
    (Figure, Axes)
    """
    if isinstance(result_or_table, Mapping | BalanceComparison):
        return _plot_comparison(result_or_table, threshold, ax)
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
            _points(ax, values, y, marker, face, edge, size=30, label=label)
        _finish_love_axes(ax, threshold, y, labels)
        ax.set_title(f"Covariate balance of the {table.weights}")
        legend(fig, ax, own_figure)
    return fig, ax


def _points(
    ax: Axes,
    values: Any,
    y: np.ndarray,
    marker: str,
    face: str,
    edge: str,
    size: float,
    label: str | None = None,
) -> None:
    """One marker per covariate at (|SMD|, row); covariates without a value are left out."""
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
            s=size,
            zorder=3,
            label=label,
        )


#: Markers and colours of compared weightings, in order (Okabe–Ito, then repeating).
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">")
_PALETTE = ("#8C8C8C", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def _plot_comparison(
    weightings: Mapping[str, Any] | BalanceComparison,
    threshold: float | None,
    ax: Axes | None,
) -> tuple[Figure, Axes]:
    comparison = (
        weightings
        if isinstance(weightings, BalanceComparison)
        else compare_balance(weightings, **({} if threshold is None else {"threshold": threshold}))
    )
    threshold = comparison.threshold if threshold is None else float(threshold)
    smd = comparison.wide("smd_after").abs()
    worst = comparison.wide("max_abs_smd_after", scope="across_groups").reindex(smd.index)
    first = comparison.tables[comparison.weightings[0]].global_.set_index("covariate")
    # Ordered by the first weighting's imbalance (the unweighted sample when given first).
    order = smd.iloc[:, 0].sort_values(kind="stable", na_position="first").index
    smd, worst = smd.loc[order], worst.reindex(order)
    y = np.arange(len(order))
    labels = [
        f"{name} (group)" if first.at[name, "level"] == "group" else str(name) for name in order
    ]
    n = len(comparison.weightings)
    offsets = (np.arange(n) - (n - 1) / 2) * min(0.5 / max(n - 1, 1), 0.15)
    own_figure = ax is None
    with style():
        fig, ax = new_axes(ax, (6.4, 2.2 + 0.3 * len(order)))
        handles = []
        for k, label in enumerate(comparison.weightings):
            color, marker = _PALETTE[k % len(_PALETTE)], _MARKERS[k % len(_MARKERS)]
            for values, face in ((smd[label], color), (worst[label], "none")):
                _points(ax, values, y + offsets[k], marker, face, color, size=28)
            handles.append(
                Line2D([], [], marker=marker, color=color, linestyle="none", label=label)
            )
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                markerfacecolor="none",
                markeredgecolor=COLORS["reference"],
                linestyle="none",
                label="open: max over groups",
            )
        )
        handles.append(_finish_love_axes(ax, threshold, y, labels))
        ax.set_title("Covariate balance by weighting (filled: global)")
        legend(fig, ax, own_figure, ncols=min(4, len(handles)), handles=handles)
    return fig, ax


def _finish_love_axes(ax: Axes, threshold: float, y: np.ndarray, labels: Sequence[str]) -> Artist:
    """The threshold line, covariate labels and |SMD| axis every love plot shares; returns the
    threshold line (for a legend built by hand)."""
    line = ax.axvline(
        threshold,
        color=COLORS["reference"],
        linestyle="--",
        linewidth=1,
        label=f"threshold {threshold:g}",
    )
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlim(left=0)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("|standardized mean difference|  (difference / treated SD)")
    return line
