"""Figures of a hierps analysis, in one matplotlib style.

Every function draws results that were computed before (balance tables, CATT tables, the
pooling-path table); none computes an estimand draw by draw. Each returns ``(fig, ax)`` or
``(fig, axes)`` and accepts ``ax=``/``axes=`` to draw into an existing figure. Sampler
diagnostics are drawn by ArviZ: see :func:`hierps.diagnostics.plot_trace`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from hierps.balance.table import DEFAULT_THRESHOLD, BalanceTable, balance_table
from hierps.calibrated.fit import EXTREME_WEIGHT_SHARE
from hierps.mcmc.diagnosis import idata_of

__all__ = [
    "COLORS",
    "STYLE",
    "plot_catt",
    "plot_love",
    "plot_map_vs_posterior",
    "plot_pooling_path",
    "plot_trace",
    "plot_weights",
    "style",
]

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


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, not {type(ax).__name__}")
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _new_axes_pair(
    axes: Sequence[Axes] | None, figsize: tuple[float, float]
) -> tuple[Figure, np.ndarray]:
    if axes is not None:
        axes = np.asarray(axes, dtype=object).ravel()
        if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
            raise TypeError("axes must be two matplotlib Axes")
        return axes[0].figure, axes
    fig, axes = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    return fig, np.asarray(axes)


def _legend(
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


def _interval_lines(ax: Axes, y: np.ndarray, lower: ArrayLike, upper: ArrayLike, role: str) -> None:
    """Horizontal interval bars, leaving out rows without an interval."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    keep = np.isfinite(lower) & np.isfinite(upper)
    if keep.any():
        ax.hlines(y[keep], lower[keep], upper[keep], color=COLORS[role], alpha=0.55, linewidth=2.5)


def _as_table(result_or_table: Any, threshold: float | None) -> BalanceTable:
    if isinstance(result_or_table, BalanceTable):
        return result_or_table
    return balance_table(result_or_table, threshold=threshold or DEFAULT_THRESHOLD)


# --------------------------------------------------------------------------------------------
# Love plot
# --------------------------------------------------------------------------------------------


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
        A :class:`~hierps.diagnostics.BalanceTable`, or a result to pass to
        :func:`~hierps.diagnostics.balance_table`.
    threshold
        The dashed reference line; default the table's threshold (0.1).
    ax
        Axes to draw into.

    Returns
    -------
    (Figure, Axes)
    """
    table = _as_table(result_or_table, threshold)
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
        fig, ax = _new_axes(ax, (6.4, 2.2 + 0.24 * len(overall)))
        if table.has_intervals:
            _interval_lines(
                ax, y, overall["abs_smd_after_lower"], overall["abs_smd_after_upper"], "after"
            )
            if "max_abs_smd_after_lower" in worst:
                _interval_lines(
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
        _legend(fig, ax, own_figure)
    return fig, ax


# --------------------------------------------------------------------------------------------
# CATT forest
# --------------------------------------------------------------------------------------------


def _effect_tables(result: Any, map_result: Any) -> tuple[Any, pd.DataFrame | None, Any]:
    """The design, the posterior CATT table (or None) and the MAP result (or None)."""
    if hasattr(result, "idata"):
        return result.design, result.catt, map_result
    if map_result is not None:
        raise ValueError(
            "give the posterior result first and the MAP result as map_result=, or a MAP "
            "result alone"
        )
    return result.design, None, result


def _overall_effect(result: Any) -> float:
    att = result.att
    if isinstance(att, pd.DataFrame):
        return float(att["mean"].iloc[0])
    return float(att)


def _by_group(frame: pd.DataFrame, groups: pd.Index, name: str) -> pd.DataFrame:
    """``frame`` on the design's groups, matching labels also when one side holds strings."""
    aligned = frame.reindex(groups)
    if aligned.isna().all().all() and len(frame):
        by_text = frame.set_axis(frame.index.map(str))
        aligned = by_text.reindex(groups.map(str)).set_axis(groups)
    if aligned.isna().all().all() and len(frame):
        raise ValueError(f"{name} has none of the design's groups in its index")
    return aligned


