"""Sensitivity bounds under the marginal sensitivity model: the sorted-threshold algorithm
against a linear program and brute force, the invariants of the bounds, and their intervals."""

from __future__ import annotations

import itertools
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import hand_built_posterior, make_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import hierps
from hierps.effects.catt_pooling import map_standard_errors
from hierps.effects.sensitivity import (
    ATT_LABEL,
    control_mean_bounds,
    robustness_value,
    sensitivity,
)
from hierps.exceptions import HierpsWarning


def lp_bounds(y: np.ndarray, w: np.ndarray, lam: float) -> tuple[float, float]:
    """The extreme ratio Σ v y / Σ v over w/Λ ≤ v ≤ wΛ by the Charnes–Cooper transform.

    With t = 1 / Σ v and z = v t: optimize Σ z y subject to Σ z = 1, (w/Λ) t ≤ z ≤ wΛ t, t ≥ 0.
    """
    n = len(y)
    a_ub = np.zeros((2 * n, n + 1))
    a_ub[:n, :n] = -np.eye(n)
    a_ub[:n, n] = w / lam  # -z + (w/Λ) t <= 0
    a_ub[n:, :n] = np.eye(n)
    a_ub[n:, n] = -w * lam  # z - wΛ t <= 0
    a_eq = np.r_[np.ones(n), 0.0][None]
    out = []
    for sign in (1.0, -1.0):
        fit = linprog(
            np.r_[sign * y, 0.0],
            A_ub=a_ub,
            b_ub=np.zeros(2 * n),
            A_eq=a_eq,
            b_eq=[1.0],
            bounds=[(0, None)] * (n + 1),
            method="highs",
        )
        assert fit.status == 0
        out.append(sign * fit.fun)
    return out[0], out[1]


def corner_bounds(y: np.ndarray, w: np.ndarray, lam: float) -> tuple[float, float]:
    """The extremes over every corner of the box (a ratio of linear forms is extreme at one)."""
    corners = np.array(list(itertools.product((1 / lam, lam), repeat=len(y)))) * w
    means = corners @ y / corners.sum(axis=1)
    return float(means.min()), float(means.max())


outcomes = st.lists(
    st.one_of(
        st.floats(-50, 50, allow_nan=False), st.integers(-3, 3).map(float)
    ),  # integers give ties
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), lam=st.floats(1.0, 20.0))
def test_bounds_match_brute_force_and_linear_program(data, lam):
    y = np.array(data.draw(outcomes))
    w = np.array(data.draw(st.lists(st.floats(0.01, 100.0), min_size=len(y), max_size=len(y))))
    lower, upper = control_mean_bounds(y, w, lam)
    corner_lower, corner_upper = corner_bounds(y, w, lam)
    scale = 1 + np.abs(y).max()
    assert lower == pytest.approx(corner_lower, abs=1e-9 * scale)
    assert upper == pytest.approx(corner_upper, abs=1e-9 * scale)
    lp_lower, lp_upper = lp_bounds(y, w, lam)
    assert lower == pytest.approx(lp_lower, abs=1e-6 * scale)
    assert upper == pytest.approx(lp_upper, abs=1e-6 * scale)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bounds_are_nested_scale_free_and_tend_to_the_range(data):
    y = np.array(data.draw(st.lists(st.floats(-10, 10), min_size=2, max_size=30)))
    w = np.array(data.draw(st.lists(st.floats(0.05, 20.0), min_size=len(y), max_size=len(y))))
    mean = float(w @ y / w.sum())
    assert control_mean_bounds(y, w, 1.0) == pytest.approx((mean, mean), abs=1e-9)
    previous = (mean, mean)
    for lam in (1.1, 1.5, 2.0, 4.0):
        lower, upper = control_mean_bounds(y, w, lam)
        assert lower <= previous[0] + 1e-12 and upper >= previous[1] - 1e-12
        assert control_mean_bounds(y, 7.5 * w, lam) == pytest.approx((lower, upper), abs=1e-9)
        previous = (lower, upper)
    lower, upper = control_mean_bounds(y, w, 1e7)
    assert lower == pytest.approx(y.min(), abs=1e-4) and upper == pytest.approx(y.max(), abs=1e-4)


