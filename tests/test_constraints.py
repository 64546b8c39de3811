"""Tests of the natstrat port: parity with R fixtures, fixed R defects, bad inputs, properties."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hierps.exceptions import DataError, FormulaError, HierpsWarning
from hierps.natstrat.constraints import Constraints, generate_constraints, stand

FIXTURES = Path(__file__).parent / "fixtures" / "natstrat"
TOY_FORMULA = "color + number ~ category"
AGE_LABELS = ["< 40 years", "40 - 50 years", "> 50 years"]
SEXES = ["Male", "Female"]
RACES = [
    "Mexican American",
    "Other Hispanic",
    "Non-Hispanic White",
    "Non-Hispanic Black",
    "Other Race - Including Multi-Racial",
]
EDUCATION = [
    "< Grade 9",
    "9-11th grade",
    "High school grad/GED",
    "Some college or AA degree",
    "College graduate or above",
]
NH_EXAMPLE1 = ["age + race + education + povertyr + bmi ~ 1 + strata"]


# --- fixtures and helpers -------------------------------------------------------------------


def _read_toy() -> pd.DataFrame:
    # The quoted "1"/"2" categories are character data in R; keep them strings here.
    return pd.read_csv(FIXTURES / "toy_input.csv", dtype={"color": str, "category": str})


@pytest.fixture
def toy() -> pd.DataFrame:
    return _read_toy()


@pytest.fixture(scope="module")
def nh() -> pd.DataFrame:
    data = pd.read_csv(FIXTURES / "nh0506.csv")
    data["age_cat"] = pd.cut(data["age"], bins=[19, 39, 50, 85], labels=AGE_LABELS, right=True)
    data["sex"] = pd.Categorical(data["sex"], categories=SEXES)
    data["race"] = pd.Categorical(data["race"], categories=RACES, ordered=True)
    data["education"] = pd.Categorical(data["education"], categories=EDUCATION, ordered=True)
    # R's `age_cat : sex`: levels "age:sex" with the age category varying slowest.
    data["strata"] = pd.Categorical(
        data["age_cat"].astype(str) + ":" + data["sex"].astype(str),
        categories=[f"{a}:{s}" for a in AGE_LABELS for s in SEXES],
    )
    return data


def _quiet(*args, **kwargs) -> Constraints:
    """generate_constraints with HierpsWarnings silenced (R warns on the toy data too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return generate_constraints(*args, **kwargs)


def assert_X_matches(X: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(X.columns) == list(expected.columns)
    assert X.shape == expected.shape
    actual, reference = X.to_numpy(dtype=float), expected.to_numpy(dtype=float)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(reference))
    np.testing.assert_allclose(actual, reference, rtol=0, atol=1e-6, equal_nan=True)


def assert_importances_match(importances: pd.Series, expected: pd.DataFrame) -> None:
    assert list(importances.index) == list(expected["name"])
    np.testing.assert_allclose(
        importances.to_numpy(), expected["importance"].to_numpy(), rtol=0, atol=1e-6
    )


# --- parity with natstrat 2.0.1 -------------------------------------------------------------


def test_toy_X_default_matches_r(toy: pd.DataFrame) -> None:
    # R warns because the Blue indicator has no variance among the treated.
    with pytest.warns(HierpsWarning, match="colorBlue"):
        result = generate_constraints([TOY_FORMULA], toy["z"], toy)
    assert_X_matches(result.X, pd.read_csv(FIXTURES / "toy_X_default.csv"))
    assert result.X.index.equals(toy.index)
    assert list(result.importances.index) == list(result.X.columns)


def test_toy_X_pooled_matches_r_without_warnings(toy: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = generate_constraints([TOY_FORMULA], toy["z"], toy, denom_variance="pooled")
    assert_X_matches(result.X, pd.read_csv(FIXTURES / "toy_X_pooled.csv"))


_TOY_IMPORTANCES = pd.read_csv(FIXTURES / "toy_importances.csv")


@pytest.mark.parametrize("call", list(dict.fromkeys(_TOY_IMPORTANCES["call"])))
def test_toy_importances_match_r(call: str, toy: pd.DataFrame) -> None:
    expected = _TOY_IMPORTANCES[_TOY_IMPORTANCES["call"] == call]
    (formula,) = expected["formula"].unique()
    (weight_by_size,) = expected["weight_by_size"].unique()
    (autogen_missing,) = expected["autogen_missing"].unique()
    result = _quiet(
        [formula],
        toy["z"],
        toy,
        weight_by_size=float(weight_by_size),
        autogen_missing=float(autogen_missing),
    )
    assert_importances_match(result.importances, expected)
    # Coefficients only change importances, never the constraint matrix.
    assert_X_matches(result.X, pd.read_csv(FIXTURES / "toy_X_default.csv"))


def test_nh0506_example1_matches_r(nh: pd.DataFrame) -> None:
    result = generate_constraints(NH_EXAMPLE1, nh["z"], nh)
    assert result.X.shape == (2928, 105)
    assert_X_matches(result.X, pd.read_csv(FIXTURES / "nh0506_example1_X.csv"))
    assert_importances_match(
        result.importances, pd.read_csv(FIXTURES / "nh0506_example1_importances.csv")
    )


def test_nh0506_example1_is_fast(nh: pd.DataFrame) -> None:
    start = time.perf_counter()
    generate_constraints(NH_EXAMPLE1, nh["z"], nh)
    assert time.perf_counter() - start < 0.5


def test_nh0506_example2_importances_match_r(nh: pd.DataFrame) -> None:
    formulas = ["age + 2 * race ~ 2 + strata", "education ~ 1 + 2 * strata", "povertyr", "bmi"]
    result = generate_constraints(formulas, nh["z"], nh, default_rhs="0 + strata")
    assert_importances_match(
        result.importances, pd.read_csv(FIXTURES / "nh0506_example2_importances.csv")
    )


# --- R defects that are fixed ---------------------------------------------------------------


@pytest.mark.parametrize("rhs", ["-1 + category", "category - 1", "- 1 + category"])
def test_minus_one_drops_intercept_constraints(rhs: str, toy: pd.DataFrame) -> None:
    full = _quiet([TOY_FORMULA], toy["z"], toy)
    dropped = _quiet([f"color + number ~ {rhs}"], toy["z"], toy)
    kept = [c for c in full.X.columns if not c.endswith("_1")]
    assert list(dropped.X.columns) == kept
    assert (dropped.importances > 0).all()
    pd.testing.assert_frame_equal(dropped.X, full.X[kept])
    pd.testing.assert_series_equal(dropped.importances, full.importances[kept])


def test_zero_intercept_keeps_constraints_with_zero_importance(toy: pd.DataFrame) -> None:
    result = _quiet(["number ~ 0 + category"], toy["z"], toy)
    assert result.importances["number_1"] == 0
    assert result.importances["number_missing_1"] == 0
    assert result.importances["number_category1"] == 1


def test_level_without_treated_units_is_skipped_with_warning(toy: pd.DataFrame) -> None:
    toy.loc[0, "category"] = "3"  # a control-only level
    with pytest.warns(HierpsWarning, match=r"'3' of `category` has no treated units"):
        result = generate_constraints(["number ~ category"], toy["z"], toy)
    assert not any("category3" in name for name in result.X.columns)
    assert "number_category1" in result.X.columns
    assert "number_category2" in result.X.columns


def test_weight_by_size_averages_over_kept_levels(toy: pd.DataFrame) -> None:
    toy.loc[0, "category"] = "3"
    result = _quiet(["number ~ category"], toy["z"], toy, weight_by_size=1)
    # Treated counts 2 and 3 in the kept levels: the skipped level does not enter the mean.
    assert result.importances["number_category1"] == pytest.approx(1.25)
    assert result.importances["number_category2"] == pytest.approx(2.5 / 3)


@pytest.mark.filterwarnings("ignore:.*no variance among treated units")
def test_unused_factor_level_is_skipped_with_warning(toy: pd.DataFrame) -> None:
    reference = _quiet([TOY_FORMULA], toy["z"], toy)
    toy["category"] = pd.Categorical(toy["category"], categories=["1", "2", "4"])
    with pytest.warns(HierpsWarning, match=r"'4' of `category` is not used"):
        result = generate_constraints([TOY_FORMULA], toy["z"], toy)
    pd.testing.assert_frame_equal(result.X, reference.X)
    pd.testing.assert_series_equal(result.importances, reference.importances)


@pytest.mark.filterwarnings("ignore:.*no variance among treated units")
def test_unused_level_on_left_hand_side_is_skipped(toy: pd.DataFrame) -> None:
    toy["color"] = pd.Categorical(toy["color"], categories=["Blue", "Green", "Red", "White"])
    with pytest.warns(HierpsWarning, match=r"color\.Green"):
        result = generate_constraints(["color ~ category"], toy["z"], toy)
    assert not any("Green" in name for name in result.X.columns)
    # Factor (not character) dummies are named with natstrat's '.' separator.
    assert "color.Blue_category2" in result.X.columns
    assert np.isfinite(result.X.to_numpy()).all()


def test_dot_on_right_hand_side(toy: pd.DataFrame) -> None:
    # `.` expands to the character columns color and category (z and number are numeric);
    # Blue has no treated units, so it defines no population.
    with pytest.warns(HierpsWarning, match="'Blue' of `color` has no treated units"):
        result = generate_constraints(["number ~ ."], toy["z"], toy)
    levels = ["colorRed", "colorWhite", "category1", "category2"]
    expected = ["number_1", "number_missing_1"]
    for level in levels:
        expected += [f"number_{level}", f"number_missing_{level}"]
    assert list(result.X.columns) == expected
    reference = _quiet([TOY_FORMULA], toy["z"], toy)
    pd.testing.assert_series_equal(result.X["number_category1"], reference.X["number_category1"])
    red = (toy["color"] == "Red").to_numpy()
    np.testing.assert_array_equal(
        result.X["number_colorRed"].to_numpy(),
        np.where(red, reference.X["number_1"].to_numpy(), 0.0),
    )


def test_dot_on_right_hand_side_skips_the_covariate_itself(toy: pd.DataFrame) -> None:
    result = _quiet(["color ~ . - category"], toy["z"], toy)
    assert list(result.X.columns) == ["colorBlue_1", "colorRed_1", "colorWhite_1"]


def test_dot_on_left_hand_side_with_removal(toy: pd.DataFrame) -> None:
    reference = _quiet([TOY_FORMULA], toy["z"], toy)
    result = _quiet([". - z ~ category"], toy["z"], toy)
    pd.testing.assert_frame_equal(result.X, reference.X)
    pd.testing.assert_series_equal(result.importances, reference.importances)


# --- other formula features -----------------------------------------------------------------


def test_interaction_matches_precomputed_strata(nh: pd.DataFrame) -> None:
    strata = generate_constraints(["age + povertyr ~ strata"], nh["z"], nh)
    interaction = generate_constraints(["age + povertyr ~ age_cat:sex"], nh["z"], nh)
    renamed = [name.replace("strata", "age_cat:sex") for name in strata.X.columns]
    assert list(interaction.X.columns) == renamed
    assert "age_age_cat:sex< 40 years:Male" in interaction.X.columns
    np.testing.assert_array_equal(interaction.X.to_numpy(), strata.X.to_numpy())
    np.testing.assert_array_equal(interaction.importances.to_numpy(), strata.importances.to_numpy())


def test_crossing_expands_main_effects_and_interaction(nh: pd.DataFrame) -> None:
    result = generate_constraints(["age ~ 3 * age_cat * sex"], nh["z"], nh)
    expected = (
        ["age_1"]
        + [f"age_age_cat{a}" for a in AGE_LABELS]
        + [f"age_sex{s}" for s in SEXES]
        + [f"age_age_cat:sex{a}:{s}" for a in AGE_LABELS for s in SEXES]
    )
    assert list(result.X.columns) == expected
    assert result.importances["age_1"] == 1
    assert (result.importances.iloc[1:] == 3).all()


def test_main_effects_come_before_interactions(nh: pd.DataFrame) -> None:
    # As in R's terms(): terms are ordered by degree, whatever order they are written in.
    result = generate_constraints(["age ~ age_cat:sex + sex"], nh["z"], nh)
    assert list(result.X.columns[:4]) == [
        "age_1",
        "age_sexMale",
        "age_sexFemale",
        ("age_age_cat:sex< 40 years:Male"),
    ]


def test_coefficient_after_term_and_intercept_weight(toy: pd.DataFrame) -> None:
    before = _quiet(["3 * color + number ~ 2 * category"], toy["z"], toy)
    after = _quiet(["color * 3 + number ~ category * 2"], toy["z"], toy)
    pd.testing.assert_series_equal(before.importances, after.importances)
    weighted = _quiet(["number ~ 4 + category"], toy["z"], toy)
    assert weighted.importances["number_1"] == 4
    assert weighted.importances["number_missing_1"] == 200


def test_autogen_missing_none_drops_missingness_constraints(toy: pd.DataFrame) -> None:
    result = _quiet([TOY_FORMULA], toy["z"], toy, autogen_missing=None)
    assert not any("missing" in name for name in result.X.columns)
    assert result.X["number_1"].isna().sum() == 3


def test_boolean_columns(toy: pd.DataFrame) -> None:
    toy["flag"] = toy["number"].fillna(0) > 7
    result = _quiet(["flag + number ~ flag"], toy["z"], toy, autogen_missing=None)
    # A boolean covariate is balanced as 0/1 numbers; as a population it has two levels.
    assert list(result.X.columns) == ["flag_1", "number_1", "number_flagFALSE", "number_flagTRUE"]
    np.testing.assert_allclose(
        result.X["flag_1"].to_numpy(),
        stand(toy["z"], toy["flag"].astype(float)).covariate,
    )


def test_dotted_and_backticked_names(toy: pd.DataFrame) -> None:
    renamed = toy.rename(columns={"number": "my.number", "category": "the category"})
    result = _quiet(["my.number ~ `the category`"], renamed["z"], renamed)
    reference = _quiet(["number ~ category"], toy["z"], toy)
    assert list(result.X.columns) == [
        name.replace("number", "my.number").replace("category", "the category")
        for name in reference.X.columns
    ]
    np.testing.assert_array_equal(result.X.to_numpy(), reference.X.to_numpy())


@pytest.mark.filterwarnings("ignore:.*no variance among treated units")
def test_numeric_right_hand_side_is_excluded_with_warning(toy: pd.DataFrame) -> None:
    with pytest.warns(HierpsWarning, match="`number` is numeric"):
        result = generate_constraints(["color ~ number"], toy["z"], toy)
    assert all(name.endswith("_1") for name in result.X.columns)


def test_missing_population_values_belong_to_no_level(toy: pd.DataFrame) -> None:
    toy.loc[[2, 12], "category"] = None
    with pytest.warns(HierpsWarning, match="2 units have a missing value of `category`"):
        result = generate_constraints(["number ~ category"], toy["z"], toy)
    level_columns = result.X[["number_category1", "number_category2"]].to_numpy()
    np.testing.assert_array_equal(level_columns[[2, 12]], 0.0)
    assert result.X.loc[2, "number_1"] != 0


def test_numeric_zero_one_column_is_one_population(toy: pd.DataFrame) -> None:
    toy["late"] = (toy.index >= 7).astype(int)
    result = _quiet(["number ~ late"], toy["z"], toy)
    assert list(result.X.columns) == [
        "number_1",
        "number_missing_1",
        "number_late",
        ("number_missing_late"),
    ]
    np.testing.assert_array_equal(result.X["number_late"].to_numpy()[:7], 0.0)


def test_treated_label_and_series_index(toy: pd.DataFrame) -> None:
    labelled = toy.set_index(pd.Index([f"u{i}" for i in range(len(toy))]))
    arms = np.where(toy["z"] == 1, "smoker", "never")
    result = _quiet([TOY_FORMULA], arms, labelled, treated="smoker")
    reference = _quiet([TOY_FORMULA], toy["z"], toy)
    assert result.X.index.equals(labelled.index)
    np.testing.assert_array_equal(result.X.to_numpy(), reference.X.to_numpy())


# --- stand ----------------------------------------------------------------------------------


def test_stand_uses_treated_sd_and_pooled_missingness() -> None:
    z = np.array([0, 0, 0, 1, 1, 1])
    x = np.array([1.0, np.nan, 3.0, 4.0, 6.0, 8.0])
    result = stand(z, x)
    np.testing.assert_allclose(result.covariate, x / 2.0)
    assert result.scale == 2.0
    # No treated unit is missing, so the missingness falls back to the pooled SD.
    pooled_sd = np.sqrt(np.mean([np.var([0, 1, 0], ddof=1), 0.0]))
    assert result.missingness_scale == pytest.approx(pooled_sd)
    pooled = stand(z, x, denom_variance="pooled")
    assert pooled.scale == pytest.approx(np.sqrt((2.0 + 4.0) / 2))
    assert stand(z, x, autogen_missing=None).missingness is None


def test_stand_falls_back_to_pooled_with_warning() -> None:
    z = pd.Series([0, 0, 0, 1, 1])
    x = pd.Series([1.0, 2.0, 3.0, 5.0, 5.0], name="dose")
    with pytest.warns(HierpsWarning, match="`dose` has no variance among treated"):
        result = stand(z, x)
    assert result.scale == pytest.approx(np.sqrt(0.5))


def test_stand_fallback_switches_missingness_to_pooled_too() -> None:
    # natstrat switches the whole covariate to "pooled", so the missingness indicator uses the
    # pooled SD even though its treated SD is positive.
    z = np.array([0, 0, 0, 0, 1, 1, 1])
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 5.0, np.nan])
    with pytest.warns(HierpsWarning):
        result = stand(z, x)
    miss_sd = np.sqrt(np.mean([np.var([0, 0, 1, 0], ddof=1), np.var([0, 0, 1], ddof=1)]))
    assert result.missingness_scale == pytest.approx(miss_sd)


