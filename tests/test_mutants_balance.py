"""Balance statistics recomputed by hand: weighted variances, variance ratios, the balance
frame and balance draw by draw."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import make_frame

import hierps
from hierps.balance.statistics import (
    INTERCEPT,
    balance_draws,
    balance_frame,
    binary_covariates,
    covariate_values,
    variance_ratios,
    weighted_variance,
)
from hierps.exceptions import HierpsWarning


@pytest.fixture(scope="module")
def design():
    frame, roles = make_frame(seed=41, sizes=(6, 30), n_groups=4, n_unit=2, n_group=1)
    frame["x2"] = (frame["x2"] > 0).astype(float) + 1.0  # a 1/2 dummy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **roles).design


def test_weighted_variance_by_hand():
    values = np.array([[1.0, 4.0], [2.0, 0.0], [4.0, 1.0], [7.0, 3.0], [0.0, 2.0]])
    w = np.array([1.0, 2.0, 0.5, 0.0, 3.0])
    mean = w @ values / w.sum()
    expected = (w @ (values - mean) ** 2) / (w.sum() - (w**2).sum() / w.sum())
    np.testing.assert_allclose(weighted_variance(values, w), expected, rtol=1e-12)
    np.testing.assert_allclose(
        weighted_variance(values, np.ones(5)), values.var(axis=0, ddof=1), rtol=1e-12
    )
    codes = np.array([0, 0, 1, 1, 2])
    per_group = weighted_variance(values, w, codes, 4)
    assert per_group.shape == (4, 2)
    np.testing.assert_allclose(per_group[0], weighted_variance(values[:2], w[:2]), rtol=1e-12)
    # Groups 1 and 2 have one unit of positive weight, group 3 none: no variance.
    assert np.isnan(per_group[1:]).all()


def test_binary_covariates_take_at_most_two_values():
    values = np.column_stack(
        [
            [0.0, 1.0, 0.0, 1.0],
            [1.0, 2.0, 2.0, 1.0],
            [0.0, 1.0, 2.0, 1.0],
            [1e-12, 1.0 - 1e-12, 0.0, 1.0],
            [3.0, 3.0, 3.0, 3.0],
        ]
    )
    np.testing.assert_array_equal(binary_covariates(values), [True, True, False, True, True])
    assert binary_covariates(values).dtype == bool


def test_covariate_values_stack_unit_then_group_covariates(design):
    names, values, n_unit = covariate_values(design)
    assert names == [*design.unit_names, *design.group_names] and n_unit == 2
    unit = design.unit_frame(original_scale=True).to_numpy()
    group = design.group_frame(original_scale=True).to_numpy()[design.group_codes]
    np.testing.assert_array_equal(values, np.column_stack([unit, group]))


def test_variance_ratios_by_hand(design):
    _, values, n_unit = covariate_values(design)
    rng = np.random.default_rng(1)
    w = rng.uniform(0.1, 4.0, design.n_units)
    t = design.treatment == 1
    codes = design.group_codes

    def var(x, weights):
        mean = weights @ x / weights.sum()
        return weights @ (x - mean) ** 2 / (weights.sum() - (weights**2).sum() / weights.sum())

    global_before, global_after, group_before, group_after = variance_ratios(design, w)
    binary = np.array([False, True, False])  # x1, the 1/2 dummy x2, v1
    for k in range(values.shape[1]):
        x = values[:, k]
        if binary[k]:
            assert np.isnan([global_before[k], global_after[k]]).all()
            continue
        treated_var = x[t].var(ddof=1)
        assert global_before[k] == pytest.approx(treated_var / x[~t].var(ddof=1), rel=1e-10)
        assert global_after[k] == pytest.approx(treated_var / var(x[~t], w[~t]), rel=1e-10)
    assert group_before.shape == group_after.shape == (design.n_groups, n_unit)
    assert np.isnan(group_before[:, 1]).all() and np.isnan(group_after[:, 1]).all()
    for j in range(design.n_groups):
        a, c = (codes == j) & t, (codes == j) & ~t
        x = values[:, 0]
        treated_var = x[a].var(ddof=1) if a.sum() > 1 else np.nan
        np.testing.assert_allclose(group_before[j, 0], treated_var / x[c].var(ddof=1), rtol=1e-10)
        np.testing.assert_allclose(group_after[j, 0], treated_var / var(x[c], w[c]), rtol=1e-10)


def test_balance_frame_by_hand(design):
    rng = np.random.default_rng(2)
    w = rng.uniform(0.1, 4.0, design.n_units)
    frame = balance_frame(design, w)
    assert list(frame.columns) == [
        "scope",
        "group",
        "covariate",
        "treated_mean",
        "control_mean_before",
        "control_mean_after",
        "smd_before",
        "smd_after",
        "treated_total",
        "control_total_after",
        "imbalance",
    ]
    t = design.treatment == 1
    codes = design.group_codes
    names, values, _ = covariate_values(design)
    standardized = np.column_stack([design.unit_matrix, design.group_matrix[codes]])
    sd = values[t].std(axis=0, ddof=1)
    global_rows = frame[frame["scope"] == "global"].set_index("covariate")
    assert global_rows["group"].isna().all()
    assert list(global_rows.index) == [INTERCEPT, *names]
    intercept = global_rows.loc[INTERCEPT]
    assert intercept["treated_mean"] == intercept["control_mean_after"] == 1.0
    assert np.isnan(intercept["smd_before"])
    assert intercept["treated_total"] == t.sum()
    assert intercept["control_total_after"] == pytest.approx(w[~t].sum())
    assert intercept["imbalance"] == pytest.approx(w[~t].sum() - t.sum())
    for k, name in enumerate(names):
        row, x, s = global_rows.loc[name], values[:, k], standardized[:, k]
        after = w[~t] @ x[~t] / w[~t].sum()
        assert row["treated_mean"] == pytest.approx(x[t].mean(), rel=1e-12)
        assert row["control_mean_before"] == pytest.approx(x[~t].mean(), rel=1e-12)
        assert row["control_mean_after"] == pytest.approx(after, rel=1e-12)
        assert row["smd_before"] == pytest.approx((x[t].mean() - x[~t].mean()) / sd[k], rel=1e-10)
        assert row["smd_after"] == pytest.approx((x[t].mean() - after) / sd[k], rel=1e-10)
        assert row["treated_total"] == pytest.approx(s[t].sum(), rel=1e-10, abs=1e-10)
        assert row["control_total_after"] == pytest.approx(w[~t] @ s[~t], rel=1e-10)
        assert row["imbalance"] == pytest.approx(w[~t] @ s[~t] - s[t].sum(), rel=1e-9, abs=1e-9)
    group_rows = frame[frame["scope"] == "group"]
    # Group covariates are balanced within groups through the intercept row only.
    assert set(group_rows["covariate"]) == {INTERCEPT, *design.unit_names}
    assert list(group_rows["group"].unique()) == list(design.groups)
    for j, label in enumerate(design.groups):
        a, c = (codes == j) & t, (codes == j) & ~t
        rows = group_rows[group_rows["group"] == label].set_index("covariate")
        for k, name in enumerate(design.unit_names):
            x = values[:, k]
            after = w[c] @ x[c] / w[c].sum()
            assert rows.loc[name, "treated_mean"] == pytest.approx(x[a].mean(), rel=1e-12)
            assert rows.loc[name, "control_mean_before"] == pytest.approx(x[c].mean(), rel=1e-12)
            assert rows.loc[name, "smd_after"] == pytest.approx(
                (x[a].mean() - after) / sd[k], rel=1e-10
            )
        assert rows.loc[INTERCEPT, "imbalance"] == pytest.approx(w[c].sum() - a.sum())


def test_treated_sd_falls_back_to_the_pooled_sd():
    frame, roles = make_frame(seed=42, sizes=(6, 30), n_groups=4, n_unit=2, n_group=1)
    treated = frame["z"] == 1
    frame.loc[treated, "x1"] = 0.5  # constant among the treated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        design = hierps.Model(frame, **roles).design
    w = np.ones(design.n_units)
    row = balance_frame(design, w).query("scope == 'global' and covariate == 'x1'").iloc[0]
    x = design.unit_frame(original_scale=True)["x1"].to_numpy()
    t = design.treatment == 1
    pooled = np.sqrt((x[t].var(ddof=1) + x[~t].var(ddof=1)) / 2)
    assert row["smd_before"] == pytest.approx((0.5 - x[~t].mean()) / pooled, rel=1e-10)


def test_balance_draws_equal_balance_frame_per_draw(design):
    rng = np.random.default_rng(3)
    draws = rng.uniform(0.1, 4.0, size=(5, design.n_units))
    asked = []

    def control_weights(j, rows):
        asked.append(j)
        assert (design.group_codes[rows] == j).all() and (design.treatment[rows] == 0).all()
        return draws[:, rows]

    result = balance_draws(design, control_weights, 5)
    assert asked == list(range(design.n_groups))
    names, _, n_unit = covariate_values(design)
    t = design.treatment == 1
    codes = design.group_codes
    for s in range(5):
        frame = balance_frame(design, draws[s])
        global_rows = frame[frame["scope"] == "global"].set_index("covariate")
        np.testing.assert_allclose(
            result.smd_global[s], global_rows.loc[names, "smd_after"], rtol=1e-10
        )
        group_rows = frame[(frame["scope"] == "group") & (frame["covariate"] != INTERCEPT)]
        expected = group_rows.pivot(index="group", columns="covariate", values="smd_after")
        expected = expected.loc[list(design.groups), list(design.unit_names)].to_numpy()
        np.testing.assert_allclose(result.smd_group[s], expected, rtol=1e-10)
        w = np.where(t, 0.0, draws[s])
        assert result.ess_global[s] == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-12)
        for j in range(design.n_groups):
            wj = w[codes == j]
            assert result.ess_group[s, j] == pytest.approx(wj.sum() ** 2 / (wj**2).sum())
    assert result.smd_group.shape == (5, design.n_groups, n_unit)
