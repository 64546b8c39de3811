"""Edge cases of the natstrat port: exact messages, defaults, labels, missingness, expansion."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import not_under_mutation

from hierps.exceptions import ArgumentError, DataError, FormulaError, HierpsWarning
from hierps.natstrat.constraints import _r_label, generate_constraints, stand

Z = np.array([1, 1, 1, 0, 0, 0])


def _quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return generate_constraints(*args, **kwargs)


# --- stand ----------------------------------------------------------------------------------


def test_stand_checks_autogen_missing():
    with pytest.raises(ArgumentError, match=r"^autogen_missing must be None or a non-negative"):
        stand(Z, [1.0, 2, 3, 4, 5, 6], autogen_missing=-1)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_autogen_missing_must_be_finite(value):
    with pytest.raises(
        ArgumentError,
        match=r"^autogen_missing must be None or a non-negative number, got -?(inf|nan)$",
    ):
        stand(Z, [1.0, 2, 3, 4, 5, 6], autogen_missing=value)


@pytest.mark.parametrize("value", [0, 0.5])
def test_autogen_missing_between_zero_and_one_is_accepted(value):
    x = np.array([1.0, np.nan, 3, 4, np.nan, 7])
    out = stand(Z, x, autogen_missing=value)
    assert out.missingness is not None
    data = pd.DataFrame({"x": x})
    con = generate_constraints("x ~ 1", Z, data, autogen_missing=value)
    assert con.importances["x_missing_1"] == value


def test_stand_rejects_non_numeric_with_name_x():
    with pytest.raises(DataError, match=r"^`x` must be numeric or boolean to be standardized$"):
        stand(Z, ["a", "b", "a", "b", "a", "b"])


def test_stand_names_unusable_dtype():
    x = pd.Series(pd.date_range("2020-01-01", periods=6))
    with pytest.raises(DataError, match=r"^column 'x' has dtype datetime64"):
        stand(Z, x)


def test_stand_accepts_boolean_and_one_group():
    out = stand(Z, np.array([True, False, True, False, False, True]))
    assert out.scale == pytest.approx(np.sqrt(1 / 3))
    out = stand(np.ones(4), [1.0, 2.0, 3.0, 4.0])
    assert out.scale == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_stand_nullable_integer_with_missing():
    x = pd.Series([1, 2, 4, 1, 5, pd.NA], dtype="Int64")
    out = stand(Z, x)
    assert np.isnan(out.covariate[5])
    np.testing.assert_allclose(out.covariate[:5], np.array([1, 2, 4, 1, 5]) / out.scale)
    assert out.scale == pytest.approx(np.std([1, 2, 4], ddof=1))


def test_stand_pooled_fallback_message_for_unnamed_x():
    x = [2.0, 2.0, 2.0, 1.0, 3.0, 5.0]
    msg = (
        "`x` has no variance among treated units; it is standardized by the pooled standard "
        "deviation (the average of the group variances) instead."
    )
    with pytest.warns(HierpsWarning, match=f"^{re.escape(msg)}$"):
        out = stand(Z, x)
    assert out.scale == pytest.approx(np.sqrt(4 / 2))


def test_constant_missingness_warns_and_keeps_scale():
    # missing for every control, for no treated unit: the indicator is constant in each group
    x = pd.Series([1.0, 2.0, 4.0, np.nan, np.nan, np.nan], name="bmi")
    msg = (
        "Missingness of `bmi` is constant within each treatment group; no missingness "
        "constraint is generated for it."
    )
    with pytest.warns(HierpsWarning, match=f"^{re.escape(msg)}$"):
        out = stand(Z, x)
    scale = np.std([1, 2, 4], ddof=1)
    assert out.missingness is None
    assert out.missingness_scale is None
    assert out.scale == pytest.approx(scale)
    np.testing.assert_allclose(out.covariate[:3], np.array([1, 2, 4]) / scale)


# --- treatment ------------------------------------------------------------------------------


def test_treatment_messages():
    x = [1.0, 2, 3, 4]
    with pytest.raises(DataError, match=r"^z must be one-dimensional, got shape \(2, 2\)$"):
        stand([[1, 0], [1, 0]], x)
    with pytest.raises(DataError, match=r"^z has missing values$"):
        stand([1, 0, np.nan, 0], x)


def test_treated_missing_lists_sorted_levels():
    z = pd.Series(["t", "c", "t", "c"])
    with pytest.raises(
        DataError, match=r"^treated='x' is not among the values of z: \['c', 't'\]$"
    ):
        stand(z, [1.0, 2, 3, 4], treated="x")


def test_treated_missing_lists_at_most_ten_levels():
    z = pd.Series(list("lkjihgfedcba"))
    with pytest.raises(
        DataError,
        match=r"^treated='x' is not among the values of z: "
        r"\['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'\]$",
    ):
        stand(z, np.arange(12.0), treated="x")


# --- labels and dtypes ----------------------------------------------------------------------


def test_r_label():
    assert _r_label(np.float64(2.0)) == "2"
    assert _r_label(np.int64(3)) == "3"
    assert _r_label(np.bool_(True)) == "TRUE"
    assert _r_label(2.0) == "2"
    assert _r_label(2.5) == "2.5"


def test_float_factor_levels_are_labelled_like_r():
    data = pd.DataFrame(
        {"x": [1.0, 2, 4, 1, 5, 3], "g": pd.Categorical([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])}
    )
    con = generate_constraints("x ~ -1 + g", Z, data)
    assert list(con.X.columns) == ["x_g1", "x_g2"]


def test_object_integers_sorted_by_label():
    g = pd.Series([9, 10, 9, 10, 9, 10], dtype=object)
    data = pd.DataFrame({"x": [1.0, 2, 4, 1, 5, 3], "g": g})
    con = generate_constraints("x ~ -1 + g", Z, data)
    assert list(con.X.columns) == ["x_g10", "x_g9"]
    np.testing.assert_array_equal(con.X["x_g10"].to_numpy() != 0, g.to_numpy() == 10)


def test_object_booleans_with_missing_are_logical():
    b = pd.Series([True, False, None, True, False, True], dtype=object)
    data = pd.DataFrame({"x": [1.0, 2, 4, 1, 5, 3], "b": b})
    con = _quiet("b ~ 1", Z, data)
    assert list(con.X.columns) == ["b_1", "b_missing_1"]
    con = _quiet("x ~ -1 + b", Z, data)
    assert list(con.X.columns) == ["x_bFALSE", "x_bTRUE"]


def test_all_true_boolean_population_keeps_false_level():
    data = pd.DataFrame({"x": [1.0, 2, 4, 1, 5, 3], "b": [True] * 6})
    with pytest.warns(
        HierpsWarning,
        match=r"^Level 'FALSE' of `b` is not used by any unit; no constraints are generated",
    ):
        con = generate_constraints("x ~ -1 + b", Z, data)
    assert list(con.X.columns) == ["x_bTRUE"]
    np.testing.assert_allclose(con.X["x_bTRUE"], data["x"] / np.std([1, 2, 4], ddof=1))


@pytest.mark.parametrize("side", ["d ~ 1", "x ~ d", "x ~ ."])
def test_unusable_dtype_is_named(side):
    data = pd.DataFrame({"x": [1.0, 2, 4, 1, 5, 3], "d": pd.date_range("2020-01-01", periods=6)})
    msg = (
        "column 'd' has dtype datetime64[us]; balance formulas need numeric, boolean, "
        "categorical or string columns"
    )
    data["d"] = data["d"].astype("datetime64[us]")
    with pytest.raises(DataError, match=f"^{re.escape(msg)}$"):
        generate_constraints(side, Z, data)


# --- left-hand side -------------------------------------------------------------------------


def test_nullable_integer_covariate_with_missing():
    data = pd.DataFrame({"x": pd.array([1, 2, 4, 1, 5, pd.NA], dtype="Int64")})
    con = generate_constraints("x ~ 1", Z, data)
    assert list(con.X.columns) == ["x_1", "x_missing_1"]
    assert np.isnan(con.X["x_1"].iloc[5])
    assert con.X["x_1"].iloc[0] == pytest.approx(1 / np.std([1, 2, 4], ddof=1))


def test_missing_factor_value_is_nan_in_every_dummy():
    g = pd.Categorical(["a", "b", None, "a", "b", "a"])
    data = pd.DataFrame({"g": g})
    con = generate_constraints("g ~ 1", Z, data)
    assert list(con.X.columns) == ["g.a_1", "g.a_missing_1", "g.b_1", "g.b_missing_1"]
    assert np.isnan(con.X.loc[2, "g.a_1"]) and np.isnan(con.X.loc[2, "g.b_1"])
    assert con.X.loc[0, "g.b_1"] == 0.0


def test_unused_level_warns_and_later_levels_follow():
    g = pd.Categorical(["a", "b", "a", "b", "a", "b"], categories=["a", "zz", "b"])
    data = pd.DataFrame({"g": g})
    msg = (
        "`g.zz` has no variance in any treatment group (e.g. an unused factor level); "
        "no constraints are generated for it."
    )
    with pytest.warns(HierpsWarning, match=f"^{re.escape(msg)}$"):
        con = generate_constraints("g ~ 1", Z, data)
    assert list(con.X.columns) == ["g.a_1", "g.b_1"]


@not_under_mutation
def test_warnings_point_at_the_caller():
    with pytest.warns(HierpsWarning) as stood:
        stand(Z, [2.0, 2.0, 2.0, 1.0, 3.0, 5.0])
    data = pd.DataFrame({"g": pd.Categorical(["a", "b"] * 3, categories=["a", "zz", "b"])})
    with pytest.warns(HierpsWarning) as generated:
        generate_constraints("g ~ 1", Z, data)
    assert stood and generated
    assert all(w.filename == __file__ for w in [*stood, *generated])


# --- right-hand side ------------------------------------------------------------------------


def test_numeric_term_is_excluded_and_later_terms_kept():
    data = pd.DataFrame(
        {"x": [1.0, 2, 4, 1, 5, 3], "age": [30.0, 40, 50, 60, 70, 80], "g": list("ababab")}
    )
    msg = (
        "`age` is excluded from the right-hand side: `age` is numeric, and populations need "
        "factor, character or boolean columns."
    )
    with pytest.warns(HierpsWarning, match=f"^{re.escape(msg)}$"):
        con = generate_constraints("x ~ -1 + age + g", Z, data)
    assert list(con.X.columns) == ["x_ga", "x_gb"]


def test_binary_numeric_term_with_missing():
    data = pd.DataFrame(
        {"x": [1.0, 2, 4, 1, 5, 3], "s": pd.array([1, 0, 1, 1, pd.NA, 1], dtype="Int64")}
    )
    msg = "1 units have a missing value of `s` and belong to none of its levels."
    with pytest.warns(HierpsWarning, match=f"^{re.escape(msg)}$"):
        con = generate_constraints("x ~ -1 + s", Z, data)
    assert list(con.X.columns) == ["x_s"]
    np.testing.assert_array_equal(con.X["x_s"].to_numpy() != 0, [1, 0, 1, 1, 0, 1])


def test_term_without_levels_does_not_stop_later_terms():
    data = pd.DataFrame(
        {"x": [1.0, 2, 4, 1, 5, 3], "h": ["u", "u", "u", "v", "v", "v"], "g": list("ababab")}
    )
    # h's only level with treated units is u... make h have no treated units at all
    data["h"] = pd.Categorical([None, None, None, "v", "v", "v"])
    con = _quiet("x ~ -1 + h + g", Z, data)
    assert list(con.X.columns) == ["x_ga", "x_gb"]


# --- generate_constraints -------------------------------------------------------------------


def test_generate_constraints_checks_autogen_missing():
    data = pd.DataFrame({"x": [1.0, 2, 4, 1, 5, 3]})
    with pytest.raises(ArgumentError, match=r"^autogen_missing must be None"):
        generate_constraints("x ~ 1", Z, data, autogen_missing=-1)


def test_data_type_message():
    with pytest.raises(DataError, match=r"^data must be a pandas DataFrame, got list$"):
        generate_constraints("x ~ 1", Z, [[1.0]] * 6)


def test_duplicate_columns_message():
    data = pd.DataFrame(np.zeros((6, 12)), columns=list("abcdefabcdef"))
    with pytest.raises(
        DataError, match=r"^data has duplicate column names: \['a', 'b', 'c', 'd', 'e'\]$"
    ):
        generate_constraints("a ~ 1", Z, data)


def test_single_string_formula():
    data = pd.DataFrame({"x": [1.0, 2, 4, 1, 5, 3]})
    con = generate_constraints("x ~ 1", Z, data)
    assert list(con.X.columns) == ["x_1"]
    assert con.X.columns.dtype == object
    assert con.importances.index.dtype == object


def test_no_constraints_have_float_importances():
    data = pd.DataFrame({"x": [1.0, 1, 1, 1, 1, 1]})
    con = _quiet("x ~ 1", Z, data)
    assert con.X.shape == (6, 0)
    assert con.importances.dtype == np.float64
    assert con.X.columns.dtype == object


def test_self_balance_warns_once_per_pair_and_keeps_other_populations():
    data = pd.DataFrame(
        {
            "g": pd.Categorical(list("ababab")),
            "h": pd.Categorical(list("uuvvuv")),
        }
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        con = generate_constraints("g + h ~ -1 + g + h", Z, data)
    messages = [str(w.message) for w in caught if issubclass(w.category, HierpsWarning)]
    assert messages == [
        "`g` is not balanced within `g`, which contains it.",
        "`h` is not balanced within `h`, which contains it.",
    ]
    assert all(issubclass(w.category, HierpsWarning) for w in caught)
    assert list(con.X.columns) == [
        "g.a_hu",
        "g.a_hv",
        "g.b_hu",
        "g.b_hv",
        "h.u_ga",
        "h.u_gb",
        "h.v_ga",
        "h.v_gb",
    ]


def test_self_balance_through_dot_is_silent():
    data = pd.DataFrame({"x": [1.0, 2, 4, 1, 5, 3], "g": pd.Categorical(list("ababab"))})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        con = generate_constraints("x + g ~ .", Z, data)
    assert [str(w.message) for w in caught] == []
    assert list(con.X.columns) == ["x_1", "x_ga", "x_gb", "g.a_1", "g.b_1"]


def test_duplicate_constraints_message():
    cols = list("abcdef")
    data = pd.DataFrame({c: [1.0, 2, 4, 1, 5, 3] for c in cols})
    lhs = " + ".join(cols)
    msg = (
        "the balance formulas generate duplicate constraints "
        "['a_1', 'b_1', 'c_1', 'd_1', 'e_1']; each covariate/population pair may appear only once"
    )
    with pytest.raises(FormulaError, match=f"^{re.escape(msg)}$"):
        generate_constraints([f"{lhs} ~ 1", f"{lhs} ~ 1"], Z, data)


def test_stand_nullable_boolean_with_missing():
    x = pd.Series([True, None, False, True, False, False], dtype="boolean")
    out = stand(Z, x)
    assert np.isnan(out.covariate[1])
    np.testing.assert_allclose(out.covariate[[0, 2]], np.array([1.0, 0.0]) / out.scale)
    assert out.scale == pytest.approx(np.sqrt(0.5))


def test_stand_rejects_categorical_series_of_numbers():
    x = pd.Series(pd.Categorical([1.0, 2, 3, 1, 2, 3]), name="grade")
    with pytest.raises(DataError, match=r"^`x` must be numeric or boolean to be standardized$"):
        stand(Z, x)
