"""MAP weights: first-order identities, an independent convex solver, limits, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import cvxpy_primal, fit_quietly, make_frame

import hierps
import hierps.calibrated.fit as map_module
import hierps.calibrated.newton as newton_module
import hierps.calibrated.problem as problem_module
from hierps.design.hyperparameters import MapHyperparameters
from hierps.effects.catt_pooling import map_standard_errors
from hierps.exceptions import HierpsWarning


def assert_first_order_identities(model, fit, rtol=1e-6):
    """Every row of the docs/math.md §6 table, computed by hand from the weights."""
    d = model.design
    h = fit.hyperparameters
    c = fit.coefficients
    w = fit.weights.to_numpy()
    treated = d.treatment == 1
    control_w = np.where(treated, 0.0, w)
    x, v, codes = d.unit_matrix, d.group_matrix, d.group_codes
    n_treated_group = np.bincount(codes, weights=treated, minlength=d.n_groups)
    weight_group = np.bincount(codes, weights=control_w, minlength=d.n_groups)
    gap = weight_group - n_treated_group

    def close(lhs, rhs, scale):
        np.testing.assert_allclose(lhs, rhs, rtol=rtol, atol=rtol * scale)

    n1 = treated.sum()
    a0 = float(c["intercept"])
    close(control_w.sum() - n1, -a0 / h.sigma_intercept**2, 1.0)
    close(gap, -c["alpha_deviation"].to_numpy() / h.sigma_alpha**2, 1.0)
    if v.shape[1]:
        close(v.T @ gap, -c["gamma"].to_numpy() / h.sigma_gamma**2, 1.0)
    global_imbalance = control_w @ x - treated @ x
    close(global_imbalance, -c["mu_beta"].to_numpy() / h.sigma_mu_beta**2, 1.0)
    varying = d.varying
    school = np.zeros((d.n_groups, x.shape[1]))
    np.add.at(school, codes, (control_w - treated)[:, None] * x)
    sigma_beta = h.sigma_beta_vector(int(varying.sum()))
    close(school[:, varying], -c["beta_deviation"].to_numpy() / sigma_beta**2, 1.0)


CASES = {
    "group covariates": dict(seed=1, n_group=2),
    "no group covariates": dict(seed=2, n_group=0),
    "categorical": dict(seed=3, categorical_levels=4),
    "sizes 5 to 500": dict(seed=4, sizes=(5, 500), n_groups=20),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "hyperparameters",
    [dict(), dict(sigma_beta=0.3, sigma_alpha=2.0, sigma_mu_beta=3.0, sigma_gamma=0.5)],
    ids=["defaults", "custom"],
)
def test_first_order_conditions_hold(case, hyperparameters):
    frame, roles = make_frame(**CASES[case])
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, **hyperparameters)
    assert fit.converged and fit.max_gradient <= 1e-8
    assert fit.iterations < 30
    assert_first_order_identities(model, fit)


def test_partial_varying_slopes_and_vector_sigma_beta():
    frame, roles = make_frame(seed=5, categorical_levels=3)
    model = hierps.Model(frame, **roles, varying_slopes=["x1", "c1"])
    assert model.design.varying_names == ("x1", "c1[a]", "c1[b]", "c1[c]")
    fit = fit_quietly(model, sigma_beta=[0.5, 1.0, 2.0, 0.1])
    assert_first_order_identities(model, fit)
    # Fixed slopes have no group deviations at all.
    beta = fit.coefficients["beta"]
    assert np.allclose(
        beta.sel(unit_covariate="x2"), fit.coefficients["mu_beta"].sel(unit_covariate="x2")
    )


def test_result_objects_are_named():
    frame, roles = make_frame(seed=6)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model)
    assert fit.weights.index.equals(frame.index)
    assert (fit.weights[frame["z"] == 1] == 1).all()
    assert (fit.weights > 0).all()
    catt = fit.catt
    assert list(catt.columns) == ["estimate", "n_treated", "n_control", "weight_sum", "ess"]
    assert catt.index.equals(model.design.groups)
    assert catt["n_treated"].sum() == frame["z"].sum()
    # Hand computation of one group's CATT and the ATT (Hájek).
    school = model.design.groups[0]
    rows = frame["school"] == school
    t, y, w = frame.loc[rows, "z"], frame.loc[rows, "y"], fit.weights[rows]
    expected = y[t == 1].mean() - np.average(y[t == 0], weights=w[t == 0])
    assert catt.loc[school, "estimate"] == pytest.approx(expected, rel=1e-12)
    att = np.average(catt["estimate"], weights=catt["n_treated"])
    assert fit.att == pytest.approx(att, rel=1e-12)
    ess = w[t == 0].sum() ** 2 / (w[t == 0] ** 2).sum()
    assert catt.loc[school, "ess"] == pytest.approx(ess)
    coefficients = fit.coefficients
    assert coefficients["beta"].dims == ("group", "unit_covariate")
    assert list(coefficients["group"].values) == list(model.design.groups)


@pytest.mark.parametrize("seed", [11, 12])
def test_weights_equal_primal_solution_and_strong_duality(seed):
    frame, roles = make_frame(seed=seed, sizes=(5, 40), n_groups=5, n_unit=2, n_group=1)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=0.7, sigma_alpha=1.5)
    controls, primal, primal_value = cvxpy_primal(model, fit)
    np.testing.assert_allclose(fit.weights.to_numpy()[controls], primal, rtol=1e-4, atol=1e-6)
    # Fenchel duality: the primal minimum is minus the dual (calibrated-loss) minimum.
    assert primal_value == pytest.approx(-fit.objective, rel=1e-6)


def test_no_pooling_limit_gives_exact_within_group_balance():
    frame, roles = make_frame(seed=21, sizes=(80, 150), n_groups=5, n_unit=2, n_group=0)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=1e4, sigma_alpha=1e4)
    balance = fit.balance()
    within = balance[balance["scope"] == "group"]
    assert np.abs(within["imbalance"]).max() < 1e-5
    # Per-group entropy balancing: exact means within every group.
    assert np.abs(within["smd_after"].dropna()).max() < 1e-6


def test_complete_pooling_limit_gives_global_balance_only():
    frame, roles = make_frame(
        seed=22, sizes=(80, 150), n_groups=6, n_unit=2, n_group=0, sigma_beta=1.0
    )
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(
        model, sigma_beta=1e-4, sigma_alpha=1e-4, sigma_mu_beta=1e4, sigma_intercept=1e4
    )
    balance = fit.balance()
    overall = balance[balance["scope"] == "global"]
    within = balance[(balance["scope"] == "group") & (balance["covariate"] != "(intercept)")]
    assert np.abs(overall["imbalance"]).max() < 1e-5
    # Group deviations are (numerically) absent, so within-group imbalance remains.
    assert np.abs(fit.coefficients["beta_deviation"]).max() < 1e-6
    assert np.abs(within["smd_after"]).max() > 0.05


def test_perfect_separation_in_a_group_gives_finite_weights():
    frame, roles = make_frame(seed=31, sizes=(30, 60), n_groups=4, n_unit=1, n_group=0)
    rows = frame["school"] == "s000"
    frame.loc[rows, "z"] = (frame.loc[rows, "x1"] > frame.loc[rows, "x1"].median()).astype(int)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=10.0)
    assert np.isfinite(fit.weights).all() and fit.converged


def test_group_without_controls_has_nan_catt_with_warning():
    frame, roles = make_frame(seed=32, sizes=(10, 30), n_groups=4, n_unit=2, n_group=0)
    frame.loc[frame["school"] == "s001", "z"] = 1
    model = hierps.Model(frame, **roles)
    n_treated = int(frame.loc[frame["school"] == "s001", "z"].sum())
    with pytest.warns(HierpsWarning, match=rf"'s001'.*no control.*{n_treated} of \d+ treated"):
        fit = model.fit_map()
    assert fit.n_excluded == n_treated
    assert np.isfinite(fit.weights).all()
    assert np.isnan(fit.catt.loc["s001", "estimate"])
    assert np.isfinite(fit.att)


def test_covariate_constant_within_one_group():
    frame, roles = make_frame(seed=33, sizes=(10, 30), n_groups=4, n_unit=2, n_group=0)
    frame.loc[frame["school"] == "s002", "x2"] = 0.5
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=5.0)
    assert np.isfinite(fit.weights).all()
    assert_first_order_identities(model, fit)


def test_constant_covariate_is_dropped_with_warning():
    frame, roles = make_frame(seed=34, sizes=(10, 30), n_groups=4, n_unit=2, n_group=0)
    frame["x3"] = 1.0
    roles["unit_covariates"] = [*roles["unit_covariates"], "x3"]
    with pytest.warns(HierpsWarning, match="x3"):
        model = hierps.Model(frame, **roles)
    assert "x3" not in model.design.unit_names
    assert np.isfinite(fit_quietly(model).weights).all()


def test_non_convergence_raises_clear_error():
    frame, roles = make_frame(seed=35)
    model = hierps.Model(frame, **roles)
    with pytest.raises(hierps.ConvergenceError, match="iterations"):
        model.fit_map(max_iterations=1)


def test_extreme_weights_warn_with_group_and_share():
    frame, roles = make_frame(seed=36, sizes=(10, 25), n_groups=4, n_unit=2, n_group=0)
    model = hierps.Model(frame, **roles)
    with pytest.warns(HierpsWarning, match=r"s0\d\d.: \d+%") as caught:
        fit = model.fit_map(sigma_beta=100.0, sigma_alpha=100.0)
    # The named group's largest control weight is the reported share of its control weights.
    message = str(caught[0].message)
    group = message.split("largest shares: '")[1].split("'")[0]
    share = int(message.split(f"'{group}': ")[1].split("%")[0]) / 100
    controls = fit.weights[(frame["school"] == group) & (frame["z"] == 0)]
    assert controls.max() / controls.sum() == pytest.approx(share, abs=0.006)


def test_bad_hyperparameters_are_named():
    frame, roles = make_frame(seed=37)
    model = hierps.Model(frame, **roles)
    with pytest.raises(ValueError, match="sigma_beta"):
        model.fit_map(sigma_beta=-1.0)
    with pytest.raises(ValueError, match="sigma_beta has 2 values"):
        model.fit_map(sigma_beta=[1.0, 2.0])
    with pytest.raises(TypeError, match="sigma_bet"):
        model.fit_map(sigma_bet=1.0)


def test_warm_start_reaches_same_optimum_faster():
    frame, roles = make_frame(seed=38)
    model = hierps.Model(frame, **roles)
    first = fit_quietly(model, sigma_beta=0.5)
    cold = fit_quietly(model, sigma_beta=0.6)
    warm = fit_quietly(model, sigma_beta=0.6, init=first)
    assert warm.iterations <= cold.iterations
    pd.testing.assert_series_equal(warm.weights, cold.weights, rtol=1e-7)


def test_ill_conditioned_fit_on_real_data_reaches_tol():
    """Very large sigma_beta on real data: the objective's rounding error exceeds the predicted
    decrease near the optimum, so a plain Armijo search would stall; full steps converge."""
    data = hierps.datasets.load_learning_mindsets()
    model = hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        outcome="Y",
        unit_covariates=["S3", "C1", "C2", "C3"],
        group_covariates=["XC", "X1", "X2", "X3", "X4", "X5"],
        categorical=["C1", "XC"],
        varying_slopes=["S3", "C2", "C3"],
    )
    warm = fit_quietly(model, sigma_beta=30.0)
    for init in (None, warm):
        fit = fit_quietly(model, sigma_beta=100.0, init=init)
        assert fit.converged and fit.max_gradient <= 1e-8
        assert fit.iterations < 30
        assert_first_order_identities(model, fit)


def test_vanishing_weights_of_a_group_give_a_finite_catt_and_a_warning():
    """All controls of a group underflow to weight 0 when its exact balance is infeasible."""
    study = hierps.datasets.simulate_multisite(
        n_groups=20, group_size=(30, 80), n_unit_covariates=3, n_group_covariates=2, seed=22
    )
    model = hierps.Model(
        study.data,
        treatment="z",
        group="school",
        outcome="y",
        unit_covariates=study.unit_covariates,
        group_covariates=study.group_covariates,
    )
    with pytest.warns(HierpsWarning, match=r"weights of 's08' vanish"):
        fit = model.fit_map(sigma_beta=30.0)
    row = fit.catt.loc["s08"]
    assert row["weight_sum"] < 1e-8 and np.isfinite(row["estimate"])
    # The estimate is the Hájek CATT under the relative weights exp(η − max η).
    eta = np.log(fit.weights.where(fit.weights > 0))  # finite only where no underflow
    assert np.isfinite(fit.att) and row["ess"] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(eta[(study.data["school"] == "s08") & (study.data["z"] == 0)]).all()
    # What rests on the weights uses the relative ones: standard errors, augmentation.
    relative = fit.relative_weights
    assert relative[study.data["z"] == 1].eq(0).all() and relative.max() == 1.0
    assert np.isfinite(map_standard_errors(fit)["s08"])
    augmented = hierps.augment(fit, np.zeros((3, len(study.data))))  # m(x) = 0: plain weighting
    np.testing.assert_allclose(augmented["mean"], fit.catt["estimate"], rtol=1e-12)


def test_control_layout_pads_every_control_once():
    frame, roles = make_frame(seed=7, sizes=(1, 300), n_groups=15, categorical_levels=3)
    frame.loc[frame["school"] == frame["school"].iloc[-1], "z"] = 1  # a group without controls
    model = hierps.Model(frame, **roles)
    d = model.design
    problem = map_module.hierarchical_problem(d, MapHyperparameters.from_user(3))
    layout = problem.layout
    controls = np.flatnonzero(d.treatment == 0)
    assert np.array_equal(np.sort(layout.order), controls)
    assert len(np.unique(layout.slots)) == len(controls)
    assert np.sort(layout.group_order).tolist() == list(range(d.n_groups))
    assert np.isinf(layout.padding).sum() == len(layout.padding) - len(controls)
    z = np.column_stack([np.ones(d.n_units), d.unit_matrix])
    padded = np.zeros((len(layout.padding), z.shape[1]))
    for bucket in layout.buckets:
        padded[bucket.rows] = bucket.z_rows.reshape(-1, z.shape[1])
        # Every bucket's groups are consecutive and share a width.
        counts = np.bincount(d.group_codes[controls], minlength=d.n_groups)
        assert counts[layout.group_order[bucket.groups]].max() == bucket.z.shape[2]
    np.testing.assert_array_equal(padded[layout.slots], z[layout.order])
    assert not padded[np.isinf(layout.padding)].any()
    treated = d.treatment == 1
    by_group = np.zeros((d.n_groups, z.shape[1]))
    np.add.at(by_group, d.group_codes[treated], z[treated])
    np.testing.assert_allclose(layout.treated_moments, by_group[layout.group_order])
    gram = np.zeros((d.n_groups, z.shape[1], z.shape[1]))
    np.add.at(gram, d.group_codes[controls], z[controls, :, None] * z[controls, None, :])
    np.testing.assert_allclose(layout.gram, gram[layout.group_order], atol=1e-10)


def test_refits_reuse_the_layout_and_agree():
    frame, roles = make_frame(seed=8)
    model = hierps.Model(frame, **roles)
    first = fit_quietly(model)
    layout = problem_module._LAYOUTS[model.design]
    second = fit_quietly(model)
    assert problem_module._LAYOUTS[model.design] is layout
    np.testing.assert_array_equal(first.weights, second.weights)
    # A fresh layout gives the same fit.
    problem_module._LAYOUTS.clear()
    third = fit_quietly(model)
    np.testing.assert_array_equal(first.weights, third.weights)


def test_newton_solve_keeps_the_input_group_order():
    """Local coefficients go in and come out in the design's group order."""
    frame, roles = make_frame(seed=9, sizes=(5, 400), n_groups=10)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model)
    problem = map_module.hierarchical_problem(model.design, fit.hyperparameters)
    assert not np.array_equal(problem.group_order, np.arange(model.design.n_groups))
    trace = newton_module.newton_solve(problem, fit._theta_global, fit._theta_local)
    assert trace.converged and trace.iterations == 0
    np.testing.assert_array_equal(trace.theta_local, fit._theta_local)
    value = newton_module.objective(problem, fit._theta_global, fit._theta_local)
    assert value == pytest.approx(fit.objective, rel=1e-12)


def test_make_problem_needs_the_constant_column():
    z = np.column_stack([np.ones(4), np.arange(4.0)])
    args = (np.array([1, 0, 1, 0]), np.zeros(4, dtype=int), np.zeros((1, 0)), np.array([], int))
    problem = problem_module.make_problem(z, *args, np.ones(2), np.array([]))
    assert problem.n_local == 0 and problem.n_global == 2
    # Two controls at z = (1, 1) and (1, 3), two treated units: f(0) = 2 − 0.
    assert newton_module.objective(problem, np.zeros(2), np.zeros((1, 0))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="constant 1"):
        problem_module.make_problem(z[:, ::-1], *args, np.ones(2), np.array([]))


def test_local_inverse_falls_back_to_lu():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 4))
    spd = a @ a.transpose(0, 2, 1) + np.eye(4)
    np.testing.assert_allclose(newton_module._spd_inverse(spd), np.linalg.inv(spd), rtol=1e-10)
    indefinite = spd.copy()
    indefinite[1] = np.diag([1.0, -1.0, 2.0, 3.0])
    np.testing.assert_allclose(newton_module._spd_inverse(indefinite), np.linalg.inv(indefinite))
