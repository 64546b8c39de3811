"""Acceptance tests of the validated design: encoding, standardization, validation
(docs/math.md §2, docs/architecture.md §7), the formula constructor, invariances and the summary."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_frame
from hypothesis import given, settings
from hypothesis import strategies as st

import hierps
from hierps.design.build import Design
from hierps.exceptions import DataError, FormulaError, HierpsWarning


def study(seed: int = 1, **kwargs) -> tuple[pd.DataFrame, dict]:
    """A small frame (5 groups of 5–30 units, both arms in every group) and its roles."""
    kwargs.setdefault("sizes", (5, 30))
    kwargs.setdefault("n_groups", 5)
    return make_frame(seed=seed, **kwargs)


def build(frame: pd.DataFrame, roles: dict, **overrides) -> Design:
    return hierps.Model(frame, **{**roles, **overrides}).design


def build_quietly(frame: pd.DataFrame, roles: dict, **overrides) -> Design:
    """Build, failing on any warning: the baseline the warning tests contrast with."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return build(frame, roles, **overrides)


def assert_same_design(a: Design, b: Design) -> None:
    """Every array, name, scaling table and mask of two designs is identical."""
    pd.testing.assert_index_equal(a.index, b.index)
    np.testing.assert_array_equal(a.treatment, b.treatment)
    if a.outcome is None or b.outcome is None:
        assert a.outcome is None and b.outcome is None
    else:
        np.testing.assert_array_equal(a.outcome, b.outcome)
    pd.testing.assert_index_equal(a.groups, b.groups)
    np.testing.assert_array_equal(a.group_codes, b.group_codes)
    assert a.unit_names == b.unit_names
    np.testing.assert_array_equal(a.unit_matrix, b.unit_matrix)
    assert a.group_names == b.group_names
    np.testing.assert_array_equal(a.group_matrix, b.group_matrix)
    np.testing.assert_array_equal(a.varying, b.varying)
    pd.testing.assert_frame_equal(a.unit_scaling, b.unit_scaling)
    pd.testing.assert_frame_equal(a.group_scaling, b.group_scaling)
    assert a.standardize == b.standardize
    assert a.unit_sources == b.unit_sources
    assert a.group_sources == b.group_sources


