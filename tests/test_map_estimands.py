"""MAP mode for the ATT, ATC and ATE, with and without base weights: first-order conditions,
the primal (entropy-balancing) problem, exact entropy balancing in the flat limit, and the
frequency-weight semantics of base weights."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import make_frame

import hierps
from hierps.calibrated.arms import arms_of
from hierps.exceptions import DataError, HierpsWarning

ESTIMANDS = ("att", "atc", "ate")


def fit_quietly(model, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return model.fit_map(**options)


def with_base_weights(frame: pd.DataFrame, seed: int, integer: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = frame.copy()
    frame["b"] = rng.integers(1, 4, len(frame)) if integer else rng.uniform(0.3, 3.0, len(frame))
    return frame


def assert_first_order_identities(model, fit, rtol=1e-6):
    """The table of the first-order conditions, for each calibrated-loss problem of the fit:
    the weighted arm's weighted moments minus the target's base-weighted moments equal the
    prior pull of the matching coefficient."""
    d = model.design
    h = fit.hyperparameters
    b = d.unit_weights
    x, v, codes = d.unit_matrix, d.group_matrix, d.group_codes
    w_all = fit.weights.to_numpy()

    def close(lhs, rhs):
        np.testing.assert_allclose(lhs, rhs, rtol=rtol, atol=rtol)

    for arm in arms_of(fit.estimand):
        weighted, target = arm.masks(d.treatment)
        c = fit.arm_coefficients(arm.name)
        w = np.where(weighted, w_all, 0.0)
        t = np.where(target, b, 0.0)
        gap = np.bincount(codes, weights=w - t, minlength=d.n_groups)
        close(gap.sum(), -float(c["intercept"]) / h.sigma_intercept**2)
        close(gap, -c["alpha_deviation"].to_numpy() / h.sigma_alpha**2)
        if v.shape[1]:
            close(v.T @ gap, -c["gamma"].to_numpy() / h.sigma_gamma**2)
        close((w - t) @ x, -c["mu_beta"].to_numpy() / h.sigma_mu_beta**2)
        school = np.zeros((d.n_groups, x.shape[1]))
        np.add.at(school, codes, (w - t)[:, None] * x)
        sigma_beta = h.sigma_beta_vector(int(d.varying.sum()))
        close(school[:, d.varying], -c["beta_deviation"].to_numpy() / sigma_beta**2)


@pytest.mark.parametrize("estimand", ESTIMANDS)
@pytest.mark.parametrize("base", [False, True], ids=["unweighted", "base weights"])
@pytest.mark.parametrize(
    "hyperparameters",
    [dict(), dict(sigma_beta=0.3, sigma_alpha=2.0, sigma_mu_beta=3.0, sigma_gamma=0.5)],
    ids=["defaults", "custom"],
)
def test_first_order_conditions_hold_for_every_estimand(estimand, base, hyperparameters):
    frame, roles = make_frame(seed=21, categorical_levels=3, sizes=(5, 200))
    if base:
        frame = with_base_weights(frame, seed=3)
    model = hierps.Model(frame, **roles, weights="b" if base else None)
    fit = fit_quietly(model, estimand=estimand, **hyperparameters)
    assert fit.converged and fit.max_gradient <= 1e-8
    assert fit.estimand == estimand
    assert_first_order_identities(model, fit)
    # The balance table's imbalance column is the same gap on the standardized scale.
    balance = fit.balance()
    intercept = balance[(balance["scope"] == "global") & (balance["covariate"] == "(intercept)")]
    gap = float(intercept["imbalance"].iloc[0])
    assert gap == pytest.approx(
        -float(fit.coefficients["intercept"]) / fit.hyperparameters.sigma_intercept**2, abs=1e-6
    )


def primal_weights(model, fit, arm):
    """The primal of one arm's problem, solved by cvxpy with an exponential-cone solver:
    ``min Σ_W (w log(w/b) − w) + the quadratic penalties of the balance gaps``."""
    cp = pytest.importorskip("cvxpy")
    d = model.design
    h = fit.hyperparameters
    b = d.unit_weights
    weighted, target = arm.masks(d.treatment)
    rows = np.flatnonzero(weighted)
    x, v, codes = d.unit_matrix, d.group_matrix, d.group_codes
    target_group = np.bincount(codes, weights=np.where(target, b, 0.0), minlength=d.n_groups)
    indicator = np.zeros((len(rows), d.n_groups))
    indicator[np.arange(len(rows)), codes[rows]] = 1.0
    w = cp.Variable(len(rows), nonneg=True)
    group_gap = indicator.T @ w - target_group
    global_imbalance = x[rows].T @ w - np.where(target, b, 0.0) @ x
    sigma_beta = h.sigma_beta_vector(int(d.varying.sum()))
    objective = -cp.sum(cp.entr(w)) - cp.sum(w) - w @ np.log(b[rows])
    objective += h.sigma_intercept**2 / 2 * cp.square(cp.sum(w) - target_group.sum())
    objective += h.sigma_alpha**2 / 2 * cp.sum_squares(group_gap)
    if v.shape[1]:
        objective += h.sigma_gamma**2 / 2 * cp.sum_squares(v.T @ group_gap)
    objective += h.sigma_mu_beta**2 / 2 * cp.sum_squares(global_imbalance)
    for position, k in enumerate(np.flatnonzero(d.varying)):
        school_k = indicator.T @ cp.multiply(x[rows, k], w) - np.bincount(
            codes, weights=np.where(target, b * x[:, k], 0.0), minlength=d.n_groups
        )
        objective += sigma_beta[position] ** 2 / 2 * cp.sum_squares(school_k)
    problem = cp.Problem(cp.Minimize(objective))
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return rows, w.value, problem.value


@pytest.mark.parametrize("estimand", ESTIMANDS)
@pytest.mark.parametrize("base", [False, True], ids=["unweighted", "base weights"])
def test_weights_equal_the_primal_solution(estimand, base):
    frame, roles = make_frame(seed=11, sizes=(5, 40), n_groups=5, n_unit=2, n_group=1)
    if base:
        frame = with_base_weights(frame, seed=4)
    model = hierps.Model(frame, **roles, weights="b" if base else None)
    fit = fit_quietly(model, estimand=estimand, sigma_beta=0.7, sigma_alpha=1.5)
    total = 0.0
    for arm, solution in zip(arms_of(estimand), fit._solutions, strict=True):
        rows, primal, value = primal_weights(model, fit, arm)
        np.testing.assert_allclose(fit.weights.to_numpy()[rows], primal, rtol=1e-4, atol=1e-6)
        # Fenchel duality: the primal minimum is minus the calibrated-loss minimum.
        assert value == pytest.approx(-solution.objective, rel=1e-6)
        total += value
    assert total == pytest.approx(-fit.objective, rel=1e-6)


def test_ate_with_one_group_and_flat_priors_is_two_sided_entropy_balancing():
    frame, roles = make_frame(seed=5, sizes=[300], n_group=0)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(
        model, estimand="ate", sigma_intercept=1e4, sigma_mu_beta=1e4, sigma_alpha=1e-3
    )
    x = model.design.unit_frame(original_scale=True).to_numpy()
    treated = model.design.treatment == 1
    w = fit.weights.to_numpy()
    full = x.mean(axis=0)
    for arm in (treated, ~treated):
        np.testing.assert_allclose(np.average(x[arm], axis=0, weights=w[arm]), full, atol=1e-6)
        assert w[arm].sum() == pytest.approx(len(x), rel=1e-6)
    # The ATE is the difference of the two weighted outcome means.
    y = frame["y"].to_numpy()
    expected = np.average(y[treated], weights=w[treated]) - np.average(
        y[~treated], weights=w[~treated]
    )
    assert fit.ate == pytest.approx(expected, rel=1e-10)


def test_atc_is_the_att_of_the_flipped_treatment_with_the_sign_changed():
    frame, roles = make_frame(seed=7, sizes=(10, 80), n_groups=6)
    flipped = frame.assign(z=1 - frame["z"])
    atc = fit_quietly(hierps.Model(frame, **roles, standardize=False), estimand="atc")
    att = fit_quietly(hierps.Model(flipped, **roles, standardize=False), estimand="att")
    np.testing.assert_allclose(atc.weights, att.weights, rtol=1e-9)
    assert atc.atc == pytest.approx(-att.att, rel=1e-9)
    np.testing.assert_allclose(atc.catc["estimate"], -att.catt["estimate"], rtol=1e-9)


def test_effect_tables_follow_the_estimand():
    frame, roles = make_frame(seed=8, sizes=(10, 80), n_groups=6)
    model = hierps.Model(frame, **roles)
    ate = fit_quietly(model, estimand="ate")
    table = ate.cate
    assert {"weight_sum_control", "ess_treated"} <= set(table.columns)
    sizes = model.design.units_per_group
    assert ate.ate == pytest.approx(np.average(table["estimate"], weights=sizes), rel=1e-12)
    with pytest.raises(ValueError, match="targets the ATE"):
        _ = ate.att
    atc = fit_quietly(model, estimand="atc")
    n_control = atc.catc["n_control"]
    assert atc.atc == pytest.approx(np.average(atc.catc["estimate"], weights=n_control))
    assert (atc.weights[frame["z"] == 0] == 1).all()
    with pytest.raises(ValueError, match="estimand"):
        model.fit_map(estimand="atx")


@pytest.mark.parametrize("estimand", ESTIMANDS)
def test_integer_base_weights_equal_replicated_rows(estimand):
    frame, roles = make_frame(seed=9, sizes=(5, 60), n_groups=6, categorical_levels=3)
    frame = with_base_weights(frame, seed=1, integer=True)
    weighted = hierps.Model(frame, **roles, weights="b")
    replicated_frame = frame.loc[frame.index.repeat(frame["b"])]
    origin = replicated_frame.index.to_numpy()
    replicated_frame = replicated_frame.reset_index(drop=True)
    replicated = hierps.Model(replicated_frame, **roles)
    pd.testing.assert_frame_equal(
        weighted.design.unit_scaling, replicated.design.unit_scaling, rtol=1e-12
    )
    options = dict(estimand=estimand, sigma_beta=0.8, tol=1e-11)
    fit_w = fit_quietly(weighted, **options)
    fit_r = fit_quietly(replicated, **options)
    per_row = fit_w.balancing_weights.loc[origin].to_numpy()
    np.testing.assert_allclose(per_row, fit_r.weights.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(
        fit_w.group_effects["estimate"], fit_r.group_effects["estimate"], rtol=1e-8
    )
    assert fit_w.overall_effect == pytest.approx(fit_r.overall_effect, rel=1e-8)
    # Balance before and after weighting is that of the replicated rows too.
    columns = ["smd_before", "smd_after", "control_mean_before", "control_mean_after"]
    np.testing.assert_allclose(
        fit_w.balance()[columns].to_numpy(),
        fit_r.balance()[columns].to_numpy(),
        rtol=1e-8,
        atol=1e-10,
    )


def test_base_weights_are_validated_by_row():
    frame, roles = make_frame(seed=1, sizes=(5, 20), n_groups=3)
    frame["b"] = 1.0
    frame.loc[frame.index[[2, 5]], "b"] = [0.0, np.nan]
    with pytest.raises(DataError, match=r"weights column 'b'.*rows 2, 5"):
        hierps.Model(frame, **roles, weights="b")
    frame["b"] = "x"
    with pytest.raises(DataError, match="must be numeric"):
        hierps.Model(frame, **roles, weights="b")
    with pytest.raises(DataError, match="'nope'"):
        hierps.Model(frame, **roles, weights="nope")


def fake_posterior(fit, sign: float = 1.0, draws: int = 3):
    """A posterior whose every draw is the MAP coefficients (times ``sign``)."""
    import xarray as xr

    c = fit.coefficients
    alpha = sign * c["alpha"].to_numpy()
    beta = sign * c["beta"].to_numpy()
    posterior = xr.Dataset(
        {
            "alpha": (("chain", "draw", "group"), np.broadcast_to(alpha, (1, draws, *alpha.shape))),
            "beta": (
                ("chain", "draw", "group", "unit_covariate"),
                np.broadcast_to(beta, (1, draws, *beta.shape)),
            ),
        },
        coords={
            "chain": [0],
            "draw": np.arange(draws),
            "group": c["group"].values,
            "unit_covariate": c["unit_covariate"].values,
        },
    )
    return xr.DataTree.from_dict({"posterior": posterior})


@pytest.mark.parametrize("base", [False, True], ids=["unweighted", "base weights"])
@pytest.mark.parametrize("estimand", ["att", "atc"])
def test_posterior_effects_of_the_map_coefficients_are_the_map_effects(estimand, base):
    from hierps.posterior.draws import from_idata

    frame, roles = make_frame(seed=12, sizes=(10, 60), n_groups=5)
    if base:
        frame = with_base_weights(frame, seed=2)
    model = hierps.Model(frame, **roles, weights="b" if base else None)
    fit = fit_quietly(model, estimand=estimand)
    # The ATC problem models the log odds of control: its posterior analogue is −η.
    idata = fake_posterior(fit, sign=1.0 if estimand == "att" else -1.0)
    result = from_idata(model.design, idata, uncertainty="propensity", estimand=estimand)
    np.testing.assert_allclose(
        result.group_effects["estimate"], fit.group_effects["estimate"], rtol=1e-9
    )
    assert result.overall_effect["estimate"].iloc[0] == pytest.approx(fit.overall_effect)
    np.testing.assert_allclose(result.weights, fit.weights, rtol=1e-9)
    if base:
        assert "pseudo" in result.idata["estimands"].attrs["likelihood"]
    with pytest.raises(ValueError, match="calibrated loss"):
        from hierps.posterior.draws import check_estimand_loss

        check_estimand_loss("atc", "calibrated")


def test_posterior_bootstrap_multiplies_the_base_weights():
    from hierps.posterior.draws import from_idata

    frame, roles = make_frame(seed=13, sizes=(10, 60), n_groups=5)
    frame = with_base_weights(frame, seed=5)
    model = hierps.Model(frame, **roles, weights="b")
    fit = fit_quietly(model)
    result = from_idata(model.design, fake_posterior(fit, draws=400), estimand="ate", random_seed=1)
    draws = result.idata["estimands"]["ate"].to_numpy().ravel()
    # The draws vary (bootstrap) around the estimate from the same weights without it.
    plain = from_idata(model.design, fake_posterior(fit), estimand="ate", uncertainty="propensity")
    assert draws.std() > 0
    assert abs(draws.mean() - plain.ate["estimate"].iloc[0]) < 3 * draws.std()


def test_two_arm_standard_errors_reduce_to_the_att_formula():
    from hierps.effects.catt_pooling import _two_arm_standard_errors, map_standard_errors

    frame, roles = make_frame(seed=14, sizes=(3, 60), n_groups=6)
    model = hierps.Model(frame, **roles)
    fit = fit_quietly(model)
    np.testing.assert_allclose(_two_arm_standard_errors(fit), map_standard_errors(fit), rtol=1e-10)
    for estimand in ("atc", "ate"):
        se = map_standard_errors(fit_quietly(model, estimand=estimand))
        assert np.all(np.isfinite(se)) and np.all(se > 0)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bernoulli", "calibrated"])
def test_weighted_pymc_density_is_the_density_of_replicated_rows(loss):
    frame, roles = make_frame(seed=15, sizes=(5, 30), n_groups=4, n_unit=2, n_group=1)
    frame = with_base_weights(frame, seed=6, integer=True)
    replicated = frame.loc[frame.index.repeat(frame["b"])].reset_index(drop=True)
    fixed = dict(sigma_alpha=0.8, sigma_beta=0.6)
    weighted_model = hierps.Model(frame, **roles, weights="b").build_pymc(loss=loss, **fixed)
    replicated_model = hierps.Model(replicated, **roles).build_pymc(loss=loss, **fixed)
    assert ("weighted_likelihood" if loss == "bernoulli" else "calibrated_loss") in {
        potential.name for potential in weighted_model.potentials
    }
    rng = np.random.default_rng(0)
    weighted_logp = weighted_model.compile_logp()
    replicated_logp = replicated_model.compile_logp()
    for _ in range(3):
        point = {
            rv.name: rng.normal(scale=0.5, size=weighted_model.initial_point()[rv.name].shape)
            for rv in weighted_model.free_RVs
        }
        assert weighted_logp(point) == pytest.approx(replicated_logp(point), rel=1e-10)


@pytest.mark.slow
def test_sampling_the_atc_with_base_weights():
    frame, roles = make_frame(seed=16, sizes=(10, 40), n_groups=4, n_unit=2, n_group=1)
    frame = with_base_weights(frame, seed=7)
    model = hierps.Model(frame, **roles, weights="b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = model.sample(
            estimand="atc", draws=100, tune=100, chains=1, random_seed=1, progressbar=False
        )
    assert result.estimand == "atc"
    assert list(result.catc.index) == list(model.design.groups)
    assert np.isfinite(result.atc["estimate"].iloc[0])
    assert "pseudo-posterior" in result.idata["estimands"].attrs["likelihood"]
    assert "weighted_likelihood" not in result.idata["posterior"]
    with pytest.raises(ValueError, match="ATC"):
        _ = result.att
