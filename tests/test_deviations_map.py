"""MAP weights with Laplace and nuclear-norm slope deviations (docs/math.md §19).

The oracle is the primal of each prior: entropy balancing with the box (Laplace) or the
spectral-norm ball (nuclear norm) on the matrix of within-group imbalances, the other priors as
quadratic penalties, solved by cvxpy. The first-order conditions are checked by hand from the
weights and coefficients.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import cvxpy_primal, fit_quietly, make_frame

import hierps
from hierps.calibrated.deviations import penalty_of
from hierps.calibrated.path import pooling_path
from hierps.exceptions import ArgumentError


def school_imbalance(model, fit) -> np.ndarray:
    """``R`` (J, d): Σ_{C_j} w x − Σ_{T,j} x per group and varying covariate, by hand."""
    d = model.design
    treated = d.treatment == 1
    w = np.where(treated, 0.0, fit.weights.to_numpy())
    x = d.unit_matrix[:, d.varying]
    school = np.zeros((d.n_groups, x.shape[1]))
    np.add.at(school, d.group_codes, (w - treated)[:, None] * x)
    return school


def assert_smooth_identities(model, fit, rtol=1e-6):
    """The rows of docs/math.md §6 that the deviation prior leaves unchanged."""
    d = model.design
    h = fit.hyperparameters
    c = fit.coefficients
    treated = d.treatment == 1
    control_w = np.where(treated, 0.0, fit.weights.to_numpy())
    x, codes = d.unit_matrix, d.group_codes
    gap = np.bincount(codes, weights=control_w, minlength=d.n_groups) - np.bincount(
        codes, weights=treated, minlength=d.n_groups
    )
    atol = rtol
    np.testing.assert_allclose(
        control_w.sum() - treated.sum(), -float(c["intercept"]) / h.sigma_intercept**2, atol=atol
    )
    np.testing.assert_allclose(gap, -c["alpha_deviation"].to_numpy() / h.sigma_alpha**2, atol=atol)
    np.testing.assert_allclose(
        control_w @ x - treated @ x, -c["mu_beta"].to_numpy() / h.sigma_mu_beta**2, atol=atol
    )
    if d.group_matrix.shape[1]:
        np.testing.assert_allclose(
            d.group_matrix.T @ gap, -c["gamma"].to_numpy() / h.sigma_gamma**2, atol=atol
        )


def assert_kkt(model, fit, deviations, b, atol=1e-6):
    """The first-order conditions of the non-smooth prior, by hand from the weights."""
    imbalance = school_imbalance(model, fit)
    delta = fit.coefficients["beta_deviation"].to_numpy()
    if deviations == "laplace":
        active = delta != 0
        np.testing.assert_allclose(
            imbalance[active], -np.sign(delta[active]) / b, rtol=0, atol=atol
        )
        assert np.all(np.abs(imbalance[~active]) <= 1 / b + atol)
        return int(active.sum())
    u, sigma, vt = np.linalg.svd(delta, full_matrices=False)
    rank = int(np.sum(sigma > 1e-10 * max(1.0, sigma[0])))  # rounding leaves ~1e-17
    ur, vr = u[:, :rank], vt[:rank].T
    # R = −(U_r V_r' + W)/b with W orthogonal to both subspaces and ‖W‖_2 ≤ 1.
    np.testing.assert_allclose(b * (ur.T @ imbalance @ vr), -np.eye(rank), atol=atol * b)
    np.testing.assert_allclose(imbalance @ vr, ur @ (ur.T @ imbalance @ vr), atol=atol)
    np.testing.assert_allclose(ur.T @ imbalance, (ur.T @ imbalance @ vr) @ vr.T, atol=atol)
    assert np.linalg.norm(imbalance, 2) <= 1 / b + atol
    return rank


ORACLE_CASES = {
    "laplace, 3 slopes": ("laplace", dict(seed=11, n_unit=3), 1.0),
    "laplace, categorical": ("laplace", dict(seed=12, n_unit=2, categorical_levels=3), 0.8),
    "low rank, 3 slopes": ("low_rank", dict(seed=13, n_unit=3), 1.0),
    "low rank, rank deficient": ("low_rank", dict(seed=14, n_unit=4), 0.1),
}


@pytest.mark.parametrize("case", ORACLE_CASES)
def test_weights_equal_primal_solution_with_active_bounds(case):
    deviations, frame_options, b = ORACLE_CASES[case]
    frame, roles = make_frame(sizes=(40, 90), n_groups=6, n_group=1, **frame_options)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=b, sigma_alpha=1.5, deviations=deviations)
    assert fit.converged and fit.deviations == deviations
    n_active = assert_kkt(model, fit, deviations, b)
    assert n_active > 0  # the bound binds somewhere: the non-smooth part matters
    if deviations == "laplace":
        assert n_active < fit.coefficients["beta_deviation"].size  # and somewhere not
    assert_smooth_identities(model, fit)
    controls, primal, primal_value = cvxpy_primal(model, fit, deviations)
    np.testing.assert_allclose(fit.weights.to_numpy()[controls], primal, rtol=1e-4, atol=1e-6)
    assert primal_value == pytest.approx(-fit.objective, rel=1e-6)
    kkt = fit.kkt["control"]
    for name in ("smooth_gradient", "stationarity", "dual_feasibility", "sign"):
        assert kkt[name] <= 1e-8
    assert kkt["active"] == n_active
    assert kkt["criterion"] == pytest.approx(1.0, abs=1e-6)


def test_low_rank_deviations_are_low_rank():
    frame, roles = make_frame(seed=14, sizes=(40, 90), n_groups=6, n_unit=4, n_group=1)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=0.1, sigma_alpha=1.5, deviations="low_rank")
    delta = fit.coefficients["beta_deviation"].to_numpy()
    rank = np.linalg.matrix_rank(delta, tol=1e-10)
    assert 0 < rank < min(delta.shape)
    assert fit.kkt["control"]["active"] == rank


def test_laplace_deviations_are_sparse_and_inactive_when_the_box_is_wide():
    frame, roles = make_frame(seed=11, sizes=(40, 90), n_groups=6, n_unit=3, n_group=1)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=0.01, deviations="laplace")
    # With a box 100 wide no group needs a deviation of its own: complete pooling.
    assert np.all(fit.coefficients["beta_deviation"].to_numpy() == 0)
    assert np.abs(school_imbalance(model, fit)).max() < 100


def test_normal_deviations_reproduce_the_default_fit_exactly():
    frame, roles = make_frame(seed=3, categorical_levels=3)
    model = hierps.Model(frame, **roles)
    default = fit_quietly(model, sigma_beta=0.7)
    normal = fit_quietly(model, sigma_beta=0.7, deviations="normal")
    assert normal.deviations == "normal"
    np.testing.assert_array_equal(default.weights.to_numpy(), normal.weights.to_numpy())
    assert default.objective == normal.objective


@pytest.mark.parametrize("deviations", ["laplace", "low_rank"])
def test_infeasible_bound_names_the_groups(deviations):
    frame, roles = make_frame(seed=5, sizes=(40, 90), n_groups=6, n_unit=3, n_group=0)
    # Group s002's controls all sit below its treated units on x1: no weights of them can
    # bring its x1 imbalance near 0.
    rows = frame["school"] == "s002"
    frame.loc[rows & (frame["z"] == 0), "x1"] = -6.0
    frame.loc[rows & (frame["z"] == 1), "x1"] = 6.0
    model = hierps.Model(frame, **roles)
    with pytest.raises(ArgumentError, match=r"does not exist.*'s002'"):
        fit_quietly(model, sigma_beta=3.0, deviations=deviations)


def test_group_without_controls_is_refused_before_solving():
    frame, roles = make_frame(seed=6, sizes=(40, 90), n_groups=5, n_unit=2, n_group=0)
    frame = frame[~((frame["school"] == "s001") & (frame["z"] == 0))]
    model = hierps.Model(frame, **roles)
    with pytest.raises(ArgumentError, match=r"'s001' have no weighted units"):
        fit_quietly(model, sigma_beta=5.0, deviations="laplace")


@pytest.mark.parametrize("estimand", ["atc", "ate"])
def test_other_estimands_meet_their_bound(estimand):
    frame, roles = make_frame(seed=15, sizes=(60, 120), n_groups=5, n_unit=2, n_group=1)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=1.0, deviations="laplace", estimand=estimand)
    assert fit.converged
    for residuals in fit.kkt.values():
        assert residuals["criterion"] <= 1 + 1e-8
        assert residuals["stationarity"] <= 1e-8


def test_unsupported_combinations_are_refused():
    frame, roles = make_frame(seed=7, sizes=(40, 90), n_groups=5, n_unit=2, n_group=0)
    model = hierps.Model(frame, **roles)
    with pytest.raises(ArgumentError, match="deviations='sparse' is not one of"):
        model.fit_map(deviations="sparse")
    with pytest.raises(ArgumentError, match="needs numeric scales"):
        model.fit_map(deviations="laplace", sigma_beta="auto")
    with pytest.raises(ArgumentError, match="one sigma_beta"):
        model.fit_map(deviations="low_rank", sigma_beta=[1.0, 2.0])
    fixed = hierps.Model(frame, **roles, varying_slopes=[])
    with pytest.raises(ArgumentError, match="no varying slopes"):
        fixed.fit_map(deviations="laplace")


def test_warm_start_from_a_normal_fit_reaches_the_same_optimum():
    frame, roles = make_frame(seed=11, sizes=(40, 90), n_groups=6, n_unit=3, n_group=1)
    model = hierps.Model(frame, **roles)
    cold = fit_quietly(model, sigma_beta=1.0, deviations="laplace")
    normal = fit_quietly(model, sigma_beta=1.0)
    warm = quiet_fit(model, init=normal)
    np.testing.assert_allclose(warm.weights, cold.weights, rtol=1e-6)


def quiet_fit(model, **options):
    return fit_quietly(model, sigma_beta=1.0, deviations="laplace", **options)


@pytest.mark.parametrize("deviations", ["laplace", "low_rank"])
def test_smoothed_penalty_derivatives_match_finite_differences(deviations):
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 3))  # rank 2 of 3
    penalty = penalty_of(deviations, np.full(3, 0.7))
    smoothed = penalty.smoothed(delta, 0.3)
    step = 1e-6
    direction = rng.normal(size=delta.shape)
    slope = (
        penalty.value(delta + step * direction, 0.3) - penalty.value(delta - step * direction, 0.3)
    ) / (2 * step)
    assert slope == pytest.approx(np.sum(smoothed.gradient * direction), rel=1e-6)
    change = (
        penalty.smoothed(delta + step * direction, 0.3).gradient
        - penalty.smoothed(delta - step * direction, 0.3).gradient
    ) / (2 * step)
    np.testing.assert_allclose(smoothed.hessian_product(direction), change, atol=1e-6)
    # The per-group blocks are the diagonal blocks of that Hessian.
    for j in range(delta.shape[0]):
        for k in range(delta.shape[1]):
            unit = np.zeros_like(delta)
            unit[j, k] = 1.0
            np.testing.assert_allclose(
                smoothed.hessian_product(unit)[j], smoothed.blocks[j, :, k], atol=1e-12
            )


def test_balance_table_and_pooling_path_show_the_imposed_criterion():
    frame, roles = make_frame(seed=11, sizes=(40, 90), n_groups=6, n_unit=3, n_group=1)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=1.0, deviations="laplace")
    table = hierps.balance_table(fit)
    imposed = table.deviations
    assert isinstance(imposed, pd.DataFrame) and imposed.index.name == "arm"
    row = imposed.loc["control"]
    assert row["deviations"] == "laplace"
    assert row["bound"] == pytest.approx(1.0)
    assert row["value"] == pytest.approx(np.abs(school_imbalance(model, fit)).max())
    assert row["value"] <= row["bound"] + 1e-8
    assert hierps.balance_table(fit_quietly(model)).deviations is None
    path = pooling_path(model, sigma_beta=[0.5, 1.0], deviations="low_rank")
    assert list(path["imposed_bound"]) == pytest.approx([2.0, 1.0])
    assert np.all(path["imposed_value"] <= path["imposed_bound"] + 1e-8)


def test_saved_fit_loads_with_its_deviations(tmp_path):
    frame, roles = make_frame(seed=11, sizes=(40, 90), n_groups=6, n_unit=3, n_group=1)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model, sigma_beta=1.0, deviations="laplace")
    loaded = hierps.load(fit.save(tmp_path / "fit.nc"))
    assert loaded.deviations == "laplace"
    np.testing.assert_allclose(loaded.weights, fit.weights, rtol=1e-6)


def test_low_rank_fit_that_ends_at_full_rank():
    """Learning mindsets at b = 0.02: every direction of the three varying slopes is used, so
    the rank-adjusting finish has no rotations left to deflate (a degenerate case)."""
    data = hierps.datasets.load_learning_mindsets()
    model = hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        unit_covariates=["S3", "C2", "C3"],
        group_covariates=["X1", "X2"],
    )
    fit = fit_quietly(model, sigma_beta=0.02, deviations="low_rank")
    assert fit.converged
    kkt = fit.kkt["control"]
    assert kkt["active"] == 3
    assert kkt["criterion"] == pytest.approx(1.0, abs=1e-6)
    assert max(kkt["smooth_gradient"], kkt["stationarity"], kkt["dual_feasibility"]) <= 1e-6