def test_stand_rejects_bad_inputs() -> None:
    with pytest.raises(DataError, match="treated"):
        stand([0, 1, 1], [1.0, 2.0, 3.0], treated=2)
    with pytest.raises(DataError, match="no variance"):
        stand([0, 1, 0, 1], [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(DataError, match="entries"):
        stand([0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="denom_variance"):
        stand([0, 1, 1], [1.0, 2.0, 3.0], denom_variance="control")


# --- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formula", "unknown", "suggestion"),
    [("numbr ~ category", "numbr", "number"), ("number ~ 1 + categroy", "categroy", "category")],
)
def test_unknown_column_is_named_with_suggestions(
    formula: str, unknown: str, suggestion: str, toy: pd.DataFrame
) -> None:
    with pytest.raises(FormulaError, match=f"unknown column '{unknown}'.*'{suggestion}'"):
        generate_constraints([formula], toy["z"], toy)


@pytest.mark.parametrize(
    "formula",
    [
        "number ~ ~ category",
        "number ~",
        "~ category",
        "number + ~ category",
        "log(number) ~ category",
        "number ~ category / 2",
        "number ~ (category",
        "number ~ category ^ 2",
        "number:color ~ category",
        "2 ~ category",
        "number ~ -2 * category",
        "number ~ 1 + 2 + category",
        "number ~ -1",
        "number ~ 2 * category + 3 * category",
    ],
)
def test_malformed_formula_raises(formula: str, toy: pd.DataFrame) -> None:
    with pytest.raises(FormulaError):
        generate_constraints([formula], toy["z"], toy)


def test_bare_name_needs_default_rhs(toy: pd.DataFrame) -> None:
    with pytest.raises(FormulaError, match="default_rhs"):
        generate_constraints(["number"], toy["z"], toy)


def test_duplicate_constraints_raise(toy: pd.DataFrame) -> None:
    with pytest.raises(FormulaError, match="duplicate"):
        _quiet(["number ~ 1", "number ~ category"], toy["z"], toy)


@pytest.mark.parametrize(
    ("z", "treated", "message"),
    [
        (np.ones(15), 1, "at least 2 distinct values"),
        (np.r_[np.zeros(10), np.ones(5)], 2, "not among the values"),
        (np.r_[np.zeros(10), np.ones(4)], 1, "14 entries"),
        (np.r_[np.zeros(10), np.ones(4), np.nan], 1, "missing"),
    ],
)
def test_bad_treatment_raises(z: np.ndarray, treated: int, message: str, toy: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=message):
        generate_constraints([TOY_FORMULA], z, toy, treated=treated)


def test_bad_options_raise(toy: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="weight_by_size"):
        generate_constraints([TOY_FORMULA], toy["z"], toy, weight_by_size=2)
    with pytest.raises(ValueError, match="denom_variance"):
        generate_constraints([TOY_FORMULA], toy["z"], toy, denom_variance="control")
    with pytest.raises(DataError, match="DataFrame"):
        generate_constraints([TOY_FORMULA], toy["z"], toy.to_dict())


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(coef=st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False))
def test_importances_scale_linearly_with_lhs_coefficient(coef: float) -> None:
    toy = _read_toy()
    base = _quiet([TOY_FORMULA], toy["z"], toy)
    scaled = _quiet([f"color + {coef!r} * number ~ category"], toy["z"], toy)
    is_number = base.importances.index.str.startswith("number_")
    np.testing.assert_allclose(
        scaled.importances[is_number], coef * base.importances[is_number], rtol=1e-12
    )
    np.testing.assert_array_equal(scaled.importances[~is_number], base.importances[~is_number])
    pd.testing.assert_frame_equal(scaled.X, base.X)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.booleans(),
            st.one_of(st.none(), st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)),
        ),
        min_size=4,
        max_size=40,
    ),
    pooled=st.booleans(),
)
def test_intercept_only_columns_equal_stand(
    rows: list[tuple[bool, float | None]], pooled: bool
) -> None:
    z = np.array([int(t) for t, _ in rows])
    x = np.array([np.nan if v is None else v for _, v in rows])
    assume(0 < z.sum() < len(z))
    denom = "pooled" if pooled else "treated"
    data = pd.DataFrame({"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = generate_constraints(["x ~ 1"], z, data, denom_variance=denom)
        try:
            expected = stand(z, x, denom_variance=denom)
        except DataError:
            # Constant within both groups: nothing to standardize, so no constraints.
            assert result.X.shape == (len(z), 0)
            return
    np.testing.assert_array_equal(result.X["x_1"].to_numpy(), expected.covariate)
    if expected.missingness is None:
        assert list(result.X.columns) == ["x_1"]
    else:
        np.testing.assert_array_equal(result.X["x_missing_1"].to_numpy(), expected.missingness)
        assert result.importances["x_missing_1"] == 50


# --- several treatment groups ---------------------------------------------------------------


def _r_stand(
    z: np.ndarray, x: np.ndarray, denom: str, treated: object
) -> tuple[np.ndarray, np.ndarray | None]:
    """Line-by-line transcription of natstrat 2.0.1's ``stand`` (R/stand.R), for reference."""
    levels = sorted(set(z.tolist()))

    def var(v: np.ndarray) -> float:  # R's var(na.rm = TRUE) with NA -> 0
        v = v[~np.isnan(v)]
        return float(np.var(v, ddof=1)) if len(v) > 1 else 0.0

    variances = np.array([var(x[z == g]) for g in levels])
    if denom == "treated":
        scl = np.sqrt(variances[levels.index(treated)])
        if scl == 0:
            denom = "pooled"
    if denom == "pooled":
        scl = np.sqrt(variances.mean())
    miss = np.isnan(x).astype(float)
    if not miss.any():
        return x / scl, None
    pooled_miss = np.sqrt(np.mean([var(miss[z == g]) for g in levels]))
    scl_miss = pooled_miss
    if denom == "treated":
        scl_miss = np.sqrt(var(miss[z == treated])) or pooled_miss
    return x / scl, miss / scl_miss


def _r_toy_X(toy: pd.DataFrame, z: np.ndarray, denom: str, treated: object) -> pd.DataFrame:
    """natstrat's X for ``color + number ~ category`` built from :func:`_r_stand`."""
    populations = {"1": np.ones(len(toy), bool)}
    for level in ("1", "2"):
        populations[f"category{level}"] = toy["category"].eq(level).to_numpy()
    columns: dict[str, np.ndarray] = {}
    covariates = {"number": toy["number"].to_numpy(dtype=float)}
    for colour in ("Blue", "Red", "White"):
        covariates[f"color{colour}"] = toy["color"].eq(colour).to_numpy(dtype=float)
    for name, x in covariates.items():
        covariate, missingness = _r_stand(z, x, denom, treated)
        for label, inside in populations.items():
            columns[f"{name}_{label}"] = np.where(inside, covariate, 0.0)
            if missingness is not None:
                columns[f"{name}_missing_{label}"] = np.where(inside, missingness, 0.0)
    return pd.DataFrame(columns)


def _three_groups(toy: pd.DataFrame) -> np.ndarray:
    # Controls split in two groups ("2": rows 0-4, "0": rows 5-9); treated stay 1.
    return np.r_[np.full(5, 2.0), np.zeros(5), np.ones(5)].astype(int)


def test_transcribed_r_stand_reproduces_two_group_fixtures(toy: pd.DataFrame) -> None:
    z = toy["z"].to_numpy()
    for denom, fixture in [("treated", "toy_X_default.csv"), ("pooled", "toy_X_pooled.csv")]:
        expected = pd.read_csv(FIXTURES / fixture)
        reference = _r_toy_X(toy, z, denom, 1)[expected.columns]
        assert_X_matches(reference, expected)


@pytest.mark.parametrize("denom", ["treated", "pooled"])
@pytest.mark.parametrize("treated", [1, 2])
def test_three_groups_match_r(denom: str, treated: int, toy: pd.DataFrame) -> None:
    z = _three_groups(toy)
    result = _quiet([TOY_FORMULA], z, toy, denom_variance=denom, treated=treated)
    expected = _r_toy_X(toy, z, denom, treated)
    assert set(result.X.columns) == set(expected.columns)
    assert_X_matches(result.X, expected[result.X.columns])


def test_three_groups_change_only_the_scale(toy: pd.DataFrame) -> None:
    # number has positive treated variance: its columns are the two-group ones exactly.
    two = _quiet([TOY_FORMULA], toy["z"], toy)
    three = _quiet([TOY_FORMULA], _three_groups(toy), toy)
    assert list(three.X.columns) == list(two.X.columns)
    for column in ["number_1", "number_category1", "number_category2"]:
        np.testing.assert_array_equal(three.X[column], two.X[column])
    # colorBlue has no treated variance, so the pooled SD over three groups is used:
    # variances 0.3 (rows 5-9, three Blue), 0 (treated), 0 (rows 0-4) -> sqrt(0.1).
    blue = toy["color"].eq("Blue").to_numpy(dtype=float)
    np.testing.assert_allclose(three.X["colorBlue_1"], blue / np.sqrt(0.1), atol=1e-12)
    pd.testing.assert_series_equal(three.importances, two.importances)


def test_three_groups_weight_by_size_counts_treated(toy: pd.DataFrame) -> None:
    # Treated counts per category are 2 and 3 whatever the number of control groups.
    two = _quiet([TOY_FORMULA], toy["z"], toy, weight_by_size=1)
    three = _quiet([TOY_FORMULA], _three_groups(toy), toy, weight_by_size=1)
    pd.testing.assert_series_equal(three.importances, two.importances)
    assert two.importances["number_category1"] == pytest.approx(2.5 / 2)
    assert two.importances["number_category2"] == pytest.approx(2.5 / 3)
    # With group 2 (rows 0-4) as the treated group: counts 3 (category 1) and 2 (category 2).
    other = _quiet([TOY_FORMULA], _three_groups(toy), toy, weight_by_size=1, treated=2)
    assert other.importances["number_category1"] == pytest.approx(2.5 / 3)
    assert other.importances["number_category2"] == pytest.approx(2.5 / 2)


def test_stand_three_groups_by_hand() -> None:
    z = np.array(["a", "a", "a", "b", "b", "c", "c", "c", "c"])
    x = np.array([1.0, 2.0, 3.0, 5.0, np.nan, 0.0, 2.0, 4.0, np.nan])
    # Variances: a 1, b undefined (one value) -> 0, c 4.
    treated = stand(z, x, treated="c")
    assert treated.scale == pytest.approx(2.0)
    # Missingness variances: a 0, b 0.5, c 0.25; treated c -> sqrt(0.25).
    assert treated.missingness_scale == pytest.approx(0.5)
    pooled = stand(z, x, denom_variance="pooled", treated="c")
    assert pooled.scale == pytest.approx(np.sqrt(5 / 3))
    assert pooled.missingness_scale == pytest.approx(np.sqrt(0.75 / 3))
    # Treated group a has no missing values: its missingness falls back to pooled.
    assert stand(z, x, treated="a").missingness_scale == pytest.approx(np.sqrt(0.75 / 3))
    with pytest.warns(HierpsWarning, match="no variance among treated"):
        fallback = stand(z, x, treated="b")
    assert fallback.scale == pytest.approx(np.sqrt(5 / 3))
    # No centering: the covariate is only divided.
    np.testing.assert_allclose(treated.covariate, x / 2.0)