def test_bad_lambda_and_weights_are_named():
    with pytest.raises(ValueError, match="Lambda"):
        control_mean_bounds([1.0, 2.0], [1.0, 1.0], 0.5)
    with pytest.raises(ValueError, match="weights"):
        control_mean_bounds([1.0, 2.0], [0.0, 0.0], 2.0)


@pytest.fixture(scope="module")
def study_fit():
    frame, roles = make_frame(seed=5, sizes=(8, 80), n_groups=8, n_unit=2, n_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **roles).fit_map()


def group_rows(table: pd.DataFrame, lam: float) -> pd.DataFrame:
    rows = table[(table["Lambda"] == lam) & (table["target"] != ATT_LABEL)]
    return rows.set_index("target")


def test_map_bounds_invariants(study_fit):
    fit = study_fit
    table = sensitivity(fit, Lambda=[1.0, 1.5, 3.0], bootstrap="fixed", n_bootstrap=50)
    assert list(table.columns) == [
        "Lambda",
        "target",
        "estimate",
        "lower",
        "upper",
        "ci_lower",
        "ci_upper",
    ]
    assert len(table) == 3 * (fit.design.n_groups + 1)
    at_one = group_rows(table, 1.0)
    np.testing.assert_allclose(at_one["estimate"], fit.catt["estimate"], rtol=1e-10)
    np.testing.assert_allclose(at_one["lower"], fit.catt["estimate"], rtol=1e-10)
    np.testing.assert_allclose(at_one["upper"], fit.catt["estimate"], rtol=1e-10)
    att = table[table["target"] == ATT_LABEL].set_index("Lambda")
    assert att.loc[1.0, "lower"] == pytest.approx(fit.att, rel=1e-10)
    # Nested in Λ, point and interval alike.
    for small, large in ((1.0, 1.5), (1.5, 3.0)):
        a, b = table[table["Lambda"] == small], table[table["Lambda"] == large]
        assert np.all(b["lower"].to_numpy() <= a["lower"].to_numpy() + 1e-12)
        assert np.all(b["upper"].to_numpy() >= a["upper"].to_numpy() - 1e-12)
        assert np.all(b["ci_lower"].to_numpy() <= a["ci_lower"].to_numpy() + 1e-12)
        assert np.all(b["ci_upper"].to_numpy() >= a["ci_upper"].to_numpy() - 1e-12)


def test_att_bounds_are_the_treated_weighted_group_bounds(study_fit):
    fit = study_fit
    table = sensitivity(fit, Lambda=2.0, bootstrap="fixed", n_bootstrap=20)
    groups = group_rows(table, 2.0)
    n1 = fit.design.treated_per_group
    att = table[table["target"] == ATT_LABEL].iloc[0]
    assert att["lower"] == pytest.approx(np.sum(n1 * groups["lower"]) / n1.sum(), rel=1e-10)
    assert att["upper"] == pytest.approx(np.sum(n1 * groups["upper"]) / n1.sum(), rel=1e-10)
    # The group bounds, computed one group at a time by the plain function.
    d = fit.design
    w = fit.weights.to_numpy()
    for j, label in enumerate(d.groups):
        controls = (d.group_codes == j) & (d.treatment == 0)
        treated_mean = d.outcome[(d.group_codes == j) & (d.treatment == 1)].mean()
        low, high = control_mean_bounds(d.outcome[controls], w[controls], 2.0)
        assert groups.loc[label, "lower"] == pytest.approx(treated_mean - high, rel=1e-9)
        assert groups.loc[label, "upper"] == pytest.approx(treated_mean - low, rel=1e-9)


def test_large_lambda_tends_to_the_control_outcome_range(study_fit):
    d = study_fit.design
    table = group_rows(sensitivity(study_fit, Lambda=1e8, n_bootstrap=5, bootstrap="fixed"), 1e8)
    for j, label in enumerate(d.groups):
        y = d.outcome[d.group_codes == j]
        t = d.treatment[d.group_codes == j] == 1
        assert table.loc[label, "lower"] == pytest.approx(y[t].mean() - y[~t].max(), abs=1e-5)
        assert table.loc[label, "upper"] == pytest.approx(y[t].mean() - y[~t].min(), abs=1e-5)