def plot_catt(
    result: Any,
    map_result: Any = None,
    pooled: pd.DataFrame | None = None,
    sort_by: str = "estimate",
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Forest plot of the group effects on the treated.

    Posterior means with their intervals (blue), MAP estimates (orange diamonds) and pooled
    estimates with intervals (green squares) when given; the overall ATT and zero as
    vertical lines. Groups whose CATT cannot be estimated (no controls) keep their row,
    marked "n/a".

    Parameters
    ----------
    result
        A posterior result (its ``catt`` table: ``mean``, ``lower``, ``upper``) or a MAP
        result (its ``catt["estimate"]``).
    map_result
        A MAP result whose estimates to overlay on a posterior result's intervals.
    pooled
        Pooled (shrunken) estimates: a DataFrame indexed by group with ``mean``, ``lower``
        and ``upper``.
    sort_by
        ``"estimate"`` (largest at the top; the posterior mean, else the MAP estimate),
        ``"group"`` (the design's order), or the name of a group covariate (its value, on
        the original scale, is printed next to each group).
    ax
        Axes to draw into.

    Returns
    -------
    (Figure, Axes)
    """
    design, posterior, map_fit = _effect_tables(result, map_result)
    groups = design.groups
    valid = ("estimate", "group", *design.group_names)
    if sort_by not in valid:
        raise ValueError(f"sort_by={sort_by!r} is not one of {', '.join(map(repr, valid))}")
    estimates = pd.DataFrame(index=groups)
    if posterior is not None:
        estimates[["mean", "lower", "upper"]] = _by_group(
            posterior[["mean", "lower", "upper"]], groups, "result.catt"
        )
    if map_fit is not None:
        estimates["map"] = map_fit.catt["estimate"].to_numpy()
    if pooled is not None:
        missing = {"mean", "lower", "upper"} - set(pooled.columns)
        if missing:
            raise ValueError(f"pooled lacks the column(s) {sorted(missing)}")
        aligned = _by_group(pooled[["mean", "lower", "upper"]], groups, "pooled")
        estimates[["pooled", "pooled_lower", "pooled_upper"]] = aligned.to_numpy()

    main = "mean" if posterior is not None else "map"
    labels = [str(group) for group in groups]
    if sort_by == "estimate":
        key = estimates[main].to_numpy(dtype=float)
    elif sort_by == "group":
        key = -np.arange(len(groups), dtype=float)  # design order from the top
    else:
        key = design.group_frame(original_scale=True)[sort_by].to_numpy(dtype=float)
        labels = [
            f"{label}  ({sort_by} {value:.3g})" for label, value in zip(labels, key, strict=True)
        ]
    # Rows from the bottom up: NaN effects at the bottom, then increasing key.
    estimable = np.isfinite(estimates[main].to_numpy(dtype=float))
    order = np.lexsort((key, estimable))
    estimates = estimates.iloc[order]
    labels = [labels[i] + ("" if estimable[i] else "  (n/a)") for i in order]
    y = np.arange(len(groups), dtype=float)
    offset = (
        0.22 if (posterior is not None) + (map_fit is not None) + (pooled is not None) > 1 else 0
    )

    own_figure = ax is None
    with style():
        fig, ax = _new_axes(ax, (6.4, 2.2 + 0.19 * len(groups)))
        ax.axvline(0, color=COLORS["muted"], linewidth=1)
        if posterior is not None:
            ax.hlines(y, estimates["lower"], estimates["upper"], color=COLORS["posterior"])
            ax.scatter(
                estimates["mean"],
                y,
                color=COLORS["posterior"],
                s=18,
                zorder=3,
                label="posterior mean and interval",
            )
            ax.axvline(
                _overall_effect(result),
                color=COLORS["posterior"],
                linestyle="--",
                linewidth=1,
                label="posterior ATT",
            )
        if map_fit is not None:
            ax.scatter(
                estimates["map"],
                y - offset,
                marker="D",
                color=COLORS["map"],
                s=16,
                zorder=4,
                label="MAP estimate",
            )
            ax.axvline(
                _overall_effect(map_fit),
                color=COLORS["map"],
                linestyle=":",
                linewidth=1.2,
                label="MAP ATT",
            )
        if pooled is not None:
            ax.hlines(
                y + offset,
                estimates["pooled_lower"],
                estimates["pooled_upper"],
                color=COLORS["pooled"],
            )
            ax.scatter(
                estimates["pooled"],
                y + offset,
                marker="s",
                color=COLORS["pooled"],
                s=16,
                zorder=3,
                label="pooled",
            )
        ax.set_yticks(y, labels, fontsize=8 if len(groups) <= 40 else 6)
        for tick, ok in zip(ax.get_yticklabels(), estimable[order], strict=True):
            if not ok:
                tick.set_color(COLORS["before"])
        ax.set_ylim(-0.8, len(groups) - 0.2)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("effect on the treated (outcome scale)")
        ax.set_ylabel(design.roles.group)
        sorted_by = "" if sort_by == "group" else f", sorted by {sort_by}"
        ax.set_title(f"Group effects on the treated (CATT){sorted_by}")
        _legend(fig, ax, own_figure)
    return fig, ax


# --------------------------------------------------------------------------------------------
# MAP vs posterior
# --------------------------------------------------------------------------------------------


def plot_map_vs_posterior(
    map_result: Any, posterior_result: Any, axes: Sequence[Axes] | None = None
) -> tuple[Figure, np.ndarray]:
    """The MAP fit against the posterior: control weights, then group effects.

    Left: each control's MAP weight against its posterior-mean weight (log–log; the
    identity dashed). Right: each group's MAP CATT against the posterior mean with its
    interval. Points on the identity line mean the MAP weights already say what the full
    posterior says.

    Parameters
    ----------
    map_result
        A MAP result.
    posterior_result
        A posterior result of the same design.
    axes
        Two Axes to draw into.

    Returns
    -------
    (Figure, numpy.ndarray of two Axes)
    """
    design = map_result.design
    if (
        posterior_result.design.n_units != design.n_units
        or not posterior_result.design.groups.equals(design.groups)
    ):
        raise ValueError("the MAP and posterior results are fits of different designs")
    controls = design.treatment == 0
    map_weights = np.asarray(map_result.weights, dtype=float)[controls]
    post_weights = np.asarray(posterior_result.weights, dtype=float)[controls]
    positive = (map_weights > 0) & (post_weights > 0) & np.isfinite(map_weights * post_weights)

    catt = pd.DataFrame({"map": map_result.catt["estimate"].to_numpy()}, index=design.groups).join(
        posterior_result.catt[["mean", "lower", "upper"]].set_axis(design.groups)
    )
    shown = catt.dropna()

    with style():
        fig, axes = _new_axes_pair(axes, (10.0, 4.6))
        left, right = axes
        x, y = map_weights[positive], post_weights[positive]
        left.scatter(x, y, s=10, alpha=0.6, color=COLORS["posterior"], linewidths=0, zorder=3)
        if len(x):
            low = min(x.min(), y.min())
            high = max(x.max(), y.max())
            left.plot([low, high], [low, high], color=COLORS["reference"], linestyle="--", zorder=2)
            left.set_xscale("log")
            left.set_yscale("log")
        left.set_xlabel("MAP weight")
        left.set_ylabel("posterior-mean weight")
        note = f"{positive.sum():,} controls"
        if (~positive).any():
            note += f" ({(~positive).sum()} non-positive or infinite weights not shown)"
        left.set_title("Control weights")
        left.text(0.02, 0.97, note, transform=left.transAxes, va="top", fontsize=8)

        right.errorbar(
            shown["map"],
            shown["mean"],
            yerr=[shown["mean"] - shown["lower"], shown["upper"] - shown["mean"]],
            fmt="o",
            markersize=4,
            color=COLORS["posterior"],
            ecolor=COLORS["posterior"],
            elinewidth=1,
            alpha=0.85,
        )
        if len(shown):
            values = shown[["map", "lower", "upper"]].to_numpy()
            low, high = np.nanmin(values), np.nanmax(values)
            right.plot(
                [low, high], [low, high], color=COLORS["reference"], linestyle="--", zorder=1
            )
        covered = ((shown["map"] >= shown["lower"]) & (shown["map"] <= shown["upper"])).sum()
        right.set_xlabel("MAP CATT")
        right.set_ylabel("posterior CATT (mean and interval)")
        right.set_title("Group effects on the treated")
        text = f"{len(shown)} groups; MAP inside the interval in {covered}"
        if len(shown) < len(catt):
            text += f"; {len(catt) - len(shown)} not estimable"
        right.text(0.02, 0.97, text, transform=right.transAxes, va="top", fontsize=8)
    return fig, axes


# --------------------------------------------------------------------------------------------
# Pooling path
# --------------------------------------------------------------------------------------------

_PATH_COLUMNS = ("global_max_smd", "within_mean_smd", "within_max_smd", "ess")


def plot_pooling_path(
    path_table: pd.DataFrame,
    chosen: float | None = None,
    threshold: float | None = DEFAULT_THRESHOLD,
    ax: Axes | None = None,
) -> tuple[Figure, tuple[Axes, Axes]]:
    """Balance against effective sample size along the pooling path.

    Left axis (linear below 0.01, logarithmic above): the global max |SMD| and the mean and
    max within-group |SMD| after weighting; right axis: the Kish ESS of the control weights;
    both against ``sigma_beta`` (log scale: small is complete pooling, large no pooling).

    Parameters
    ----------
    path_table
        The table of :func:`hierps.pooling_path` (indexed by ``sigma_beta``).
    chosen
        A ``sigma_beta`` to mark.
    threshold
        |SMD| reference line; ``None`` for none.
    ax
        Axes to draw into (the ESS axis is added as its twin).

    Returns
    -------
    (Figure, (Axes, Axes))
        The figure, the |SMD| axes and the ESS axes.
    """
    missing = [column for column in _PATH_COLUMNS if column not in path_table.columns]
    if missing:
        raise ValueError(
            f"path_table lacks the column(s) {missing}; pass the table of hierps.pooling_path"
        )
    sigma = np.asarray(path_table.index, dtype=float)
    if len(sigma) == 0 or np.any(sigma <= 0):
        raise ValueError("path_table must be indexed by positive sigma_beta values")
    own_figure = ax is None
    with style():
        fig, ax = _new_axes(ax, (6.4, 4.4))
        lines = [
            ax.plot(sigma, path_table["global_max_smd"], "o-", color=COLORS["after"],
                    label="global, max over covariates")[0],
            ax.plot(sigma, path_table["within_max_smd"], "^-", color=COLORS["within"],
                    label="within groups, max")[0],
            ax.plot(sigma, path_table["within_mean_smd"], "^--", color=COLORS["within"],
                    markerfacecolor="none", label="within groups, mean")[0],
        ]  # fmt: skip
        if threshold is not None:
            ax.axhline(threshold, color=COLORS["reference"], linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        # The within-group maximum is often 10-100 times the global one; a log scale above
        # 0.01 (linear below, so that exact balance still shows as 0) keeps every line legible.
        ax.set_yscale("symlog", linthresh=0.01, linscale=0.4)
        largest = np.nanmax(path_table[["global_max_smd", "within_max_smd"]].to_numpy())
        # Headroom above the highest line for the label of the chosen value.
        ax.set_ylim(0, 3 * largest if np.isfinite(largest) and largest > 0 else 1.0)
        ax.set_xlabel(r"$\sigma_\beta$  (← complete pooling · no pooling →)")
        ax.set_ylabel("|SMD| after weighting")
        twin = ax.twinx()
        twin.spines["right"].set_visible(True)
        twin.grid(False)
        lines.append(
            twin.plot(sigma, path_table["ess"], "s:", color=COLORS["ess"], label="ESS (right)")[0]
        )
        twin.set_ylim(bottom=0)
        twin.set_ylabel("effective sample size of the controls", color=COLORS["ess"])
        twin.tick_params(axis="y", colors=COLORS["ess"])
        if chosen is not None:
            ax.axvline(chosen, color=COLORS["reference"], linewidth=1)
            ax.annotate(
                rf"chosen $\sigma_\beta$ = {chosen:.3g}",
                xy=(chosen, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
        ax.set_title("Pooling path: balance against effective sample size")
        _legend(fig, ax, own_figure, ncols=2, handles=lines)
    return fig, (ax, twin)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def plot_weights(
    result_or_table: Any,
    share_threshold: float = EXTREME_WEIGHT_SHARE,
    axes: Sequence[Axes] | None = None,
) -> tuple[Figure, np.ndarray]:
    """How concentrated the control weights are within each group.

    Left: the share of each group's control weight carried by its largest control, groups
    ranked (above the dashed line the group's CATT leans on one control). Right: each
    group's Kish ESS against its number of controls (the dashed line is ESS = number of
    controls, i.e. equal weights), with per-draw intervals for a posterior's table.

    Parameters
    ----------
    result_or_table
        A :class:`~hierps.diagnostics.BalanceTable` or a result for
        :func:`~hierps.diagnostics.balance_table`.
    share_threshold
        Reference share (the 20 % at which MAP fits warn).
    axes
        Two Axes to draw into.

    Returns
    -------
    (Figure, numpy.ndarray of two Axes)
    """
    table = _as_table(result_or_table, None)
    groups = table.ess[table.ess["scope"] == "group"]
    groups = groups[groups["n_control"] > 0]
    overall = table.ess.iloc[0]
    ranked = groups.sort_values("max_weight_share", ascending=False, kind="stable")
    extreme = ranked["max_weight_share"].to_numpy() > share_threshold
    with style():
        fig, axes = _new_axes_pair(axes, (10.0, 4.2))
        left, right = axes
        rank = np.arange(1, len(ranked) + 1)
        colors = np.where(extreme, COLORS["within"], COLORS["after"])
        left.vlines(rank, 0, ranked["max_weight_share"], color=colors, linewidth=1.2)
        left.scatter(rank, ranked["max_weight_share"], color=colors, s=14, zorder=3)
        left.axhline(share_threshold, color=COLORS["reference"], linestyle="--", linewidth=0.8)
        for position, row in zip(rank[extreme][:5], ranked[extreme].itertuples(), strict=False):
            left.annotate(
                str(row.group),
                (position, row.max_weight_share),
                xytext=(3, 2),
                textcoords="offset points",
                fontsize=7,
            )
        left.set_ylim(0, 1.05)
        left.set_xlim(0.3, len(ranked) + 0.7)
        left.set_xlabel("groups, ranked")
        left.set_ylabel("share of the group's control weight\non its largest control")
        left.set_title("Largest single weight per group")

        if "ess_lower" in groups:
            right.vlines(
                groups["n_control"],
                groups["ess_lower"],
                groups["ess_upper"],
                color=COLORS["after"],
                alpha=0.5,
            )
        share = groups["max_weight_share"].to_numpy() > share_threshold
        right.scatter(
            groups["n_control"],
            groups["ess"],
            c=np.where(share, COLORS["within"], COLORS["after"]),
            s=16,
            zorder=3,
        )
        high = max(float(groups["n_control"].max()), 1.0) if len(groups) else 1.0
        right.plot([1, high], [1, high], color=COLORS["reference"], linestyle="--", linewidth=0.8)
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("controls in the group")
        right.set_ylabel("effective sample size (Kish)")
        right.set_title("Effective sample size per group")
        right.text(
            0.02,
            0.97,
            f"all controls: ESS {overall['ess']:,.0f} of {int(overall['n_control']):,}",
            transform=right.transAxes,
            va="top",
            fontsize=8,
        )
    return fig, axes


def plot_trace(
    result: Any,
    var_names: Sequence[str] = ("sigma_alpha", "sigma_beta", "intercept"),
    kind: str = "trace",
) -> tuple[Figure, np.ndarray]:
    """Trace (or rank) plots of the hyperparameters, drawn by ArviZ.

    Parameters
    ----------
    result
        A posterior result (with ``.idata``) or its DataTree.
    var_names
        Posterior variables to show; those not in the posterior (a scale fixed at a number)
        are skipped.
    kind
        ``"trace"``: marginal densities and traces per chain (``arviz.plot_trace_dist``);
        ``"rank"``: fractional-rank ECDF differences per chain (``arviz.plot_rank_dist``).

    Returns
    -------
    (matplotlib.figure.Figure, numpy.ndarray of Axes)
    """
    import arviz as az

    idata = idata_of(result)
    posterior = idata["posterior"]
    present = [name for name in var_names if name in posterior.data_vars]
    if not present:
        raise ValueError(
            f"none of {list(var_names)} is in the posterior (fixed scales are not sampled); "
            f"it has {sorted(map(str, posterior.data_vars))}"
        )
    plotters = {"trace": az.plot_trace_dist, "rank": az.plot_rank_dist}
    if kind not in plotters:
        raise ValueError(f"kind={kind!r} is not one of 'trace', 'rank'")
    collection = plotters[kind](idata, var_names=present, backend="matplotlib")
    figure = collection.viz["figure"].item()
    return figure, np.asarray(figure.axes)
