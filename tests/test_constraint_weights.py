"""Constraints as priors: weights on a natstrat constraint matrix, and the hierarchical case."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_frame

import hierps
from hierps.exceptions import HierpsWarning
from hierps.natstrat.constraints import Constraints
from hierps.natstrat.weights import constraint_weights


def test_hierarchical_model_is_the_school_constraint_special_case():
    """`. ~ 1 + school` plus per-school count columns reproduces fit_map's weights."""
    frame, roles = make_frame(seed=41, sizes=(10, 60), n_groups=5, n_unit=2, n_group=0)
    treated = frame["z"] == 1
    # natstrat scales covariates by the treated SD without centring: give the model the same x.
    for column in ("x1", "x2"):
        frame[column] = frame[column] / frame.loc[treated, column].std(ddof=1)
    hyper = dict(sigma_alpha=0.8, sigma_beta=0.6, sigma_mu_beta=1.5, sigma_intercept=2.0)
    model = hierps.Model(frame, **roles, standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        expected = model.fit_map(**hyper)
        constraints = hierps.generate_constraints(
            ["x1 + x2 ~ 1 + school"], frame["z"], frame[["x1", "x2", "school"]]
        )
    scale = 0.5
    X = constraints.X.copy()
    importances = constraints.importances.copy()
    importances[:] = (
        np.where(
            X.columns.str.endswith("_1"), hyper["sigma_mu_beta"] ** 2, hyper["sigma_beta"] ** 2
        )
        / scale
    )
    for school in model.design.groups:
        name = f"count_school{school}"
        X[name] = (frame["school"] == school).astype(float)
        importances[name] = hyper["sigma_alpha"] ** 2 / scale
    np.testing.assert_allclose(X[["x1_1", "x2_1"]].to_numpy(), frame[["x1", "x2"]].to_numpy())
    fit = constraint_weights(
        Constraints(X, importances),
        frame["z"],
        scale=scale,
        sigma_intercept=hyper["sigma_intercept"],
    )
    np.testing.assert_allclose(fit.weights.to_numpy(), expected.weights.to_numpy(), rtol=1e-8)


def test_balance_follows_the_first_order_conditions():
    frame, _ = make_frame(seed=42, sizes=(20, 80), n_groups=4, n_unit=2, n_group=0)
    frame["x1"] = frame["x1"].where(frame.index % 7 != 0)  # missing values → indicators
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        constraints = hierps.generate_constraints(
            ["x1 + 3 * x2 ~ 1 + school"], frame["z"], frame[["x1", "x2", "school"]]
        )
    fit = constraint_weights(constraints, frame["z"], scale=0.2)
    assert fit.converged and fit.max_gradient <= 1e-8
    balance = fit.balance()
    assert list(balance.index) == list(constraints.X.columns)
    expected = -fit.coefficients / (0.2 * constraints.importances)
    np.testing.assert_allclose(balance["imbalance"], expected, rtol=1e-6, atol=1e-7)
    # The importance-weighted squared imbalance is far below that of the unweighted sample.
    before = balance["control_total_before"] - balance["treated_total"]
    weighted = balance["importance"]
    assert (weighted * balance["imbalance"] ** 2).sum() < 0.05 * (weighted * before**2).sum()
    assert (fit.weights[frame["z"] == 1] == 1).all()


def test_zero_importance_columns_are_not_balanced():
    frame, _ = make_frame(seed=43, sizes=(20, 80), n_groups=3, n_unit=2, n_group=0)
    constraints = hierps.generate_constraints(
        ["x1 + x2 ~ 0 + school"], frame["z"], frame[["x1", "x2", "school"]]
    )
    fit = constraint_weights(constraints, frame["z"])
    zero = constraints.importances[constraints.importances == 0].index
    assert len(zero) and (fit.coefficients[zero] == 0).all()


def test_bad_input():
    frame, _ = make_frame(seed=44, sizes=(20, 40), n_groups=3, n_unit=1, n_group=0)
    constraints = hierps.generate_constraints(["x1 ~ 1"], frame["z"], frame[["x1"]])
    with pytest.raises(TypeError, match="generate_constraints"):
        constraint_weights(constraints.X, frame["z"])
    with pytest.raises(hierps.DataError, match="entries"):
        constraint_weights(constraints, frame["z"].iloc[:5])
    with pytest.raises(ValueError, match="scale"):
        constraint_weights(constraints, frame["z"], scale=-1)
    with pytest.raises(hierps.DataError, match="controls"):
        constraint_weights(constraints, pd.Series(np.ones(len(frame))))


def test_more_than_two_groups_is_refused_and_two_of_them_work():
    rng = np.random.default_rng(45)
    frame = pd.DataFrame({"x": rng.normal(size=90), "z": np.repeat([0, 1, 2], 30)})
    frame.loc[frame["z"] == 1, "x"] += 0.5
    constraints = hierps.generate_constraints(["x ~ 1"], frame["z"], frame[["x"]])
    # Pooling groups 0 and 2 as controls would balance their mixture, not either group.
    with pytest.raises(hierps.DataError, match=r"z has 3 treatment groups \(\[0, 1, 2\]\)"):
        constraint_weights(constraints, frame["z"])
    with pytest.raises(hierps.DataError, match="z has 1 missing values"):
        constraint_weights(constraints, frame["z"].where(frame.index != 3))
    rows = frame["z"].isin([0, 1]).to_numpy()
    pair = Constraints(constraints.X[rows], constraints.importances)
    fit = constraint_weights(pair, frame["z"][rows], scale=100.0)
    control = frame[rows & (frame["z"] == 0).to_numpy()]
    weighted = np.average(control["x"], weights=fit.weights[control.index])
    assert weighted == pytest.approx(frame.loc[frame["z"] == 1, "x"].mean(), abs=0.02)
    assert abs(control["x"].mean() - weighted) > 0.2