def test_bounds_do_not_depend_on_a_factor_per_group(study_fit):
    d = study_fit.design
    rescaled = study_fit.weights.to_numpy() * np.exp(np.arange(d.n_groups))[d.group_codes]
    other = SimpleNamespace(design=d, weights=np.where(d.treatment == 1, 1.0, rescaled))
    a = sensitivity(study_fit, Lambda=[1.3, 2.0], bootstrap="fixed", n_bootstrap=30)
    b = sensitivity(other, Lambda=[1.3, 2.0], bootstrap="fixed", n_bootstrap=30)
    columns = ["estimate", "lower", "upper", "ci_lower", "ci_upper"]
    np.testing.assert_allclose(a[columns], b[columns], rtol=1e-9)


def test_bootstrap_interval_at_lambda_one_agrees_with_the_linearized_errors(study_fit):
    """With the weights held fixed, the bootstrap spread of a group's CATT is close to its
    linearized Hájek standard error (same assumption: known weights)."""
    table = sensitivity(study_fit, Lambda=1.0, bootstrap="fixed", n_bootstrap=400)
    rows = group_rows(table, 1.0)
    se = map_standard_errors(study_fit)
    half_width = (rows["ci_upper"] - rows["ci_lower"]) / 2 / 1.6449
    big = study_fit.design.units_per_group >= 40
    ratio = (half_width / se.to_numpy())[big]
    assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio


def test_refit_bootstrap_records_its_method_and_widens_the_interval(study_fit):
    fixed = sensitivity(study_fit, Lambda=1.0, bootstrap="fixed", n_bootstrap=60)
    refit = sensitivity(study_fit, Lambda=1.0, n_bootstrap=60)
    assert "refitted" in refit.attrs["method"] and "held fixed" in fixed.attrs["method"]
    assert refit.attrs["ci_prob"] == pytest.approx(0.9)
    np.testing.assert_allclose(refit["estimate"], fixed["estimate"])
    assert not np.allclose(refit["ci_lower"], fixed["ci_lower"])
    att = refit[refit["target"] == ATT_LABEL].iloc[0]
    assert att["ci_lower"] < att["estimate"] < att["ci_upper"]
    again = sensitivity(study_fit, Lambda=1.0, n_bootstrap=60)
    pd.testing.assert_frame_equal(refit, again)  # seeded


def test_posterior_bounds_at_lambda_one_are_the_posterior_summaries(study_fit):
    post = hand_built_posterior(study_fit, store_weights=True, draws=40)
    table = sensitivity(post, Lambda=[1.0, 2.0])
    rows = group_rows(table, 1.0)
    catt = post.catt
    np.testing.assert_allclose(rows["estimate"], catt["mean"], rtol=1e-9)
    np.testing.assert_allclose(rows["ci_lower"], catt["lower"], rtol=1e-9)
    np.testing.assert_allclose(rows["ci_upper"], catt["upper"], rtol=1e-9)
    assert "stored per-draw weights" in table.attrs["method"]
    # Without stored weights the per-draw weights are recomputed from alpha and beta.
    recomputed = sensitivity(hand_built_posterior(study_fit, draws=40), Lambda=[1.0, 2.0])
    assert "recomputed" in recomputed.attrs["method"]
    columns = ["estimate", "lower", "upper", "ci_lower", "ci_upper"]
    np.testing.assert_allclose(recomputed[columns], table[columns], rtol=1e-8)
    wide = table[table["Lambda"] == 2.0]
    assert np.all(wide["ci_lower"].to_numpy() <= wide["lower"].to_numpy())


def test_robustness_value_is_where_the_bounds_reach_zero(study_fit):
    rv = robustness_value(study_fit, bootstrap="fixed", n_bootstrap=50, rtol=1e-6)
    assert rv.index.name == "target" and rv.index[-1] == ATT_LABEL
    assert np.all(rv["robustness_value"] >= 1) and np.all(rv["robustness_value_ci"] >= 1)
    assert np.all(rv["robustness_value_ci"] <= rv["robustness_value"])
    finite = rv[np.isfinite(rv["robustness_value"]) & (rv["robustness_value"] > 1)]
    assert len(finite) >= 2
    for target, value in finite["robustness_value"].items():
        for lam, covers in ((value * (1 + 1e-5), True), (value * (1 - 1e-4), False)):
            table = sensitivity(study_fit, Lambda=lam, bootstrap="fixed", n_bootstrap=5)
            row = table[table["target"] == target].iloc[0]
            assert (row["lower"] <= 0 <= row["upper"]) == covers


