"""Effect figures: the CATT forest plot and MAP against posterior, school by school."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from hierps.exceptions import ArgumentError
from hierps.plots.style import COLORS, legend, new_axes, new_axes_pair, style

__all__ = ["plot_catt", "plot_map_vs_posterior"]


#: Overall and group effect names and the population of each estimand, for labels.
_LABELS = {
    "att": ("ATT", "CATT", "on the treated"),
    "atc": ("ATC", "CATC", "on the controls"),
    "ate": ("ATE", "CATE", "on everyone"),
}


def _effect_tables(result: Any, map_result: Any) -> tuple[Any, pd.DataFrame | None, Any]:
    """The design, the posterior CATT table (or None) and the MAP result (or None)."""
    if hasattr(result, "idata"):
        return result.design, _group_effects(result), map_result
    if map_result is not None:
        raise ArgumentError(
            "give the posterior result first and the MAP result as map_result=, or a MAP "
            "result alone"
        )
    return result.design, None, result


def _group_effects(result: Any) -> pd.DataFrame:
    """The group-effect table of any estimand (``.catt`` of results that predate the others)."""
    table = getattr(result, "group_effects", None)
    return result.catt if table is None else table


def _overall_effect(result: Any) -> float:
    att = result.overall_effect if hasattr(result, "overall_effect") else result.att
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
        raise ArgumentError(f"{name} has none of the design's groups in its index")
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
    estimand = str(getattr(result, "estimand", "att"))
    overall_name, group_name, population = _LABELS[estimand]
    groups = design.groups
    valid = ("estimate", "group", *design.group_names)
    if sort_by not in valid:
        raise ArgumentError(f"sort_by={sort_by!r} is not one of {', '.join(map(repr, valid))}")
    estimates = pd.DataFrame(index=groups)
    if posterior is not None:
        estimates[["mean", "lower", "upper"]] = _by_group(
            posterior[["mean", "lower", "upper"]], groups, "result.catt"
        )
    if map_fit is not None:
        estimates["map"] = _group_effects(map_fit)["estimate"].to_numpy()
    if pooled is not None:
        missing = {"mean", "lower", "upper"} - set(pooled.columns)
        if missing:
            raise ArgumentError(f"pooled lacks the column(s) {sorted(missing)}")
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
        fig, ax = new_axes(ax, (6.4, 2.2 + 0.19 * len(groups)))
        ax.axvline(0, color=COLORS["muted"], linewidth=1)
        if posterior is not None:
            ax.hlines(y, estimates["lower"], estimates["upper"], color=COLORS["posterior"])
            _estimates_and_overall(
                ax,
                (estimates["mean"], y, _overall_effect(result)),
                "posterior",
                marker=("o", 18, 3, "posterior mean and interval"),
                line=("--", 1.0, f"posterior {overall_name}"),
            )
        if map_fit is not None:
            _estimates_and_overall(
                ax,
                (estimates["map"], y - offset, _overall_effect(map_fit)),
                "map",
                marker=("D", 16, 4, "MAP estimate"),
                line=(":", 1.2, f"MAP {overall_name}"),
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
        ax.set_xlabel(f"effect {population} (outcome scale)")
        ax.set_ylabel(design.roles.group)
        sorted_by = "" if sort_by == "group" else f", sorted by {sort_by}"
        ax.set_title(f"Group effects {population} ({group_name}){sorted_by}")
        legend(fig, ax, own_figure)
    return fig, ax


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
        raise ArgumentError("the MAP and posterior results are fits of different designs")
    controls = design.treatment == 0
    map_weights = np.asarray(map_result.weights, dtype=float)[controls]
    post_weights = np.asarray(posterior_result.weights, dtype=float)[controls]
    positive = (map_weights > 0) & (post_weights > 0) & np.isfinite(map_weights * post_weights)

    catt = pd.DataFrame(
        {"map": _group_effects(map_result)["estimate"].to_numpy()}, index=design.groups
    ).join(_group_effects(posterior_result)[["mean", "lower", "upper"]].set_axis(design.groups))
    shown = catt.dropna()

    with style():
        fig, axes = new_axes_pair(axes, (10.0, 4.6))
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


def _estimates_and_overall(
    ax: Axes,
    values: tuple[ArrayLike, np.ndarray, float],
    role: str,
    marker: tuple[str, float, int, str],
    line: tuple[str, float, str],
) -> None:
    """Group estimates as markers and the overall effect as a vertical line, in one role's
    colour: ``values`` is (estimates, positions, overall), ``marker`` (shape, size, z-order,
    label), ``line`` (style, width, label)."""
    estimates, positions, overall = values
    shape, size, zorder, label = marker
    ax.scatter(
        estimates, positions, marker=shape, color=COLORS[role], s=size, zorder=zorder, label=label
    )
    linestyle, linewidth, line_label = line
    ax.axvline(
        overall, color=COLORS[role], linestyle=linestyle, linewidth=linewidth, label=line_label
    )
