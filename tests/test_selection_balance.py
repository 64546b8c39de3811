"""A control selection in balance_table: its 0/1 weights, check_balance's numbers, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hierps
from hierps.balance.table import balance_table
from hierps.balance.weightings import weights_result
from hierps.natstrat.check import check_balance
from hierps.natstrat.constraints import generate_constraints
from hierps.natstrat.optimize import optimize_controls

COVARIATES = ["x1", "x2", "race"]


def _model(frame: pd.DataFrame, treatment: str = "z") -> hierps.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierps.HierpsWarning)
        return hierps.Model(
            frame,
            treatment=treatment,
            group="st",
            unit_covariates=[c for c in COVARIATES if c in frame],
            varying_slopes=None,
        )


def _study(seed: int = 3, n: int = 240, groups: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    race = rng.choice(["a", "b", "c"], size=n)
    score = (-1.2 if groups == 2 else -1.8) + 0.8 * x1 + 0.5 * (race == "b")
    z = (rng.uniform(size=n) < 1 / (1 + np.exp(-score))).astype(int)
    if groups == 3:
        z = np.where((z == 0) & (rng.uniform(size=n) < 0.4), 2, z)
    return pd.DataFrame(
        {
            "z": z,
            "x1": x1,
            "x2": rng.gamma(2.0, size=n),
            "race": pd.Categorical(race, categories=["a", "b", "c"]),
            "st": pd.Categorical(rng.choice(["s1", "s2", "s3"], size=n)),
        },
        index=pd.Index([f"u{i}" for i in range(n)], name="id"),
    )


def _select(frame: pd.DataFrame, **kwargs) -> hierps.OptimizeControlsResult:
    constraints = generate_constraints(
        ["x1 + x2 + race ~ 1 + st"], frame["z"], frame, treated=kwargs.get("treated", 1)
    )
    return optimize_controls(
        frame["z"],
        constraints.X,
        frame["st"],
        importances=constraints.importances,
        ratio=1,
        seed=1,
        **kwargs,
    )


def _check_names(names: pd.Series) -> pd.Series:
    """balance_table's level names (``race[a]``) as check_balance's (``race.a``)."""
    return names.str.replace(r"^(\w+)\[(.*)\]$", r"\1.\2", regex=True)


def test_selection_weights_by_hand() -> None:
    # One stratum; treated x = {0, 4} (mean 2, SD √8), controls {1, 5, 9}. Two controls of
    # means 3, 5, 7: {1, 5} is the best, and no fractional selection does better.
    frame = pd.DataFrame(
        {"z": [1, 1, 0, 0, 0], "x1": [0.0, 4.0, 1.0, 5.0, 9.0], "st": ["s"] * 5},
        index=pd.Index(list("abcde"), name="id"),
    )
    selection = optimize_controls(frame["z"], frame[["x1"]], frame["st"], ratio=1, seed=1)
    expected = pd.Series([1.0, 1.0, 1.0, 1.0, 0.0], index=frame.index, name="weight")
    pd.testing.assert_series_equal(selection.weights, expected)

    table = balance_table(weights_result(_model(frame), selection, "selection"))
    row = table.global_.set_index("covariate").loc["x1"]
    assert row["control_mean_after"] == pytest.approx(3.0)
    assert row["smd_after"] == pytest.approx((2.0 - 3.0) / np.sqrt(8.0))
    assert row["smd_before"] == pytest.approx((2.0 - 5.0) / np.sqrt(8.0))
    assert table.ess["ess"].iloc[0] == pytest.approx(2.0)  # the two selected controls
    assert table.weights == "selection"


def test_selection_balance_equals_check_balance() -> None:
    frame = _study()
    selection = _select(frame)
    model = _model(frame)
    comparison = balance_table({"unweighted": None, "selection": (model, selection)})
    table = comparison.tables["selection"]
    check = check_balance(frame["z"], frame[COVARIATES], frame["st"], selection.selected)

    overall = table.global_.assign(covariate=_check_names(table.global_["covariate"]))
    overall = overall.set_index("covariate").loc[check.sd_across.index]
    np.testing.assert_allclose(
        overall["smd_after"].abs(), check.sd_across["abs_stand_diff_after"], atol=1e-12
    )
    np.testing.assert_allclose(
        overall["smd_before"].abs(), check.sd_across["abs_stand_diff_before"], atol=1e-12
    )
    within = table.by_group.assign(covariate=_check_names(table.by_group["covariate"]))
    within = within.set_index(["group", "covariate"]).loc[check.sd_strata.index]
    np.testing.assert_allclose(
        within["smd_after"].abs(), check.sd_strata["abs_stand_diff_after"], atol=1e-12
    )
    assert overall["smd_after"].abs().max() < overall["smd_before"].abs().max()
    assert comparison.summary().loc["selection", "ess"] == pytest.approx(
        (selection.selected & (frame["z"] == 0)).sum()
    )


def test_missing_values_sit_at_the_design_centre() -> None:
    frame = _study(seed=5)
    frame.loc[frame.index[::7], "x1"] = np.nan
    selection = _select(frame)
    model = _model(frame)
    table = balance_table(weights_result(model, selection)).global_.set_index("covariate")
    check = check_balance(frame["z"], frame[COVARIATES], frame["st"], selection.selected)
    # Left out of check_balance's means, at the treated mean in the design: not equal ...
    assert not np.isclose(
        abs(table.loc["x1", "smd_after"]), check.sd_across.loc["x1", "abs_stand_diff_after"]
    )
    # ... but equal once the missing values are set to the design's centre, indicator added.
    centre = model.design.unit_scaling.loc["x1", "center"]
    filled = frame[COVARIATES].assign(x1=frame["x1"].fillna(centre), x1_missing=frame["x1"].isna())
    check = check_balance(frame["z"], filled, frame["st"], selection.selected)
    for covariate in ("x1", "x1_missing"):
        assert abs(table.loc[covariate, "smd_after"]) == pytest.approx(
            check.sd_across.loc[covariate, "abs_stand_diff_after"], abs=1e-12
        )


def test_more_than_two_groups_pairwise_and_pooled() -> None:
    frame = _study(seed=7, n=300, groups=3)
    selection = _select(frame)
    chosen = selection.selected

    # Pairwise: a model on groups 1 and 0 compares the treated with the chosen units of 0.
    pair = frame[frame["z"].isin([0, 1])]
    table = balance_table(weights_result(_model(pair), selection)).global_
    check = check_balance(frame["z"], frame[COVARIATES], frame["st"], chosen, control=0)
    np.testing.assert_allclose(
        table.set_index(_check_names(table["covariate"]))["smd_after"].abs().loc[["x1", "x2"]],
        check.sd_across.loc[["x1", "x2"], "abs_stand_diff_after"],
        atol=1e-12,
    )
    # Pooled: treatment z == 1 on all units pools the chosen units of 0 and 2.
    pooled = frame.assign(treated=(frame["z"] == 1).astype(int))
    table = balance_table(weights_result(_model(pooled, "treated"), selection)).global_
    others = chosen & (frame["z"] != 1)
    assert set(frame.loc[others, "z"]) == {0, 2}
    x1 = table.set_index("covariate").loc["x1", "control_mean_after"]
    assert x1 == pytest.approx(frame.loc[others, "x1"].mean())


def test_selection_views_reject_other_units_and_other_treated() -> None:
    frame = _study()
    selection = _select(frame)
    flipped = frame.assign(z=1 - frame["z"])
    with pytest.raises(ValueError, match="treated units of the design"):
        weights_result(_model(flipped), selection)
    extra = pd.concat([frame, frame.iloc[:1].rename(index={"u0": "new"})])
    with pytest.raises(ValueError, match=r"not in the selection.*'new'"):
        weights_result(_model(extra), selection)
