"""Balance of squares and pairwise products of the unit covariates in the balance table."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import hand_built_posterior, make_frame

import hierps
from hierps.balance.table import balance_table
from hierps.balance.terms import expanded_design
from hierps.exceptions import HierpsWarning


@pytest.fixture(scope="module")
def fitted():
    frame, roles = make_frame(seed=2, sizes=(20, 80), n_groups=5, n_unit=2, categorical_levels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return frame, hierps.Model(frame, **roles).fit_map()


def test_expanded_design_adds_centred_squares_and_cross_source_products(fitted):
    frame, fit = fitted
    design = expanded_design(fit.design, squares=True, interactions=True)
    added = design.unit_names[len(fit.design.unit_names) :]
    # Squares of the continuous columns only; no product of two levels of c1.
    assert added[:2] == ("x1^2", "x2^2")
    assert "c1[a]:c1[b]" not in added and "x1:x2" in added and "x1:c1[a]" in added
    assert all(not name.startswith("c1[") or name.count("c1[") == 1 for name in added)
    treated = frame["z"].to_numpy() == 1
    x1, x2 = frame["x1"].to_numpy(), frame["x2"].to_numpy()
    c1 = x1 - x1[treated].mean()
    values = design.unit_frame(original_scale=True)
    np.testing.assert_allclose(values["x1^2"], c1**2)
    np.testing.assert_allclose(values["x1:x2"], c1 * (x2 - x2[treated].mean()))
    np.testing.assert_allclose(values["x1:c1[a]"], c1 * (frame["c1"] == "a"))
    assert not design.varying[len(fit.design.unit_names) :].any()
    assert expanded_design(fit.design) is fit.design


def test_balance_table_rows_for_the_added_terms(fitted):
    frame, fit = fitted
    plain = balance_table(fit)
    table = balance_table(fit, squares=True, interactions=True)
    names = list(table.global_["covariate"])
    n_model = len(fit.design.unit_names)
    assert names[:n_model] == list(plain.global_["covariate"])[:n_model]
    assert "x2^2" in names and "x1:x2" in names
    # The model's rows are unchanged.
    columns = ["smd_before", "smd_after", "var_ratio_after"]
    pd.testing.assert_frame_equal(
        table.global_.set_index("covariate").loc[plain.global_["covariate"], columns],
        plain.global_.set_index("covariate")[columns],
    )
    # The SMD of a square, by hand.
    treated = frame["z"].to_numpy() == 1
    w = fit.weights.to_numpy()
    x = frame["x2"].to_numpy()
    square = (x - x[treated].mean()) ** 2
    smd = (square[treated].mean() - np.average(square[~treated], weights=w[~treated])) / square[
        treated
    ].std(ddof=1)
    row = table.global_.set_index("covariate").loc["x2^2"]
    assert row["smd_after"] == pytest.approx(smd, rel=1e-9)
    assert set(table.across_groups["covariate"]) >= {"x1^2", "x1:x2"}
    assert len(table.by_group) == fit.design.n_groups * (len(names) - len(fit.design.group_names))


def test_posterior_intervals_cover_the_added_terms(fitted):
    _, fit = fitted
    post = hand_built_posterior(fit, draws=20)
    table = balance_table(post, squares=True)
    row = table.global_.set_index("covariate").loc["x1^2"]
    assert row["smd_after_lower"] <= row["smd_after_upper"]
    assert np.isfinite(row["smd_after_lower"])
    assert "recomputed" in table.per_draw
