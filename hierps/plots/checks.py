"""Figures of the checks of an analysis: sensitivity bounds against Λ, propensity overlap and
the bias contours of the variance-based sensitivity model.

They draw the tables of :func:`hierps.sensitivity`, :func:`hierps.overlap` and
:func:`hierps.bias_contour` in the style of
the other hierps figures (:func:`hierps.plots.style` and its colours, imported when a figure
is drawn). Each returns ``(fig, ax)`` or ``(fig, axes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_bias_contour", "plot_overlap", "plot_sensitivity"]

#: The Λ grid drawn when :func:`plot_sensitivity` is given a result.
DEFAULT_LAMBDA = (1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)


def _look() -> tuple[Any, dict[str, str]]:
    """The hierps rc context and colours, wherever the plotting package keeps them."""
    from hierps import plots

    return plots.style, plots.COLORS


def plot_sensitivity(
    result_or_table: Any,
    highlight: Sequence[Any] = (),
    ax: Axes | None = None,
    **sensitivity_options: Any,
) -> tuple[Figure, Axes]:
    """Sensitivity bounds of every group's CATT and of the ATT against Λ.

    Thin grey lines are the group bounds (lower and upper), the ATT's bounds are drawn bold
    with their interval as a band; ``highlight`` draws chosen groups in colour.

    Parameters
    ----------
    result_or_table
        A table of :func:`hierps.sensitivity`, or a result to pass to it (with
        ``Lambda=DEFAULT_LAMBDA`` unless given in ``sensitivity_options``).
    highlight
        Group labels to draw in colour, with their interval.
    ax
        Axes to draw into.
    **sensitivity_options
        Passed to :func:`hierps.sensitivity` when a result is given.

    Returns
    -------
    (Figure, Axes)
    """
    from hierps.effects.sensitivity import ATT_LABEL, sensitivity

    if isinstance(result_or_table, pd.DataFrame):
        table = result_or_table
    else:
        sensitivity_options.setdefault("Lambda", DEFAULT_LAMBDA)
        table = sensitivity(result_or_table, **sensitivity_options)
    needed = {"Lambda", "target", "lower", "upper", "ci_lower", "ci_upper"}
    if not needed <= set(table.columns):
        raise ValueError(f"the table lacks the columns {sorted(needed - set(table.columns))}")
    unknown = [label for label in highlight if label not in set(table["target"])]
    if unknown:
        raise ValueError(f"highlight has targets not in the table: {unknown}")
    style, colors = _look()
    own_figure = ax is None
    with style():
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        else:
            fig = ax.figure
        table = table.sort_values("Lambda", kind="stable")
        for target, rows in table.groupby("target", sort=False):
            if target == ATT_LABEL or target in highlight:
                continue
            for column in ("lower", "upper"):
                ax.plot(rows["Lambda"], rows[column], color=colors["muted"], lw=0.6, alpha=0.6)
        palette = [colors[k] for k in ("within", "pooled", "ess", "before")]
        for k, target in enumerate(highlight):
            rows = table[table["target"] == target]
            color = palette[k % len(palette)]
            ax.fill_between(
                rows["Lambda"], rows["ci_lower"], rows["ci_upper"], color=color, alpha=0.12, lw=0
            )
            ax.plot(rows["Lambda"], rows["lower"], color=color, lw=1.3, label=f"group {target}")
            ax.plot(rows["Lambda"], rows["upper"], color=color, lw=1.3)
        att = table[table["target"] == ATT_LABEL]
        if len(att):
            ax.fill_between(
                att["Lambda"],
                att["ci_lower"],
                att["ci_upper"],
                color=colors["after"],
                alpha=0.2,
                lw=0,
                label="ATT interval",
            )
            ax.plot(
                att["Lambda"],
                att["lower"],
                color=colors["after"],
                lw=2.2,
                marker="o",
                ms=3.5,
                label="ATT bounds",
            )
            ax.plot(att["Lambda"], att["upper"], color=colors["after"], lw=2.2, marker="o", ms=3.5)
        ax.plot([], [], color=colors["muted"], lw=0.8, label="group CATT bounds")
        ax.axhline(0, color=colors["reference"], lw=0.9, ls="--")
        ax.set_xlabel("Λ  (largest factor between a control's true and fitted odds)")
        ax.set_ylabel("effect on the treated")
        ax.set_title("Sensitivity to unmeasured confounding")
        if own_figure:
            fig.legend(loc="outside lower center", ncols=3)
        else:
            ax.legend(loc="best")
    return fig, ax


def plot_overlap(
    result: Any,
    table: pd.DataFrame | None = None,
    groups: Sequence[Any] | None = None,
    ncols: int | None = None,
    bins: int = 20,
    flagged_first: bool = True,
) -> tuple[Figure, np.ndarray]:
    """Propensities of each arm in every group, as small multiples of mirrored histograms.

    Treated above the axis, controls below (densities, so that groups of any size read
    alike), on one propensity scale for all panels (the central 99 % of all propensities;
    the rest are counted in the end bins); groups flagged by :func:`hierps.overlap`
    get a coloured frame and title and, by default, come first.

    Parameters
    ----------
    result
        A MAP or posterior result (posterior-mean propensities for a posterior).
    table
        The table of :func:`hierps.overlap` for this result (computed with its default
        thresholds when omitted).
    groups
        Labels of the groups to draw (default all).
    ncols
        Panels per row (default about 1.6 times as many columns as rows).
    bins
        Histogram bins over the common propensity range.
    flagged_first
        Draw the flagged groups first.

    Returns
    -------
    (Figure, numpy.ndarray of Axes)
    """
    from scipy.special import expit

    from hierps.balance.overlap import ALL_GROUPS, linear_predictor, overlap

    if table is None:
        table = overlap(result)
    design = result.design
    propensity = expit(linear_predictor(result)).mean(axis=0)
    labels = list(design.groups) if groups is None else list(groups)
    missing = [label for label in labels if label not in design.groups]
    if missing:
        raise ValueError(f"groups has labels that are not groups of the design: {missing}")
    if not labels:
        raise ValueError("groups is empty: nothing to draw")
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 2:
        raise ValueError(f"bins must be an integer of at least 2, not {bins!r}")
    flagged = table["limited_overlap"].drop(ALL_GROUPS, errors="ignore")
    if flagged_first:
        labels = sorted(labels, key=lambda label: not bool(flagged.get(label, False)))
    n = len(labels)
    if ncols is None:
        ncols = max(1, int(np.ceil(np.sqrt(1.6 * n))))
    nrows = int(np.ceil(n / ncols))
    # One scale for every panel, over the central 99 % of all propensities: a few extreme
    # units would otherwise squeeze every histogram into a sliver; they go to the end bins.
    low, high = np.nanquantile(propensity, [0.005, 0.995])
    pad = 0.02 * (high - low) or 0.01
    edges = np.linspace(max(0.0, low - pad), min(1.0, high + pad), bins + 1)
    shown = np.clip(propensity, edges[0], edges[-1])
    code_of = {label: j for j, label in enumerate(design.groups)}
    style, colors = _look()
    with style():
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(1.15 * ncols + 0.6, 0.95 * nrows + 0.9),
            sharex=True,
            squeeze=False,
            layout="constrained",
        )
        for ax, label in zip(axes.flat, labels, strict=False):
            members = design.group_codes == code_of[label]
            for arm, sign, color in ((1, 1.0, colors["after"]), (0, -1.0, colors["before"])):
                values = shown[members & (design.treatment == arm)]
                if len(values):
                    density, _ = np.histogram(values, bins=edges, density=True)
                    ax.stairs(sign * density, edges, fill=True, color=color, alpha=0.8)
            ax.axhline(0, color=colors["reference"], lw=0.4)
            ax.set_yticks([])
            ax.grid(False)
            is_flagged = bool(flagged.get(label, False))
            title_color = colors["within"] if is_flagged else colors["reference"]
            ax.set_title(f"{label}", fontsize=7, color=title_color, loc="left", pad=2)
            if is_flagged:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(colors["within"])
                    spine.set_linewidth(1.2)
            ax.tick_params(labelsize=6)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        n_flagged = int(sum(bool(flagged.get(label, False)) for label in labels))
        fig.suptitle(
            f"Propensity by arm within each group (treated above, controls below); "
            f"{n_flagged} of {n} groups flagged for limited overlap (framed)",
            fontsize=9,
            x=0.01,
            ha="left",
        )
        fig.supxlabel(
            "propensity score (values beyond the central 99 % of all units in the end bins)",
            fontsize=8,
        )
    return fig, axes


def plot_bias_contour(
    result_or_table: Any,
    benchmarks: pd.DataFrame | None = None,
    threshold: float = 0.0,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Adjusted ATT over the (R², ρ) plane of the variance-based sensitivity model.

    Contours of ``estimate − bias`` (math §18), the contour at ``threshold`` drawn bold and the
    region beyond it shaded (confounders that would explain the estimate away); benchmark
    covariates (:func:`hierps.benchmark_r2`) are labelled points.

    Parameters
    ----------
    result_or_table
        A table of :func:`hierps.bias_contour`, or a result to pass to it.
    benchmarks
        A table of :func:`hierps.benchmark_r2` to mark.
    threshold
        The adjusted value drawn bold (0: the effect explained away).
    ax
        Axes to draw into.

    Returns
    -------
    (Figure, Axes)
    """
    from hierps.effects.sensitivity_r2 import bias_contour

    table = (
        result_or_table
        if isinstance(result_or_table, pd.DataFrame)
        else bias_contour(result_or_table)
    )
    missing = {"r2", "rho", "adjusted"} - set(table.columns)
    if missing:
        raise ValueError(f"result_or_table lacks the columns {sorted(missing)} of bias_contour")
    grid = table.pivot_table(index="rho", columns="r2", values="adjusted")
    r2, rho = grid.columns.to_numpy(float), grid.index.to_numpy(float)
    values = grid.to_numpy(float)
    estimate = table.attrs.get("estimate")
    style, colors = _look()
    own = ax is None
    with style():
        if own:
            fig, ax = plt.subplots(figsize=(6.0, 4.6), layout="constrained")
        else:
            fig = ax.figure
        positive = estimate is None or estimate >= threshold
        low, high = np.nanmin(values), np.nanmax(values)
        beyond = (low, threshold) if positive else (threshold, high)
        if beyond[0] < beyond[1]:
            ax.contourf(r2, rho, values, levels=list(beyond), colors=[colors["within"]], alpha=0.15)
        lines = ax.contour(r2, rho, values, levels=9, colors=colors["muted"], linewidths=0.8)
        ax.clabel(lines, fontsize=7, fmt="%.2g")
        if low < threshold < high:
            ax.contour(r2, rho, values, levels=[threshold], colors=[colors["within"]], linewidths=2)
        if benchmarks is not None and len(benchmarks):
            ax.scatter(benchmarks["r2"], benchmarks["rho"], color=colors["after"], s=22, zorder=3)
            for name, row in benchmarks.iterrows():
                ax.annotate(
                    str(name),
                    (row["r2"], row["rho"]),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=7,
                    color=colors["after"],
                )
        ax.set_xlim(r2.min(), r2.max())
        ax.set_ylim(rho.min(), rho.max())
        ax.set_xlabel("R²: share of the ideal weights' variance the weight error explains")
        ax.set_ylabel("ρ: correlation of the weight error with the outcome")
        title = "Adjusted ATT under an omitted confounder"
        if estimate is not None:
            title += f" (estimate {estimate:.3g}; bold: {threshold:g})"
        ax.set_title(title)
    return fig, ax
