"""Tests of check_balance: standardized differences computed by hand, groups, bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hierps
from hierps.exceptions import DataError
from hierps.natstrat.check import BalanceCheck, check_balance

Z = np.array([1, 1, 0, 0, 0, 2, 2])
ST = np.array(["a", "b", "a", "a", "b", "a", "b"])
X = pd.DataFrame({"x": [1.0, 3.0, 0.0, 2.0, 6.0, 5.0, 7.0]})
SELECTED = np.array([True, True, True, False, True, False, False])
SQRT2 = np.sqrt(2.0)


def test_differences_by_hand() -> None:
    # Treated x = {1, 3} (variance 2); controls {0, 2, 6}, selected {0, 6}.
    result = check_balance(Z, X, ST, SELECTED, control=0)
    across = result.sd_across.loc["x"]
    assert across["abs_stand_diff_before"] == pytest.approx((8 / 3 - 2) / SQRT2)
    assert across["abs_stand_diff_after"] == pytest.approx(1 / SQRT2)
    strata = result.sd_strata["abs_stand_diff_before"]
    assert strata[("a", "x")] == 0.0  # treated 1 vs controls {0, 2}: equal means
    assert strata[("b", "x")] == pytest.approx(3 / SQRT2)
    assert result.sd_strata.loc[("a", "x"), "abs_stand_diff_after"] == pytest.approx(1 / SQRT2)
    # Weighted by controls per stratum: 2 and 1 before, 1 and 1 after.
    average = result.sd_strata_avg.loc["x"]
    assert average["abs_stand_diff_before"] == pytest.approx((0 * 2 + 3 / SQRT2) / 3)
    assert average["abs_stand_diff_after"] == pytest.approx((1 / SQRT2 + 3 / SQRT2) / 2)


def test_pooled_denominator_averages_all_groups() -> None:
    result = check_balance(Z, X, ST, SELECTED, control=0, denom_variance="pooled")
    pooled = np.sqrt(np.mean([2.0, np.var([0, 2, 6], ddof=1), 2.0]))
    assert result.sd_across.loc["x", "abs_stand_diff_before"] == pytest.approx((2 / 3) / pooled)


def test_any_pair_of_groups() -> None:
    result = check_balance(Z, X, ST, SELECTED, control=2)
    assert result.sd_across.loc["x", "abs_stand_diff_before"] == pytest.approx(4 / SQRT2)
    assert np.isnan(result.sd_across.loc["x", "abs_stand_diff_after"])  # none of group 2 kept
    other = check_balance(Z, X, ST, SELECTED, treated=2, control=0)
    # Group 2 as the reference: its variance (2) is the scale.
    assert other.sd_across.loc["x", "abs_stand_diff_before"] == pytest.approx((6 - 8 / 3) / SQRT2)


def test_categorical_covariates_and_fallback_scale() -> None:
    data = pd.DataFrame(
        {
            "race": pd.Categorical(["A", "B", "A", "B", "B", "A", None], categories=["A", "B"]),
            "smoker": [True, True, False, True, False, False, True],
            "colour": ["red", "red", "blue", "red", "blue", "red", "blue"],
        }
    )
    result = check_balance(Z, data, ST, np.ones(7, dtype=bool), control=0)
    # caret's names: '.' before factor levels, nothing before character levels.
    expected_names = ["race.A", "race.B", "smoker", "colourblue", "colourred"]
    assert list(result.sd_across.index) == expected_names
    # Everything selected: after equals before.
    np.testing.assert_allclose(
        result.sd_across["abs_stand_diff_after"], result.sd_across["abs_stand_diff_before"]
    )
    # smoker has no treated variance (both True): pooled scale over the three groups.
    pooled = np.sqrt(np.mean([0.0, np.var([0, 1, 0], ddof=1), np.var([0, 1], ddof=1)]))
    expected = abs(1 - 1 / 3) / pooled
    assert result.sd_across.loc["smoker", "abs_stand_diff_before"] == pytest.approx(expected)


def test_after_optimize_controls_and_summary() -> None:
    data = hierps.datasets.load_nh0506().iloc[:600]
    strata = data["sex"].astype(str)
    constraints = hierps.generate_constraints(["age + race + bmi ~ 1 + sex"], data["z"], data)
    chosen = hierps.optimize_controls(
        data["z"], constraints.X, strata, importances=constraints.importances, ratio=1, seed=3
    )
    result = hierps.check_balance(data["z"], data[["age", "race", "bmi"]], strata, chosen.selected)
    assert isinstance(result, BalanceCheck)
    before = result.sd_across["abs_stand_diff_before"]
    after = result.sd_across["abs_stand_diff_after"]
    assert after["age"] < before["age"] and after["bmi"] < 0.1
    summary = result.summary()
    assert list(summary.columns) == ["mean", "median", "max"]
    assert summary.loc["across strata", "max"] == pytest.approx(after.max())


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="control must be given"):
        check_balance(Z, X, ST, SELECTED)
    with pytest.raises(DataError, match="control=5"):
        check_balance(Z, X, ST, SELECTED, control=5)
    with pytest.raises(DataError, match="selected"):
        check_balance(Z, X, ST, SELECTED[:-1], control=0)
    with pytest.raises(DataError, match="boolean"):
        check_balance(Z, X, ST, SELECTED.astype(int), control=0)
    with pytest.raises(DataError, match="different"):
        check_balance(Z, X, ST, SELECTED, control=1)
