"""Figures of the checks: sensitivity bounds against Λ and overlap small multiples."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import make_frame
from matplotlib.colors import to_hex

import hierps
from hierps.balance.overlap import overlap
from hierps.effects.sensitivity import ATT_LABEL, sensitivity
from hierps.exceptions import HierpsWarning
from hierps.plots import COLORS
from hierps.plots.checks import plot_overlap, plot_sensitivity


@pytest.fixture(scope="module")
def fit():
    frame, roles = make_frame(seed=7, sizes=(10, 60), n_groups=7, n_unit=2, n_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **roles).fit_map()


def test_sensitivity_plot_draws_every_target(fit):
    table = sensitivity(fit, Lambda=[1.0, 1.5, 2.0], bootstrap="fixed", n_bootstrap=20)
    label = fit.design.groups[0]
    fig, ax = plot_sensitivity(table, highlight=[label])
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]  # one point per Λ
    att = [line for line in lines if to_hex(line.get_color()) == COLORS["after"].lower()]
    # Two lines (lower, upper) per group, two for the ATT (drawn bold, through its bounds).
    assert len(lines) == 2 * fit.design.n_groups + 2
    assert len(att) == 2
    rows = table[table["target"] == ATT_LABEL]
    np.testing.assert_allclose(
        sorted(line.get_ydata()[-1] for line in att),
        [rows["lower"].iloc[-1], rows["upper"].iloc[-1]],
    )
    assert max(line.get_linewidth() for line in att) > max(
        line.get_linewidth() for line in lines if line not in att
    )
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert f"group {label}" in labels and "ATT bounds" in labels
    with pytest.raises(ValueError, match="highlight"):
        plot_sensitivity(table, highlight=["nope"])
    plt.close("all")


def test_sensitivity_plot_from_a_result_into_given_axes(fit):
    _, ax = plt.subplots()
    _fig, out = plot_sensitivity(fit, ax=ax, Lambda=[1.0, 2.0], bootstrap="fixed", n_bootstrap=10)
    assert out is ax and ax.get_legend() is not None
    plt.close("all")


def test_overlap_plot_has_one_panel_per_group_and_frames_the_flagged(fit):
    ratio = overlap(fit)["ess_ratio"].drop("(all)")
    # Flag the groups below the median ESS ratio, and only them.
    lax = dict(max_outside_share=1.0, max_weight_share=1.0, min_ess=0.0)
    table = overlap(fit, min_ess_ratio=float(ratio.median()), **lax)
    flagged = table["limited_overlap"].drop("(all)")
    assert 0 < flagged.sum() < len(flagged)
    _fig, axes = plot_overlap(fit, table=table)
    visible = [ax for ax in axes.flat if ax.get_visible()]
    assert len(visible) == fit.design.n_groups
    titles = [ax.get_title(loc="left") for ax in visible]
    n_flagged = int(flagged.sum())
    # Flagged groups come first, each with a coloured frame.
    assert set(titles[:n_flagged]) == {str(g) for g in flagged.index[flagged]}
    for ax in visible[:n_flagged]:
        assert ax.spines["top"].get_visible()
        assert to_hex(ax.spines["left"].get_edgecolor()) == COLORS["within"].lower()
    for ax in visible[n_flagged:]:
        assert not ax.spines["top"].get_visible()
    _sub, sub_axes = plot_overlap(fit, table=table, groups=list(fit.design.groups[:2]), ncols=2)
    assert sum(ax.get_visible() for ax in sub_axes.flat) == 2
    with pytest.raises(ValueError, match="groups"):
        plot_overlap(fit, groups=["nope"])
    plt.close("all")
