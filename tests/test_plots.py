"""Figures render, say what they should (one mark per group or covariate), and survive
extreme inputs."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from helpers import fit_quietly, hand_built_posterior, make_frame

import hierps
from hierps.balance.table import balance_table
from hierps.exceptions import HierpsWarning
from hierps.plots import (
    plot_catt,
    plot_love,
    plot_map_vs_posterior,
    plot_pooling_path,
    plot_weights,
)

MINDSETS_ROLES = dict(
    treatment="Z",
    group="schoolid",
    outcome="Y",
    unit_covariates=["S3", "C1", "C2", "C3"],
    group_covariates=["X1", "X2", "X3", "X4", "X5"],
    categorical=["C1"],
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def model_of(frame, roles):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **roles)


@pytest.fixture(scope="module")
def simulated():
    model = model_of(*make_frame(seed=21, sizes=(10, 80), n_groups=9, categorical_levels=3))
    return model, fit_quietly(model, sigma_beta=1.0)


@pytest.fixture(scope="module")
def mindsets():
    model = model_of(hierps.datasets.load_learning_mindsets(), MINDSETS_ROLES)
    return model, fit_quietly(model)


@pytest.fixture(scope="module")
def posterior(simulated):
    _, fit = simulated
    return hand_built_posterior(fit, store_weights=False, chains=2, draws=50, spread=0.15)


def save(fig, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.stat().st_size > 8_000  # a blank figure of this size is ~3 kB


def scatter_counts(ax) -> dict[str, int]:
    """Points drawn by each labelled scatter of an Axes."""
    return {
        c.get_label(): len(c.get_offsets())
        for c in ax.collections
        if not c.get_label().startswith("_") and hasattr(c, "get_offsets")
    }


def y_tick_labels(ax) -> list[str]:
    return [tick.get_text() for tick in ax.get_yticklabels()]


# --------------------------------------------------------------------------------------------
# Love plot
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["simulated", "mindsets"])
def test_love_plot(data, request, tmp_path):
    model, fit = request.getfixturevalue(data)
    fig, ax = plot_love(fit, threshold=0.1)
    save(fig, tmp_path, f"love_{data}")
    design = model.design
    n_covariates = len(design.unit_names) + len(design.group_names)
    counts = scatter_counts(ax)
    assert counts["global, before"] == counts["global, after"] == n_covariates
    assert counts["max over groups, after"] == len(design.unit_names)
    assert len(y_tick_labels(ax)) == n_covariates
    assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] > 0.1
    threshold = [line for line in ax.get_lines() if line.get_label() == "threshold 0.1"]
    assert threshold and threshold[0].get_xdata()[0] == 0.1
    assert not ax.spines["top"].get_visible()  # the hierps style was applied
    # Ordered by imbalance before weighting, the largest at the top.
    before = balance_table(fit).global_.set_index("covariate")["smd_before"].abs()
    top = y_tick_labels(ax)[-1].removesuffix(" (group)")
    assert before[top] == before.max()


def test_love_plot_from_table_into_given_axes(simulated, tmp_path):
    _, fit = simulated
    table = balance_table(fit, threshold=0.05)
    fig, given = plt.subplots()
    out_fig, ax = plot_love(table, ax=given)
    assert ax is given and out_fig is fig
    assert ax.get_legend() is not None
    assert any(line.get_label() == "threshold 0.05" for line in ax.get_lines())
    save(fig, tmp_path, "love_axes")


def test_love_plot_posterior_intervals(posterior, tmp_path):
    fig, ax = plot_love(posterior)
    save(fig, tmp_path, "love_posterior")
    table = balance_table(posterior)
    intervals = [c for c in ax.collections if c.get_label().startswith("_") and c.get_segments()]
    # One interval per covariate (global) plus one per unit covariate (max over groups).
    n = len(table.global_) + len(table.across_groups)
    assert sum(len(c.get_segments()) for c in intervals) == n


# --------------------------------------------------------------------------------------------
# CATT forest
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["simulated", "mindsets"])
def test_catt_forest_map(data, request, tmp_path):
    model, fit = request.getfixturevalue(data)
    fig, ax = plot_catt(fit)
    save(fig, tmp_path, f"catt_{data}")
    n_groups = model.design.n_groups
    assert scatter_counts(ax)["MAP estimate"] == n_groups
    assert len(y_tick_labels(ax)) == n_groups
    # Sorted by estimate: the top row holds the largest CATT.
    positions = ax.collections[0].get_offsets()
    top = positions[np.argmax(positions[:, 1])]
    assert top[0] == pytest.approx(fit.catt["estimate"].max())


def test_catt_forest_sorted_by_group_covariate(mindsets, tmp_path):
    _, fit = mindsets
    fig, ax = plot_catt(fit, sort_by="X1")
    save(fig, tmp_path, "catt_x1")
    labels = y_tick_labels(ax)
    values = [float(label.rsplit("X1 ", 1)[1].rstrip(")")) for label in labels]
    assert values == sorted(values)  # bottom to top
    assert "sorted by X1" in ax.get_title(loc="left")
    with pytest.raises(ValueError, match="sort_by"):
        plot_catt(fit, sort_by="S3")


def test_catt_forest_posterior_map_and_pooled(simulated, posterior, tmp_path):
    _, fit = simulated
    pooled = posterior.catt[["mean", "lower", "upper"]] * 0.5
    fig, ax = plot_catt(posterior, map_result=fit, pooled=pooled)
    save(fig, tmp_path, "catt_posterior")
    counts = scatter_counts(ax)
    n_groups = fit.design.n_groups
    assert counts["posterior mean and interval"] == counts["MAP estimate"] == n_groups
    assert counts["pooled"] == n_groups
    labels = {line.get_label() for line in ax.get_lines()}
    assert {"posterior ATT", "MAP ATT"} <= labels
    with pytest.raises(ValueError, match="pooled lacks"):
        plot_catt(posterior, pooled=pooled.drop(columns="upper"))


# --------------------------------------------------------------------------------------------
# MAP vs posterior, pooling path, weights
# --------------------------------------------------------------------------------------------


def test_map_vs_posterior(simulated, posterior, tmp_path):
    model, fit = simulated
    fig, axes = plot_map_vs_posterior(fit, posterior)
    save(fig, tmp_path, "map_vs_posterior")
    left, right = axes
    n_controls = int((model.design.treatment == 0).sum())
    assert len(left.collections[0].get_offsets()) == n_controls
    assert left.get_xscale() == "log" and left.get_yscale() == "log"
    points = right.lines[0]  # the errorbar markers
    assert len(points.get_xdata()) == model.design.n_groups
    np.testing.assert_allclose(sorted(points.get_xdata()), sorted(fit.catt["estimate"]))
    identity = [line for line in right.lines if line.get_linestyle() == "--"]
    assert identity


def test_pooling_path_plot(mindsets, tmp_path):
    model, _ = mindsets
    grid = [0.1, 1.0, 10.0]
    table = hierps.pooling_path(model, sigma_beta=grid)
    fig, (ax, twin) = plot_pooling_path(table, chosen=1.0)
    save(fig, tmp_path, "pooling_path")
    assert ax.get_xscale() == "log"
    labelled = {line.get_label(): line for line in ax.get_lines() + twin.get_lines()}
    for label in (
        "global, max over covariates",
        "within groups, max",
        "within groups, mean",
        "ESS (right)",
    ):
        assert list(labelled[label].get_xdata()) == grid
    np.testing.assert_allclose(labelled["ESS (right)"].get_ydata(), table["ess"])
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())
    assert twin.get_ylim()[1] >= table["ess"].max()
    with pytest.raises(ValueError, match="lacks"):
        plot_pooling_path(table.drop(columns="ess"))


@pytest.mark.parametrize("data", ["simulated", "mindsets"])
def test_weights_plot(data, request, tmp_path):
    model, fit = request.getfixturevalue(data)
    fig, (left, right) = plot_weights(fit)
    save(fig, tmp_path, f"weights_{data}")
    n_groups = model.design.n_groups
    assert len(left.collections[-1].get_offsets()) == n_groups
    assert len(right.collections[-1].get_offsets()) == n_groups
    shares = left.collections[-1].get_offsets()[:, 1]
    assert np.all(np.diff(shares) <= 0)  # ranked
    np.testing.assert_allclose(
        np.sort(right.collections[-1].get_offsets()[:, 1]), np.sort(fit.group_ess)
    )


def test_weights_plot_posterior_intervals(posterior, tmp_path):
    fig, (_, right) = plot_weights(posterior)
    save(fig, tmp_path, "weights_posterior")
    intervals = [c for c in right.collections if hasattr(c, "get_segments")]
    assert len(intervals[0].get_segments()) == posterior.design.n_groups


# --------------------------------------------------------------------------------------------
# Extreme inputs
# --------------------------------------------------------------------------------------------


def test_group_with_nan_catt(tmp_path):
    frame, roles = make_frame(seed=22, sizes=(10, 40), n_groups=5, n_unit=2, n_group=1)
    frame.loc[frame["school"] == "s003", "z"] = 1  # no controls: CATT NaN
    model = model_of(frame, roles)
    fit = fit_quietly(model)
    assert fit.catt["estimate"].isna().sum() == 1
    fig, ax = plot_catt(fit)
    save(fig, tmp_path, "catt_nan")
    labels = y_tick_labels(ax)
    assert len(labels) == 5 and labels[0] == "s003  (n/a)"  # at the bottom
    assert np.isfinite(ax.get_xlim()).all()
    for name, (fig, _) in {
        "love": plot_love(fit),
        "weights": plot_weights(fit),
    }.items():
        save(fig, tmp_path, f"{name}_nan")
    posterior = hand_built_posterior(fit, chains=2, draws=30)
    fig, axes = plot_map_vs_posterior(fit, posterior)
    save(fig, tmp_path, "map_vs_posterior_nan")
    assert len(axes[1].lines[0].get_xdata()) == 4
    fig, ax = plot_catt(posterior, map_result=fit)
    save(fig, tmp_path, "catt_posterior_nan")


def test_one_huge_weight(simulated, tmp_path):
    model, fit = simulated
    weights = fit.weights.copy()
    control = np.flatnonzero(model.design.treatment == 0)[3]
    weights.iloc[control] = 1e12
    huge = SimpleNamespace(design=model.design, weights=weights)
    fig, ax = plot_love(huge)
    save(fig, tmp_path, "love_huge")
    assert np.isfinite(ax.get_xlim()).all()
    fig, (left, right) = plot_weights(huge)
    save(fig, tmp_path, "weights_huge")
    assert left.collections[-1].get_offsets()[0, 1] == pytest.approx(1.0)
    assert np.isfinite(right.get_ylim()).all()
    catt = fit.catt.assign(mean=fit.catt["estimate"], lower=np.nan, upper=np.nan)
    fake_posterior = SimpleNamespace(design=model.design, weights=weights, catt=catt)
    fig, _ = plot_map_vs_posterior(fit, fake_posterior)
    save(fig, tmp_path, "map_vs_posterior_huge")


def test_single_group(tmp_path):
    frame, roles = make_frame(seed=23, sizes=[120], n_unit=2, n_group=0)
    model = model_of(frame, roles)
    fit = fit_quietly(model)
    assert model.design.n_groups == 1
    posterior = hand_built_posterior(fit, chains=2, draws=30)
    figures = {
        "love": plot_love(fit)[0],
        "catt": plot_catt(posterior, map_result=fit)[0],
        "weights": plot_weights(fit)[0],
        "map_vs_posterior": plot_map_vs_posterior(fit, posterior)[0],
        "path": plot_pooling_path(hierps.pooling_path(model, sigma_beta=[0.1, 1.0]))[0],
    }
    for name, fig in figures.items():
        save(fig, tmp_path, f"single_{name}")
    _, ax = plot_catt(fit)
    assert len(y_tick_labels(ax)) == 1


def test_inputs_are_checked(simulated, posterior):
    _, fit = simulated
    with pytest.raises(TypeError, match="Axes"):
        plot_love(fit, ax="left")
    with pytest.raises(TypeError, match="two"):
        plot_weights(fit, axes=[plt.subplots()[1]])
    with pytest.raises(ValueError, match="map_result"):
        plot_catt(fit, map_result=fit)
    with pytest.raises(ValueError, match="positive"):
        plot_pooling_path(
            pd.DataFrame(
                {c: [1.0] for c in ("global_max_smd", "within_mean_smd", "within_max_smd", "ess")},
                index=[0.0],
            )
        )
