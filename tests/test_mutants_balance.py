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


# --------------------------------------------------------------------------------------------
# Every estimand, base weights, and designs with groups missing an arm.
# --------------------------------------------------------------------------------------------


def _frequency_var(x, b):
    total = b.sum()
    mean = b @ x / total
    return b @ (x - mean) ** 2 / (total - 1)


def _hand_balance(design, w, estimand):
    """balance_frame recomputed in plain numpy: {(group or None, covariate): row}."""
    t = design.treatment == 1
    b = design.unit_weights
    codes = design.group_codes
    names, values, n_unit = covariate_values(design)
    standardized = np.column_stack([design.unit_matrix, design.group_matrix[codes]])
    control_w = np.where(t, 0.0, w)
    treated_w = np.where(t, b if estimand == "att" else w, 0.0)
    treated_b, control_b = np.where(t, b, 0.0), np.where(t, 0.0, b)
    rows = {}
    for k, name in enumerate(names):
        x, s = values[:, k], standardized[:, k]
        var_t, var_c = _frequency_var(x[t], b[t]), _frequency_var(x[~t], b[~t])
        pooled = np.sqrt((var_t + var_c) / 2)
        target = {"att": np.sqrt(var_t), "atc": np.sqrt(var_c), "ate": pooled}[estimand]
        sd = target if target > 0 else pooled
        scopes = [(None, np.ones(len(t), bool))]
        if k < n_unit:
            scopes += [(g, codes == j) for j, g in enumerate(design.groups)]
        for label, m in scopes:
            treated_mean = treated_b[m] @ x[m] / treated_b[m].sum()
            treated_after = treated_w[m] @ x[m] / treated_w[m].sum()
            before = control_b[m] @ x[m] / control_b[m].sum()
            after = control_w[m] @ x[m] / control_w[m].sum()
            row = {
                "treated_mean": treated_mean,
                "control_mean_before": before,
                "control_mean_after": after,
                "smd_before": (treated_mean - before) / sd,
                "smd_after": (treated_after - after) / sd,
                "treated_total": treated_b[m] @ s[m],
                "control_total_after": control_w[m] @ s[m],
            }
            whole = (treated_b[m] + control_b[m]) @ s[m]
            if estimand == "att":
                row["imbalance"] = control_w[m] @ s[m] - treated_b[m] @ s[m]
            else:
                row["treated_mean_after"] = treated_after
                row["treated_total_after"] = treated_w[m] @ s[m]
                row["control_total"] = control_b[m] @ s[m]
            if estimand == "atc":
                row["imbalance"] = treated_w[m] @ s[m] - control_b[m] @ s[m]
            elif estimand == "ate":
                row["imbalance"] = control_w[m] @ s[m] - whole
                row["imbalance_treated"] = treated_w[m] @ s[m] - whole
            rows[label, name] = row
    return rows


@pytest.fixture(scope="module")
def weighted_design():
    """Base weights; x1 constant among the controls and x3 among the treated, so that the ATC
    and the ATT denominators fall back to the pooled SD for one column each."""
    frame, roles = make_frame(seed=43, sizes=(8, 30), n_groups=4, n_unit=3, n_group=1)
    rng = np.random.default_rng(43)
    frame["base"] = rng.uniform(0.5, 3.0, len(frame))
    frame.loc[frame["z"] == 0, "x1"] = 0.25
    frame.loc[frame["z"] == 1, "x3"] = -0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, weights="base", **roles).design


@pytest.mark.parametrize("estimand", ["att", "atc", "ate"])
@pytest.mark.parametrize("base_weights", [True, False], ids=["base weights", "no base weights"])
def test_balance_frame_by_hand_for_every_estimand(weighted_design, design, estimand, base_weights):
    chosen = weighted_design if base_weights else design
    rng = np.random.default_rng(4)
    w = rng.uniform(0.1, 4.0, chosen.n_units)
    frame = balance_frame(chosen, w, estimand)
    expected_columns = ["treated_mean", "control_mean_before", "control_mean_after"]
    expected_columns += ["smd_before", "smd_after", "treated_total", "control_total_after"]
    if estimand != "att":
        expected_columns += ["treated_mean_after", "treated_total_after", "control_total"]
    expected_columns += ["imbalance"] + (["imbalance_treated"] if estimand == "ate" else [])
    assert list(frame.columns) == ["scope", "group", "covariate", *expected_columns]
    hand = _hand_balance(chosen, w, estimand)
    table = frame[frame["covariate"] != INTERCEPT].set_index(["group", "covariate"])
    assert len(table) == len(hand)
    for (group, name), row in hand.items():
        got = table.loc[(group, name)]
        for column, value in row.items():
            assert got[column] == pytest.approx(value, rel=1e-9, abs=1e-9), (group, name, column)