def test_robustness_value_is_infinite_when_no_control_outcome_reaches_the_treated():
    frame, roles = make_frame(seed=2, sizes=(30, 40), n_groups=4, n_unit=1, n_group=0)
    first = frame["school"] == frame["school"].iloc[0]
    frame.loc[first & (frame["z"] == 1), "y"] += 100.0  # far above every control outcome
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    rv = robustness_value(fit, bootstrap="fixed", n_bootstrap=20)
    assert rv["robustness_value"].iloc[0] == np.inf
    assert np.all(np.isfinite(rv["robustness_value"].iloc[1:-1]))


def test_bad_arguments_are_named(study_fit):
    with pytest.raises(ValueError, match="Lambda"):
        sensitivity(study_fit, Lambda=[1.0, 0.9])
    with pytest.raises(ValueError, match="bootstrap"):
        sensitivity(study_fit, bootstrap="wild")
    with pytest.raises(ValueError, match="n_bootstrap"):
        sensitivity(study_fit, n_bootstrap=1)
    with pytest.raises(ValueError, match="ci_prob"):
        sensitivity(study_fit, ci_prob=1.5)
    with pytest.raises(TypeError, match="design"):
        sensitivity(object())


def test_posterior_with_bayesian_bootstrap_uses_the_stored_bootstrap_weights(study_fit):
    from helpers import hand_built_tree

    from hierps.posterior.draws import from_idata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        post = from_idata(
            study_fit.design,
            hand_built_tree(study_fit, draws=30),
            random_seed=3,
            store_weights=True,
        )
    table = sensitivity(post, Lambda=1.0)
    assert "stored Bayesian-bootstrap weights" in table.attrs["method"]
    rows = group_rows(table, 1.0)
    np.testing.assert_allclose(rows["ci_lower"], post.catt["lower"], rtol=1e-9)
    np.testing.assert_allclose(rows["ci_upper"], post.catt["upper"], rtol=1e-9)
    att = table[table["target"] == ATT_LABEL].iloc[0]
    assert att["estimate"] == pytest.approx(post.att["mean"].iloc[0], rel=1e-9)
    # Without stored weights, fresh Dirichlet weights: same centre, a similar spread.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        unstored = from_idata(study_fit.design, hand_built_tree(study_fit, draws=30))
    fresh = sensitivity(unstored, Lambda=1.0, random_seed=11)
    assert "fresh Bayesian-bootstrap weights" in fresh.attrs["method"]
    fresh_att = fresh[fresh["target"] == ATT_LABEL].iloc[0]
    width = att["ci_upper"] - att["ci_lower"]
    assert fresh_att["estimate"] == pytest.approx(att["estimate"], abs=0.3 * width)
    assert fresh_att["ci_upper"] - fresh_att["ci_lower"] == pytest.approx(width, rel=0.5)
    rv = robustness_value(post)
    assert rv.loc[ATT_LABEL, "robustness_value_ci"] <= rv.loc[ATT_LABEL, "robustness_value"]


def test_group_without_controls_is_nan_and_left_out_of_the_att():
    frame, roles = make_frame(seed=6, sizes=(20, 40), n_groups=4, n_unit=1, n_group=0)
    first = frame["school"] == frame["school"].iloc[0]
    frame.loc[first, "z"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = hierps.Model(frame, **roles).fit_map()
    table = sensitivity(fit, Lambda=[1.0, 2.0], bootstrap="fixed", n_bootstrap=20)
    label = frame["school"].iloc[0]
    assert table.loc[table["target"] == label, ["lower", "upper", "ci_lower"]].isna().all().all()
    att = table[table["target"] == ATT_LABEL].set_index("Lambda")
    assert att.loc[1.0, "estimate"] == pytest.approx(fit.att, rel=1e-10)
    groups = group_rows(table, 2.0).drop(index=label)
    n1 = pd.Series(fit.design.treated_per_group, index=fit.design.groups).drop(index=label)
    expected = np.sum(n1 * groups["lower"]) / n1.sum()
    assert att.loc[2.0, "lower"] == pytest.approx(expected, rel=1e-10)
