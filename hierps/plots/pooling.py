"""The pooling path (balance against effective sample size over the slope scale) and the
distribution of the weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hierps.balance.table import DEFAULT_THRESHOLD, as_balance_table
from hierps.calibrated.fit import EXTREME_WEIGHT_SHARE
from hierps.exceptions import ArgumentError
from hierps.plots.style import COLORS, legend, new_axes, new_axes_pair, style

__all__ = ["plot_pooling_path", "plot_weights"]

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
        A ``sigma_beta`` to mark. The empirical-Bayes value of a path traced with
        ``auto=True`` is marked too (dashed).
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
        raise ArgumentError(
            f"path_table lacks the column(s) {missing}; pass the table of hierps.pooling_path"
        )
    sigma = np.asarray(path_table.index, dtype=float)
    if len(sigma) == 0 or np.any(sigma <= 0):
        raise ArgumentError("path_table must be indexed by positive sigma_beta values")
    own_figure = ax is None
    with style():
        fig, ax = new_axes(ax, (6.4, 4.4))
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
        auto = path_table.attrs.get("auto")
        if auto and "sigma_beta" in auto:
            # The empirical-Bayes choice of pooling_path(..., auto=True).
            ax.axvline(auto["sigma_beta"], color=COLORS["map"], linewidth=1, linestyle="--")
            ax.annotate(
                rf"empirical Bayes $\sigma_\beta$ = {auto['sigma_beta']:.3g}",
                xy=(auto["sigma_beta"], 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, 3),
                textcoords="offset points",
                va="bottom",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
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
        legend(fig, ax, own_figure, ncols=2, handles=lines)
    return fig, (ax, twin)


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
        A :class:`~hierps.balance.table.BalanceTable` or a result for
        :func:`~hierps.balance.table.balance_table`.
    share_threshold
        Reference share (the 20 % at which MAP fits warn).
    axes
        Two Axes to draw into.

    Returns
    -------
    (Figure, numpy.ndarray of two Axes)
    """
    table = as_balance_table(result_or_table, None)
    # The reweighted arm: the controls (ATT, ATE) or the treated (ATC).
    arm = table.ess.attrs.get("arm", "control")
    count = "n_treated" if arm == "treated" else "n_control"
    units = "treated" if arm == "treated" else "controls"
    groups = table.ess[table.ess["scope"] == "group"]
    groups = groups[groups[count] > 0]
    overall = table.ess.iloc[0]
    ranked = groups.sort_values("max_weight_share", ascending=False, kind="stable")
    extreme = ranked["max_weight_share"].to_numpy() > share_threshold
    with style():
        fig, axes = new_axes_pair(axes, (10.0, 4.2))
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
        left.set_ylabel(f"share of the group's {arm} weight\non its largest {arm} unit")
        left.set_title("Largest single weight per group")

        if "ess_lower" in groups:
            right.vlines(
                groups[count],
                groups["ess_lower"],
                groups["ess_upper"],
                color=COLORS["after"],
                alpha=0.5,
            )
        share = groups["max_weight_share"].to_numpy() > share_threshold
        right.scatter(
            groups[count],
            groups["ess"],
            c=np.where(share, COLORS["within"], COLORS["after"]),
            s=16,
            zorder=3,
        )
        high = max(float(groups[count].max()), 1.0) if len(groups) else 1.0
        right.plot([1, high], [1, high], color=COLORS["reference"], linestyle="--", linewidth=0.8)
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel(f"{units} in the group")
        right.set_ylabel("effective sample size (Kish)")
        right.set_title("Effective sample size per group")
        right.text(
            0.02,
            0.97,
            f"all {units}: ESS {overall['ess']:,.0f} of {int(overall[count]):,}",
            transform=right.transAxes,
            va="top",
            fontsize=8,
        )
    return fig, axes