def test_frequency_variance_needs_more_than_one_unit_of_base_weight():
    from hierps.balance.statistics import _frequency_variance

    values = np.array([[1.0, 3.0], [2.0, 5.0]])
    assert np.isnan(_frequency_variance(values, np.array([0.5, 0.5]))).all()
    assert np.isnan(_frequency_variance(values[:1], np.ones(1))).all()
    base = np.array([0.5, 1.0])  # a total of 1.5: defined
    mean = base @ values / 1.5
    np.testing.assert_allclose(
        _frequency_variance(values, base), base @ (values - mean) ** 2 / 0.5, rtol=1e-12
    )
    assert _frequency_variance(values, base).shape == (2,)


def test_weighted_variance_of_a_single_unit_is_missing_not_infinite():
    # 3 · 0.1 / 3 is not 0.1 in floating point: a spread of about 1e-34 over a denominator
    # of exactly 0.
    values = np.array([[0.1], [0.7]])
    with np.errstate(all="raise"):
        assert np.isnan(weighted_variance(values, np.array([3.0, 0.0]))).all()
    by_group = weighted_variance(values, np.array([3.0, 2.0]), np.array([0, 0]))
    assert by_group.shape == (1, 1)


def test_binary_covariates_ignore_differences_under_1e_9_only():
    values = np.column_stack(
        [[4e-10, 1.0 - 4e-10, 0.0, 1.0], [0.2, 0.4, 1.3, 0.2], [0.0, 1e-8, 1.0, 1.0]]
    )
    np.testing.assert_array_equal(binary_covariates(values), [True, False, False])


@pytest.mark.parametrize("estimand", ["atc", "ate"])
def test_variance_ratios_reweight_the_treated_for_the_atc_and_ate(design, estimand):
    _, values, _ = covariate_values(design)
    rng = np.random.default_rng(5)
    w = rng.uniform(0.1, 4.0, design.n_units)
    t = design.treatment == 1
    codes = design.group_codes
    _, global_after, _, group_after = variance_ratios(design, w, estimand)
    x = values[:, 0]
    np.testing.assert_allclose(
        global_after[0], weighted_variance(x[t, None], w[t]) / weighted_variance(x[~t, None], w[~t])
    )
    for j in range(design.n_groups):
        a, c = (codes == j) & t, (codes == j) & ~t
        expected = weighted_variance(x[a, None], w[a]) / weighted_variance(x[c, None], w[c])
        np.testing.assert_allclose(group_after[j, 0], expected[0])


def test_balance_draws_use_the_base_weights_of_balance_frame(weighted_design):
    rng = np.random.default_rng(6)
    draws = rng.uniform(0.1, 4.0, size=(3, weighted_design.n_units))
    result = balance_draws(weighted_design, lambda j, rows: draws[:, rows], 3)
    names, _, _ = covariate_values(weighted_design)
    for s in range(3):
        frame = balance_frame(weighted_design, draws[s])
        rows = frame[frame["scope"] == "global"].set_index("covariate")
        np.testing.assert_allclose(result.smd_global[s], rows.loc[names, "smd_after"], rtol=1e-10)


