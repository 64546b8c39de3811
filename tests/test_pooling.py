"""Pooling group CATTs: shrinkage, moderators, left-out groups, the MAP standard errors."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import make_frame, quietly

import hierps
from hierps.effects.catt_pooling import map_standard_errors, pool_catt, pooling_inputs
from hierps.exceptions import DataError, HierpsWarning
from hierps.mcmc.summary import SUMMARY_COLUMNS

MODERATOR = 0.8  # θ_j = 1 + 0.8 v1_j + 0 v2_j + 0.3 z_j


@pytest.fixture(scope="module")
def pooled():
    """Forty groups with known standard errors; g03 has no estimate and g07 a zero se."""
    rng = np.random.default_rng(2024)
    n_groups = 40
    groups = pd.Index([f"g{j:02d}" for j in range(n_groups)], name="school")
    covariates = pd.DataFrame(
        {"v1": rng.normal(2.0, 1.5, n_groups), "v2": rng.normal(size=n_groups)}, index=groups
    )
    theta = 1.0 + MODERATOR * covariates["v1"] + 0.3 * rng.normal(size=n_groups)
    se = rng.uniform(0.3, 0.9, n_groups)
    table = pd.DataFrame({"estimate": theta + se * rng.normal(size=n_groups), "se": se})
    table.loc["g03", "estimate"] = np.nan
    table.loc["g07", "se"] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pool_catt(
            table, covariates, draws=1000, tune=1000, random_seed=7, progressbar=False
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, HierpsWarning)]
    return result, table, messages


@pytest.mark.slow
def test_groups_without_an_estimate_or_se_are_left_out_with_a_warning(pooled):
    result, table, messages = pooled
    assert any("'g03'" in m and "no CATT estimate" in m for m in messages)
    assert any("'g07'" in m and "standard error" in m for m in messages)
    assert list(result.catt.index) == list(table.index)
    left_out = result.catt.loc[["g03", "g07"], ["mean", "sd", "lower", "upper", "fitted"]]
    assert left_out.isna().all().all()
    kept = result.catt.drop(index=["g03", "g07"])
    assert kept[["mean", "sd", "lower", "upper", "fitted"]].notna().all().all()
    assert result.idata["posterior"].sizes["group"] == 38
    pd.testing.assert_frame_equal(result.catt[["estimate", "se"]], table)


@pytest.mark.slow
def test_pooled_effects_shrink_toward_the_regression_line(pooled):
    result, _, _ = pooled
    catt = result.catt.dropna(subset=["mean"])
    shrunk = np.abs(catt["mean"] - catt["fitted"])
    raw = np.abs(catt["estimate"] - catt["fitted"])
    assert (shrunk < raw).all()
    assert ((catt["lower"] < catt["mean"]) & (catt["mean"] < catt["upper"])).all()
    # Shrinkage grows with the standard error: noisier groups move further.
    moved = 1 - shrunk / raw
    assert np.corrcoef(moved, catt["se"])[0, 1] > 0.5


@pytest.mark.slow
def test_moderator_intervals_cover_the_truth(pooled):
    result, _, _ = pooled
    moderators = result.moderators
    assert list(moderators.index) == ["mu_tau", "sigma_tau", "v1", "v2"]
    assert list(moderators.columns) == list(SUMMARY_COLUMNS)
    # φ is per standard deviation of the covariate across the pooled groups.
    truth = MODERATOR * result.covariate_scaling.loc["v1", "scale"]
    assert moderators.loc["v1", "lower"] < truth < moderators.loc["v1", "upper"]
    # v2 does not moderate; a 90 % interval misses a null one time in ten, so allow 3 sd.
    assert abs(moderators.loc["v2", "mean"]) < 3 * moderators.loc["v2", "sd"]
    assert moderators.loc["v1", "lower"] > 0
    assert (moderators["r_hat"] < 1.01).all()
    assert result.ci_prob == 0.9


def test_map_standard_errors_by_hand():
    frame, roles = make_frame(seed=4, sizes=(8, 40), n_groups=5, n_unit=2, n_group=1)
    # Group s002 keeps a single treated unit: its treated variance is the pooled one.
    rows = np.flatnonzero(frame["school"] == "s002")
    frame.loc[frame.index[rows[1:]], "z"] = 0
    frame.loc[frame.index[rows[0]], "z"] = 1
    model = hierps.Model(frame, **roles)
    fit = quietly(model.fit_map, sigma_beta=0.5)
    se = map_standard_errors(fit)

    d, w = model.design, fit.weights.to_numpy()
    treated = d.treatment == 1

    def hand(j, treated_variance=None):
        t, c = (d.group_codes == j) & treated, (d.group_codes == j) & ~treated
        y_t, y_c, w_c = d.outcome[t], d.outcome[c], w[c]
        if treated_variance is None:
            treated_variance = y_t.var(ddof=1)
        control_mean = np.sum(w_c * y_c) / w_c.sum()
        control = np.sum(w_c**2 * (y_c - control_mean) ** 2) / w_c.sum() ** 2
        return np.sqrt(treated_variance / t.sum() + control)

    assert se["s000"] == pytest.approx(hand(0), rel=1e-12)
    others = [j for j in range(d.n_groups) if j != 2]
    squares = sum(
        np.sum(
            (
                d.outcome[(d.group_codes == j) & treated]
                - d.outcome[(d.group_codes == j) & treated].mean()
            )
            ** 2
        )
        for j in others
    )
    dof = sum(int(np.sum((d.group_codes == j) & treated)) - 1 for j in others)
    assert se["s002"] == pytest.approx(hand(2, squares / dof), rel=1e-12)

    table, covariates = pooling_inputs(fit, ["v1"])
    np.testing.assert_allclose(table["estimate"], fit.catt["estimate"])
    np.testing.assert_allclose(table["se"], se)
    np.testing.assert_allclose(covariates["v1"], frame.groupby("school")["v1"].first())


def test_inputs_from_a_posterior_result_and_categorical_covariates():
    frame, roles = make_frame(seed=6, sizes=(8, 20), n_groups=6, n_unit=1, n_group=1)
    frame["region"] = frame["school"].map(
        dict(zip(sorted(frame["school"].unique()), "aabbcc", strict=True))
    )
    roles["group_covariates"] = ["v1", "region"]
    model = hierps.Model(frame, **roles)
    catt = pd.DataFrame(
        {"mean": np.arange(6.0), "sd": np.full(6, 0.5), "n_treated": 3}, index=model.design.groups
    )
    posterior = SimpleNamespace(design=model.design, catt=catt)
    table, covariates = pooling_inputs(posterior, ["region", "v1"])
    np.testing.assert_allclose(table["estimate"], np.arange(6.0))
    np.testing.assert_allclose(table["se"], 0.5)
    assert list(covariates.columns) == ["region[a]", "region[b]", "region[c]", "v1"]
    np.testing.assert_allclose(covariates["region[b]"], [0, 0, 1, 1, 0, 0])
    _, encoded = pooling_inputs(posterior, ["region[c]"])
    assert list(encoded.columns) == ["region[c]"]
    _, none = pooling_inputs(posterior, None)
    assert none.shape == (6, 0)


def test_bad_inputs_are_named(small_study):
    frame, roles = small_study
    fit = quietly(hierps.Model(frame, **roles).fit_map)
    with pytest.raises(DataError, match=r"'V1' is not a group covariate.*did you mean 'v1'"):
        pooling_inputs(fit, ["V1"])
    with pytest.raises(TypeError, match=r"write \['v1'\]"):
        pooling_inputs(fit, "v1")
    estimates = pd.DataFrame({"estimate": [1.0, 2.0], "se": [0.5, 0.5]}, index=["a", "b"])
    with pytest.raises(TypeError, match="as a DataFrame by group"):
        pooling_inputs(estimates, ["v1"])
    with pytest.raises(DataError, match="no row for group"):
        pooling_inputs(estimates, pd.DataFrame({"v": [1.0]}, index=["a"]))
    with pytest.raises(DataError, match="must be numeric"):
        pooling_inputs(estimates, pd.DataFrame({"v": ["x", "y"]}, index=["a", "b"]))
    with pytest.raises(DataError, match="lacks 'se'"):
        pooling_inputs(estimates[["estimate"]], None)
    with pytest.raises(TypeError, match="not ndarray"):
        pooling_inputs(np.zeros(3), None)
    with pytest.raises(DataError, match="at least two groups"):
        quietly(pool_catt, estimates.assign(se=[0.5, np.nan]))
    with pytest.raises(ValueError, match="sampler='blackjax'"):
        pool_catt(estimates, sampler="blackjax")


@pytest.mark.slow
def test_pooling_a_map_fit_without_moderators(small_study):
    frame, roles = small_study
    fit = quietly(hierps.Model(frame, **roles).fit_map)
    result = quietly(
        pool_catt, fit, draws=200, tune=200, random_seed=1, sampler="pymc", progressbar=False
    )
    assert list(result.moderators.index) == ["mu_tau", "sigma_tau"]
    np.testing.assert_allclose(result.catt["se"], map_standard_errors(fit))
    assert result.catt["mean"].notna().all()
    # Without moderators the regression line is μ_τ in every group.
    np.testing.assert_allclose(result.catt["fitted"], result.moderators.loc["mu_tau", "mean"])