def treated_standardized(values: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """By hand: centre at the treated mean, divide by the treated SD (ddof=1)."""
    arm = values[treated == 1]
    return (values - arm.mean(axis=0)) / arm.std(axis=0, ddof=1)


# --------------------------------------------------------------------------------------------
# 1. Encoding and standardization
# --------------------------------------------------------------------------------------------


def test_numeric_codes_declared_categorical_get_one_column_per_level():
    frame, roles = study()
    rng = np.random.default_rng(0)
    frame["C1"] = rng.choice([1, 4, 12], size=len(frame))
    design = build_quietly(
        frame,
        roles,
        unit_covariates=["x1", "C1"],
        categorical=["C1"],
        standardize=False,
    )
    assert design.unit_names == ("x1", "C1[1]", "C1[4]", "C1[12]")
    assert design.unit_sources == {"x1": "x1", "C1[1]": "C1", "C1[4]": "C1", "C1[12]": "C1"}
    encoded = design.unit_frame()
    for level in (1, 4, 12):
        np.testing.assert_array_equal(encoded[f"C1[{level}]"], (frame["C1"] == level).astype(float))
    np.testing.assert_array_equal(encoded.filter(like="C1[").sum(axis=1), 1.0)
    # Not declared categorical: the same codes are one numeric column.
    numeric = build_quietly(frame, roles, unit_covariates=["x1", "C1"], standardize=False)
    assert numeric.unit_names == ("x1", "C1")


def test_string_and_pandas_categorical_columns_are_detected():
    frame, roles = study(categorical_levels=3)  # c1: strings "a", "b", "c"
    rng = np.random.default_rng(1)
    frame["c2"] = pd.Categorical(
        rng.choice(["lo", "mid", "hi"], size=len(frame)),
        categories=["hi", "mid", "lo", "unused"],
    )
    frame["flag"] = rng.random(len(frame)) < 0.5  # bool: one 0/1 column, not two levels
    design = build_quietly(
        frame, roles, unit_covariates=["x1", "c1", "c2", "flag"], standardize=False
    )
    assert design.unit_names == (
        "x1",
        "c1[a]",
        "c1[b]",
        "c1[c]",
        "c2[hi]",
        "c2[mid]",
        "c2[lo]",
        "flag",
    )
    encoded = design.unit_frame()
    np.testing.assert_array_equal(encoded["c1[b]"], (frame["c1"] == "b").astype(float))
    np.testing.assert_array_equal(encoded["c2[hi]"], (frame["c2"] == "hi").astype(float))
    np.testing.assert_array_equal(encoded["flag"], frame["flag"].astype(float))


def test_codes_made_float_by_missing_values_keep_integer_level_names():
    frame, roles = study()
    codes = np.random.default_rng(2).choice([1, 4, 12], size=len(frame)).astype(float)
    codes[[3, 17]] = np.nan
    frame["C1"] = codes
    with pytest.warns(HierpsWarning, match="'C1' has 2 missing"):
        design = build(frame, roles, unit_covariates=["C1"], categorical=["C1"], standardize=False)
    assert design.unit_names == ("C1[1]", "C1[4]", "C1[12]", "C1_missing")
    encoded = design.unit_frame()
    np.testing.assert_array_equal(encoded.iloc[[3, 17]].to_numpy(), [[0, 0, 0, 1], [0, 0, 0, 1]])


@pytest.mark.parametrize("standardize", [True, "treated"])
def test_default_standardization_is_treated_mean_and_sd(standardize):
    frame, roles = study(categorical_levels=3)
    design = build_quietly(frame, roles, standardize=standardize)
    assert design.standardize == "treated"
    treated = frame["z"].to_numpy()
    raw = pd.concat(
        [frame[["x1", "x2", "x3"]], pd.get_dummies(frame["c1"], prefix_sep="").astype(float)],
        axis=1,
    ).to_numpy(dtype=float)
    assert design.unit_names == ("x1", "x2", "x3", "c1[a]", "c1[b]", "c1[c]")
    np.testing.assert_allclose(design.unit_matrix, treated_standardized(raw, treated))
    arm = raw[treated == 1]
    np.testing.assert_allclose(design.unit_scaling["center"], arm.mean(axis=0))
    np.testing.assert_allclose(design.unit_scaling["scale"], arm.std(axis=0, ddof=1))
    # Standardized treated units have mean 0 and SD 1 in every column.
    np.testing.assert_allclose(design.unit_matrix[treated == 1].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(design.unit_matrix[treated == 1].std(axis=0, ddof=1), 1)

    # Group covariates: centre and scale over the treated units, each carrying its group's value.
    per_unit = frame[["v1", "v2"]].to_numpy()
    center = per_unit[treated == 1].mean(axis=0)
    scale = per_unit[treated == 1].std(axis=0, ddof=1)
    by_group = frame.groupby("school")[["v1", "v2"]].first().to_numpy()
    np.testing.assert_allclose(design.group_matrix, (by_group - center) / scale)
    np.testing.assert_allclose(design.group_scaling["center"], center)
    np.testing.assert_allclose(design.group_scaling["scale"], scale)


def test_pooled_standardization():
    frame, roles = study()
    design = build_quietly(frame, roles, standardize="pooled")
    assert design.standardize == "pooled"
    raw = frame[["x1", "x2", "x3"]].to_numpy()
    treated = frame["z"].to_numpy() == 1
    scale = np.sqrt((raw[treated].var(axis=0, ddof=1) + raw[~treated].var(axis=0, ddof=1)) / 2)
    np.testing.assert_allclose(design.unit_matrix, (raw - raw.mean(axis=0)) / scale)
    np.testing.assert_allclose(design.unit_scaling["center"], raw.mean(axis=0))
    np.testing.assert_allclose(design.unit_scaling["scale"], scale)


def test_no_standardization_leaves_values_alone():
    frame, roles = study()
    design = build_quietly(frame, roles, standardize=False)
    assert design.standardize == "none"
    np.testing.assert_array_equal(design.unit_matrix, frame[["x1", "x2", "x3"]].to_numpy())
    np.testing.assert_array_equal(
        design.group_matrix, frame.groupby("school")[["v1", "v2"]].first().to_numpy()
    )
    assert (design.unit_scaling["center"] == 0).all()
    assert (design.unit_scaling["scale"] == 1).all()
    assert (design.group_scaling["scale"] == 1).all()


def test_unknown_standardize_option_is_rejected():
    frame, roles = study()
    with pytest.raises(ValueError, match="standardize='mean'"):
        build(frame, roles, standardize="mean")


@pytest.mark.parametrize("standardize", [True, "pooled", False])
def test_scaling_gives_back_the_original_values(standardize):
    frame, roles = study()
    design = build_quietly(frame, roles, standardize=standardize)
    pd.testing.assert_frame_equal(
        design.unit_frame(original_scale=True), frame[["x1", "x2", "x3"]], check_exact=False
    )
    expected = frame.groupby("school")[["v1", "v2"]].first()
    pd.testing.assert_frame_equal(
        design.group_frame(original_scale=True), expected, check_exact=False
    )


def test_group_covariates_one_row_per_group_in_group_order():
    frame, roles = study()
    # Rows interleaved across groups: group rows must still line up with their labels.
    frame = frame.sample(frac=1.0, random_state=4)
    frame["region"] = frame["school"].map(
        {"s000": "north", "s001": "south", "s002": "north", "s003": "east", "s004": "south"}
    )
    design = build_quietly(frame, roles, group_covariates=["v1", "region"], standardize=False)
    assert list(design.groups) == ["s000", "s001", "s002", "s003", "s004"]
    assert design.group_matrix.shape == (5, 4)
    assert design.group_names == ("v1", "region[east]", "region[north]", "region[south]")
    table = design.group_frame()
    for school, rows in frame.groupby("school"):
        assert table.loc[school, "v1"] == rows["v1"].iloc[0]
        assert table.loc[school, f"region[{rows['region'].iloc[0]}]"] == 1.0
        assert table.loc[school].filter(like="region[").sum() == 1.0
    # Group codes point each unit at its own group's row.
    np.testing.assert_array_equal(design.groups[design.group_codes], frame["school"].to_numpy())


def test_missing_unit_covariate_gets_an_indicator_and_a_warning():
    frame, roles = study()
    treated = frame["z"].to_numpy()
    missing_rows = [np.flatnonzero(treated == 1)[k] for k in (0, 3)] + [
        np.flatnonzero(treated == 0)[5]
    ]
    frame.loc[frame.index[missing_rows], "x2"] = np.nan
    with pytest.warns(HierpsWarning, match=r"'x2' has 3 missing values") as record:
        design = build(frame, roles)
    assert any("x2_missing" in str(w.message) for w in record)
    assert design.unit_names == ("x1", "x2", "x2_missing", "x3")
    assert design.unit_sources["x2_missing"] == "x2"
    assert design.varying[design.unit_names.index("x2_missing")]
    column = design.unit_frame()
    # Missing entries sit at 0 on the standardized scale ...
    np.testing.assert_array_equal(column["x2"].iloc[missing_rows], 0.0)
    # ... the other entries are standardized with the treated mean / SD of the observed values.
    observed = frame["x2"].notna().to_numpy()
    x2 = frame["x2"].to_numpy()
    arm = x2[observed & (treated == 1)]
    np.testing.assert_allclose(
        column["x2"][observed], (x2[observed] - arm.mean()) / arm.std(ddof=1)
    )
    indicator = np.isnan(x2).astype(float)
    np.testing.assert_allclose(column["x2_missing"], treated_standardized(indicator, treated))
    assert np.isfinite(design.unit_matrix).all()


def test_missing_categorical_entries_are_all_zero_plus_indicator():
    frame, roles = study(categorical_levels=3)
    frame.loc[frame.index[[2, 9]], "c1"] = None
    with pytest.warns(HierpsWarning, match="'c1' has 2 missing"):
        design = build(frame, roles, standardize=False)
    encoded = design.unit_frame()
    assert encoded.columns[-1] == "c1_missing"
    np.testing.assert_array_equal(encoded.iloc[[2, 9]].filter(like="c1[").to_numpy(), 0.0)
    np.testing.assert_array_equal(encoded["c1_missing"], frame["c1"].isna().astype(float))


def test_missing_group_covariate_counts_groups():
    frame, roles = study()
    frame.loc[frame["school"] == "s003", "v2"] = np.nan
    with pytest.warns(HierpsWarning, match=r"'v2' has 1 missing values \(in groups\)"):
        design = build(frame, roles)
    assert design.group_names == ("v1", "v2", "v2_missing")
    table = design.group_frame()
    assert table.loc["s003", "v2"] == 0.0
    raw = design.group_frame(original_scale=True)["v2_missing"]
    np.testing.assert_allclose(raw, [0, 0, 0, 1, 0], atol=1e-12)


@pytest.mark.parametrize("value", [3, 0.7])
def test_constant_covariate_is_dropped_with_a_warning(value):
    # 0.7 is not exactly representable: the naive std of a constant float column is ~1e-16.
    frame, roles = study()
    frame["k"] = value
    with pytest.warns(HierpsWarning, match=r"unit covariates k are constant.*dropped"):
        design = build(frame, roles, unit_covariates=["x1", "k", "x2"])
    assert design.unit_names == ("x1", "x2")
    assert list(design.unit_scaling.index) == ["x1", "x2"]
    assert design.unit_matrix.shape == (len(frame), 2)


def test_constant_group_covariate_is_dropped_with_a_warning():
    frame, roles = study()
    frame["v2"] = 0.1
    with pytest.warns(HierpsWarning, match=r"group covariates v2 are constant.*dropped"):
        design = build(frame, roles)
    assert design.group_names == ("v1",)
    assert design.group_matrix.shape == (5, 1)


@pytest.mark.parametrize("value", [2.0, 0.3])
def test_covariate_constant_among_treated_is_scaled_by_pooled_sd(value):
    frame, roles = study()
    treated = frame["z"].to_numpy() == 1
    # 0.3 repeated over these 34 treated units has a naive SD of ~6e-17, not 0: without exact
    # constancy detection the controls would be standardized to ~1e16.
    frame["tc"] = np.where(treated, value, frame["x1"])
    with pytest.warns(HierpsWarning, match=r"covariates tc have no variation among the treated"):
        design = build(frame, roles, unit_covariates=["x2", "tc"])
    controls = frame.loc[~treated, "tc"].to_numpy()
    pooled = np.sqrt((0.0 + controls.var(ddof=1)) / 2)
    scaling = design.unit_scaling.loc["tc"]
    assert scaling["center"] == pytest.approx(value)
    assert scaling["scale"] == pytest.approx(pooled)
    column = design.unit_frame()["tc"].to_numpy()
    np.testing.assert_allclose(column[treated], 0.0, atol=1e-12)
    np.testing.assert_allclose(column[~treated], (controls - value) / pooled)


def test_clean_data_raises_no_warning():
    frame, roles = study(categorical_levels=3)
    build_quietly(frame, roles)  # fails on any warning


def test_varying_slopes_by_input_or_encoded_name():
    frame, roles = study(categorical_levels=3)
    design = build_quietly(frame, roles)
    assert design.varying.all()  # default: every unit covariate varies
    design = build_quietly(frame, roles, varying_slopes=["x2", "c1"])
    assert design.varying_names == ("x2", "c1[a]", "c1[b]", "c1[c]")
    design = build_quietly(frame, roles, varying_slopes=["c1[b]"])
    assert design.varying_names == ("c1[b]",)
    design = build_quietly(frame, roles, varying_slopes=[])
    assert design.varying_names == ()


# --------------------------------------------------------------------------------------------
# 2. Validation (docs/architecture.md §7)
# --------------------------------------------------------------------------------------------


def labelled_study() -> tuple[pd.DataFrame, dict]:
    """Row labels that cannot be confused with positions or values."""
    frame, roles = study()
    frame.index = pd.Index([f"row{i}" for i in range(len(frame))], name="student")
    return frame, roles


@pytest.mark.parametrize(
    ("bad", "shown"),
    [([2, -1], ["2", "-1"]), ([0.5, 0.5], ["0.5"]), (["yes", "no"], ["'yes'", "'no'"])],
)
def test_non_binary_treatment_lists_the_values(bad, shown):
    frame, roles = labelled_study()
    frame["z"] = frame["z"].astype(object)
    frame.iloc[[4, 11], frame.columns.get_loc("z")] = bad
    with pytest.raises(DataError, match="treatment column 'z' must be binary") as error:
        build(frame, roles)
    message = str(error.value)
    for value in shown:
        assert value in message
    assert "np." not in message


def test_non_binary_numeric_treatment_lists_plain_values():
    frame, roles = study()
    frame.loc[[3, 8], "z"] = [2, 7]
    with pytest.raises(DataError, match=r"found values 2, 7$"):
        build(frame, roles)


@pytest.mark.parametrize("dtype", [bool, float, "boolean"])
def test_binary_treatment_of_any_dtype_is_accepted(dtype):
    frame, roles = study()
    reference = build_quietly(frame, roles)
    frame["z"] = frame["z"].astype(dtype)
    assert_same_design(build_quietly(frame, roles), reference)


def test_missing_treatment_names_the_rows():
    frame, roles = labelled_study()
    frame["z"] = frame["z"].astype(float)
    frame.loc[["row3", "row17"], "z"] = np.nan
    with pytest.raises(DataError, match="treatment column 'z' has missing values") as error:
        build(frame, roles)
    assert "'row3', 'row17'" in str(error.value)


def test_missing_group_ids_name_the_rows():
    frame, roles = labelled_study()
    frame.loc[["row0", "row20"], "school"] = None
    with pytest.raises(DataError, match="group column 'school' has missing ids") as error:
        build(frame, roles)
    assert "'row0', 'row20'" in str(error.value)


def test_many_offending_rows_are_listed_briefly():
    frame, roles = labelled_study()
    frame.loc[frame.index[:25], "school"] = None
    with pytest.raises(DataError, match=r"'row9' and 15 more"):
        build(frame, roles)


def test_group_covariate_varying_within_a_group_names_column_and_group():
    frame, roles = study()
    rows = frame.index[frame["school"] == "s002"]
    frame.loc[rows[1], "v1"] = frame.loc[rows[0], "v1"] + 1.0
    with pytest.raises(DataError, match="group covariate 'v1' varies within") as error:
        build(frame, roles)
    message = str(error.value)
    assert "'s002'" in message
    assert "'school'" in message
    assert "s001" not in message and "s003" not in message


def test_group_covariate_missing_in_part_of_a_group_varies():
    frame, roles = study()
    rows = frame.index[frame["school"] == "s004"]
    frame.loc[rows[0], "v2"] = np.nan
    with pytest.raises(DataError, match=r"'v2' varies within group\(s\) 's004'"):
        build(frame, roles)


@pytest.mark.parametrize(
    ("overrides", "role", "bad", "suggestion"),
    [
        ({"group": "schol"}, "group", "schol", "school"),
        ({"treatment": "zz"}, "treatment", "zz", "z"),
        ({"outcome": "Y"}, "outcome", "Y", "y"),
        ({"unit_covariates": ["x1", "xx2"]}, "unit covariate", "xx2", "x2"),
        ({"group_covariates": ["v_1"]}, "group covariate", "v_1", "v1"),
        ({"categorical": ["x_1"]}, "categorical", "x_1", "x1"),
    ],
)
def test_unknown_columns_suggest_close_matches(overrides, role, bad, suggestion):
    frame, roles = study()
    with pytest.raises(DataError) as error:
        build(frame, roles, **overrides)
    message = str(error.value)
    assert f"{role} column {bad!r} is not in the data" in message
    assert f"did you mean {suggestion!r}" in message


def test_unknown_varying_slope_suggests_close_matches():
    frame, roles = study()
    with pytest.raises(DataError, match=r"varying slope 'x_2' is not a unit covariate.*'x2'"):
        build(frame, roles, varying_slopes=["x1", "x_2"])
    with pytest.raises(DataError, match="varying slope 'v1' is not a unit covariate"):
        build(frame, roles, varying_slopes=["v1"])


@pytest.mark.parametrize(("value", "missing_arm"), [(1, "no control units"), (0, "no treated")])
def test_one_arm_only_is_an_error(value, missing_arm):
    frame, roles = study()
    frame["z"] = value
    with pytest.raises(DataError, match=f"treatment column 'z' has {missing_arm}"):
        build(frame, roles)


def test_empty_frame_is_an_error():
    frame, roles = study()
    with pytest.raises(DataError, match="empty"):
        build(frame.iloc[:0], roles)


def test_group_with_treated_but_no_controls_warns_and_builds():
    from hierps.calibrated.fit import fit_map

    frame, roles = study()
    frame.loc[frame["school"] == "s002", "z"] = 1
    design = build(frame, roles)
    with pytest.warns(HierpsWarning, match=r"group\(s\) 's002' of 'school'.*no control") as rec:
        fit_map(design)
    assert not any("s001" in str(w.message) or "s003" in str(w.message) for w in rec)
    position = list(design.groups).index("s002")
    assert design.treated_per_group[position] == design.units_per_group[position]
    assert design.n_groups == 5
    assert design.n_units == len(frame)


def test_non_numeric_outcome_is_an_error():
    frame, roles = study()
    frame["y"] = frame["y"].round(2).astype(str)
    with pytest.raises(DataError, match="outcome column 'y' must be numeric"):
        build(frame, roles)


def test_outcome_with_missing_values_names_the_rows():
    frame, roles = labelled_study()
    frame.loc[["row5", "row40"], "y"] = np.nan
    with pytest.raises(DataError, match="outcome column 'y' has missing values") as error:
        build(frame, roles)
    assert "'row5', 'row40'" in str(error.value)


def test_outcome_is_optional():
    frame, roles = study()
    design = build_quietly(frame.drop(columns="y"), roles, outcome=None)
    assert design.outcome is None
    assert "outcome: (none)" in design.summary()


def test_duplicate_index_labels_are_an_error():
    frame, roles = labelled_study()
    frame.index = ["dup", "dup", *frame.index[2:]]
    with pytest.raises(DataError, match="duplicated labels 'dup'"):
        build(frame, roles)


@pytest.mark.parametrize(
    "argument", ["unit_covariates", "group_covariates", "categorical", "varying_slopes"]
)
def test_a_string_where_a_list_is_expected_is_a_type_error(argument):
    frame, roles = study()
    with pytest.raises(TypeError, match=rf"{argument} must be a list.*\['x1'\]"):
        build(frame, roles, **{argument: "x1"})


def test_data_must_be_a_dataframe():
    frame, roles = study()
    with pytest.raises(TypeError, match="DataFrame"):
        hierps.Model(frame.to_dict(), **roles)


def test_no_covariates_is_an_error():
    frame, roles = study()
    with pytest.raises(DataError, match="at least one"):
        build(frame, roles, unit_covariates=[], group_covariates=[])


def test_column_in_two_roles_names_the_column_and_role():
    frame, roles = study()
    with pytest.raises(DataError, match="column 'y' cannot be both a covariate and the outcome"):
        build(frame, roles, unit_covariates=["x1", "y"])
    with pytest.raises(DataError, match=r"'x1'.*both as unit and group covariates"):
        build(frame, roles, group_covariates=["x1"])
    with pytest.raises(DataError, match="categorical columns 'x3' are not among the covariates"):
        build(frame, roles, unit_covariates=["x1"], categorical=["x3"])


def test_colliding_encoded_names_are_an_error():
    frame, roles = study()
    frame["x1_missing"] = np.random.default_rng(0).normal(size=len(frame))
    frame.loc[3, "x1"] = np.nan
    with pytest.raises(DataError, match=r"'x1_missing' and 'x1' both encode to .*'x1_missing'"):
        build(frame, roles, unit_covariates=["x1_missing", "x1"])


# --------------------------------------------------------------------------------------------
# 3. Formula constructor
# --------------------------------------------------------------------------------------------


def test_formula_gives_the_keyword_design():
    frame, _ = study(categorical_levels=3, n_group=1)
    formula = "z ~ x1 + x2 + C(c1) + v1 + (x1 + x2 | school)"
    from_formula = hierps.Model.from_formula(formula, frame, outcome="y").design
    keyword = hierps.Model(
        frame,
        treatment="z",
        group="school",
        outcome="y",
        unit_covariates=["x1", "x2", "c1"],
        group_covariates=["v1"],
        categorical=["c1"],
        varying_slopes=["x1", "x2"],
    ).design
    assert_same_design(from_formula, keyword)
    assert from_formula.roles == keyword.roles
    assert from_formula.varying_names == ("x1", "x2")
    assert from_formula.group_names == ("v1",)


def test_formula_categorical_marks_numeric_codes():
    frame, _ = study()
    frame["c9"] = np.random.default_rng(0).choice([3, 5], size=len(frame))
    design = hierps.Model.from_formula("z ~ x1 + C(c9) + (1 | school)", frame).design
    assert design.unit_names == ("x1", "c9[3]", "c9[5]")
    assert design.varying_names == ()
    plain = hierps.Model.from_formula("z ~ x1 + c9 + (1 | school)", frame).design
    assert plain.unit_names == ("x1", "c9")


def test_formula_on_learning_mindsets_gives_the_keyword_design():
    data = hierps.datasets.load_learning_mindsets()
    formula = "Z ~ S3 + C(C1) + C2 + C3 + X1 + X2 + (S3 + C2 + C3 | schoolid)"
    from_formula = hierps.Model.from_formula(formula, data, outcome="Y").design
    keyword = hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        outcome="Y",
        unit_covariates=["S3", "C1", "C2", "C3"],
        group_covariates=["X1", "X2"],
        categorical=["C1"],
        varying_slopes=["S3", "C2", "C3"],
    ).design
    assert_same_design(from_formula, keyword)
    assert from_formula.n_units == 10_391
    assert from_formula.n_groups == 76
    assert from_formula.group_names == ("X1", "X2")
    assert from_formula.varying_names == ("S3", "C2", "C3")
    assert from_formula.unit_names[1] == "C1[1]"
    assert {name for name in from_formula.unit_names if name.startswith("C1[")} == {
        f"C1[{code}]" for code in sorted(data["C1"].unique())
    }


@pytest.mark.parametrize(
    ("formula", "pattern"),
    [
        ("z ~ x1:x2 + (1 | school)", r"term x1:x2 .*interactions must be made a column"),
        ("z ~ x1*x2 + (1 | school)", r"term x1:x2 .*interactions must be made a column"),
        ("z ~ np.log(x1) + (1 | school)", r"np\.log\(x1\).*only C\(column\) may be called"),
        ("z ~ C(x1, Sum) + (1 | school)", r"only C\(column\) may be called"),
        ("z ~ x1 + x2", r"exactly one grouping column.*found none"),
        ("z ~ x1 + (1 | school) + (1 | v1)", r"exactly one grouping.*\['school', 'v1'\]"),
        ("z ~ x1 + (x1 | school:v1)", r"term school:v1 .*interactions"),
        ("z ~ 0 + x1 + (1 | school)", r"removes the intercept"),
        ("z ~ x1 - 1 + (1 | school)", r"removes the intercept"),
        ("z ~ x1 + (0 + x1 | school)", r"removes the group intercept"),
        ("z ~ x1 + (v1 | school)", r"'v1' is constant within every group of 'school'.*slope"),
        ("x1 + (1 | school)", r"cannot parse|treatment on the left"),
        ("z ~ x1 + (1 | school", r"cannot parse formula"),
    ],
)
def test_formula_errors(formula, pattern):
    frame, _ = study()
    with pytest.raises(FormulaError, match=pattern) as error:
        hierps.Model.from_formula(formula, frame, outcome="y")
    assert repr(formula) in str(error.value) or "'v1' is constant" in str(error.value)


@pytest.mark.parametrize("formula", ["z ~ x1 + schol + (1 | school)", "z ~ x1 + (1 | schol)"])
def test_formula_unknown_column_suggests_close_match(formula):
    frame, _ = study()
    with pytest.raises(DataError, match="'schol' is not in the data; did you mean 'school'"):
        hierps.Model.from_formula(formula, frame)


# --------------------------------------------------------------------------------------------
# 4. Properties
# --------------------------------------------------------------------------------------------


def property_frame(seed: int, missing: bool) -> tuple[pd.DataFrame, dict]:
    frame, roles = make_frame(
        seed=seed, sizes=(3, 12), n_groups=4, n_unit=2, n_group=2, categorical_levels=3
    )
    frame.index = pd.Index([f"u{i}" for i in range(len(frame))])
    if missing:
        frame.loc[frame.index[::7], "x2"] = np.nan
        frame.loc[frame["school"] == "s001", "v2"] = np.nan
    return frame, roles


def build_silently(frame: pd.DataFrame, roles: dict, **overrides) -> Design:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return build(frame, roles, **overrides)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    missing=st.booleans(),
    standardize=st.sampled_from([True, "pooled", False]),
    data=st.data(),
)
def test_design_is_invariant_to_row_order(seed, missing, standardize, data):
    frame, roles = property_frame(seed, missing)
    order = np.array(data.draw(st.permutations(range(len(frame)))))
    design = build_silently(frame, roles, standardize=standardize)
    shuffled = build_silently(frame.iloc[order], roles, standardize=standardize)

    pd.testing.assert_index_equal(shuffled.index, design.index[order])
    np.testing.assert_array_equal(shuffled.treatment, design.treatment[order])
    np.testing.assert_array_equal(shuffled.outcome, design.outcome[order])
    np.testing.assert_array_equal(shuffled.group_codes, design.group_codes[order])
    np.testing.assert_allclose(shuffled.unit_matrix, design.unit_matrix[order], atol=1e-12)

    pd.testing.assert_index_equal(shuffled.groups, design.groups)
    np.testing.assert_allclose(shuffled.group_matrix, design.group_matrix, atol=1e-12)
    assert shuffled.unit_names == design.unit_names
    assert shuffled.group_names == design.group_names
    np.testing.assert_array_equal(shuffled.varying, design.varying)
    pd.testing.assert_frame_equal(shuffled.unit_scaling, design.unit_scaling, rtol=1e-12)
    pd.testing.assert_frame_equal(shuffled.group_scaling, design.group_scaling, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    ids=st.lists(st.integers(0, 99_999), min_size=4, max_size=4, unique=True),
    shuffle=st.booleans(),
)
def test_group_ids_of_any_type_give_the_same_design(seed, ids, shuffle):
    frame, roles = property_frame(seed, missing=False)
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=seed)
    position = frame["school"].str.slice(1).astype(int).to_numpy()
    as_int = np.asarray(ids)[position]
    variants = {
        "int": as_int,
        "padded str": np.array([f"{i:05d}" for i in as_int], dtype=object),
        "categorical": pd.Categorical(as_int, categories=sorted(ids)),
        "categorical str": pd.Categorical([f"g{i:05d}" for i in as_int]),
        "tuple": pd.Series([(0, int(i)) for i in as_int], dtype=object, index=frame.index),
    }
    designs = {}
    for kind, values in variants.items():
        variant = frame.assign(school=values)
        designs[kind] = build_silently(variant, roles)
    reference = designs["int"]
    assert list(reference.groups) == sorted(ids)
    np.testing.assert_array_equal(reference.groups[reference.group_codes], as_int)
    for kind, design in designs.items():
        np.testing.assert_array_equal(design.group_codes, reference.group_codes, err_msg=kind)
        np.testing.assert_array_equal(design.unit_matrix, reference.unit_matrix, err_msg=kind)
        np.testing.assert_array_equal(design.group_matrix, reference.group_matrix, err_msg=kind)
        assert design.unit_names == reference.unit_names
        assert design.group_names == reference.group_names
        pd.testing.assert_frame_equal(design.unit_scaling, reference.unit_scaling)
        pd.testing.assert_frame_equal(design.group_scaling, reference.group_scaling)
        assert len(design.groups) == len(ids)
    assert list(designs["padded str"].groups) == [f"{i:05d}" for i in sorted(ids)]
    assert list(designs["tuple"].groups) == [(0, i) for i in sorted(ids)]