@pytest.fixture(scope="module")
def ragged_design():
    """Group s000 has no treated units, s001 one control, s002 no controls, and the controls
    of s003 (the last group) share one value of x1, and each arm of s003 one value of x2
    (exactly: the design is not standardized)."""
    frame, roles = make_frame(seed=44, sizes=(12, 20), n_groups=4, n_unit=2, n_group=1)
    frame.loc[frame["school"] == "s000", "z"] = 0
    s001 = np.flatnonzero(frame["school"] == "s001")
    frame.loc[s001, "z"] = 1
    frame.loc[s001[-1], "z"] = 0
    frame.loc[frame["school"] == "s002", "z"] = 1
    frame.loc[(frame["school"] == "s003") & (frame["z"] == 0), "x1"] = 0.3
    frame.loc[(frame["school"] == "s003") & (frame["z"] == 0), "x2"] = 0.5
    frame.loc[(frame["school"] == "s003") & (frame["z"] == 1), "x2"] = 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, standardize=False, **roles).design


@pytest.mark.parametrize("estimand", ["att", "atc", "ate"])
def test_groups_missing_an_arm_give_missing_statistics_quietly(ragged_design, estimand):
    design = ragged_design
    w = np.random.default_rng(7).uniform(0.1, 4.0, design.n_units)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        frame = balance_frame(design, w, estimand)
        ratios = variance_ratios(design, w, estimand)
        draws = balance_draws(design, lambda j, rows: np.tile(w[rows], (2, 1)), 2)
    by_group = frame[(frame["scope"] == "group") & (frame["covariate"] == "x1")]
    by_group = by_group.set_index("group")
    assert np.isnan(by_group.loc["s000", "treated_mean"])
    assert np.isnan(by_group.loc["s002", "control_mean_after"])
    assert np.isfinite(by_group.loc["s001", "control_mean_after"])
    group_after = ratios[3]
    assert np.isnan(group_after[0, 0]) and np.isnan(group_after[2, 0])
    assert np.isnan(group_after[1, 0])  # one control: no variance
    assert np.isposinf(group_after[3, 0])  # constant controls, varying treated
    assert np.isnan(ratios[2][3, 1])  # both arms constant before weighting: 0 / 0
    with np.errstate(all="raise"):
        per_group = weighted_variance(design.unit_matrix, w, design.group_codes, 6)
    assert np.isnan(per_group[4:]).all()  # groups without units
    np.testing.assert_array_equal(draws.ess_group[:, 2], 0.0)
    np.testing.assert_allclose(draws.ess_group[:, 1], 1.0)
    assert np.isnan(draws.smd_group[:, 0, :]).all() and np.isnan(draws.smd_group[:, 2, :]).all()
    assert np.isfinite(draws.smd_group[:, 3, :]).all()


@pytest.mark.parametrize("size", [0.05, 1e153])
def test_ess_of_small_and_huge_equal_weights_is_the_count(design, size):
    draws = np.full((1, design.n_units), size)
    with np.errstate(all="raise"):
        result = balance_draws(design, lambda j, rows: draws[:, rows], 1)
    controls = np.bincount(design.group_codes[design.treatment == 0], minlength=design.n_groups)
    np.testing.assert_allclose(result.ess_group[0], controls, rtol=1e-12)
    assert result.ess_global[0] == pytest.approx(controls.sum(), rel=1e-12)


def test_ess_of_a_group_whose_squared_weights_underflow_is_zero(design):
    draws = np.ones((1, design.n_units))
    draws[0, design.group_codes == 0] = 1e-170
    with np.errstate(all="raise", under="ignore"):
        result = balance_draws(design, lambda j, rows: draws[:, rows], 1)
    assert result.ess_group[0, 0] == 0.0 and np.isfinite(result.ess_group[0, 1:]).all()


def test_att_result_design_names_what_it_needs(design):
    from hierps.balance.statistics import att_result_design
    from hierps.exceptions import ArgumentError, ArgumentTypeError

    class Result:
        def __init__(self, estimand):
            self.design, self.estimand = design, estimand

    assert att_result_design(Result("att"), "overlap") is design
    unlabeled = Result("att")
    del unlabeled.estimand  # results without an estimand are ATT results
    assert att_result_design(unlabeled, "overlap") is design
    with pytest.raises(ArgumentTypeError, match=r"expected a hierps result with a \.design .*int"):
        att_result_design(3, "overlap")
    with pytest.raises(ArgumentError, match=r"^overlap assesses ATT weights .* estimated the ATE$"):
        att_result_design(Result("ate"), "overlap")