# --------------------------------------------------------------------------------------------
# 5. Summary
# --------------------------------------------------------------------------------------------


def test_summary_states_sizes_treated_per_group_and_covariates():
    frame, roles = make_frame(seed=8, sizes=[6, 9, 14, 30, 41], n_group=1, categorical_levels=2)
    model = hierps.Model(frame, **roles, varying_slopes=["x1", "x3"])
    text = model.summary()
    assert repr(model) == text == model.design.summary()

    treated = frame.groupby("school")["z"].sum()
    assert f"{len(frame)} units in 5 groups ('school')" in text
    assert f"treated: {frame['z'].sum()} " in text
    per_group = re.search(r"per group min (\S+) / median (\S+) / max (\S+)", text)
    assert per_group is not None
    assert float(per_group[1]) == treated.min()
    assert float(per_group[2]) == treated.median()
    assert float(per_group[3]) == treated.max()
    assert "group size: min 6 / median 14 / max 41" in text
    assert "unit covariates (5): varying slopes: x1, x3; fixed slopes: x2, c1[a], c1[b]" in text
    assert "group covariates (1): v1" in text
    assert "standardization: treated" in text
    assert "outcome: y" in text


def test_summary_of_many_covariates_is_shortened():
    data = hierps.datasets.load_learning_mindsets()
    model = hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        unit_covariates=["C1"],
        group_covariates=["X1"],
        categorical=["C1"],
    )
    text = repr(model)
    assert "10,391 units in 76 groups" in text
    assert "unit covariates (15)" in text
    assert "… (3 more)" in text
