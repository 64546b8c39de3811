"""Empirical-Bayes scales ("auto"): the Laplace marginal likelihood against a dense
computation, recovery of the simulated slope heterogeneity, and how results report it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.optimize
from helpers import make_frame

import hierps
from hierps.calibrated.empirical_bayes import estimate_scales, laplace_log_marginal
from hierps.design.hyperparameters import MapHyperparameters
from hierps.exceptions import HierpsWarning


def dense_laplace(design, base=None, **scales) -> float:
    """The Laplace approximation with the full parameter vector and a dense Hessian."""
    h = MapHyperparameters.from_user(int(design.varying.sum()), **scales)
    x, v, codes = design.unit_matrix, design.group_matrix, design.group_codes
    n, J = len(codes), design.n_groups
    varying = np.flatnonzero(design.varying)
    indicator = np.zeros((n, J))
    indicator[np.arange(n), codes] = 1.0
    slopes = [indicator * x[:, [k]] for k in varying]
    # η = a0 + v_j'γ + x'μ + u_j + Σ_k x_k δ_jk: one column per parameter.
    columns = np.column_stack([np.ones(n), v[codes], x, indicator, *slopes])
    precision = np.concatenate(
        [
            [h.sigma_intercept**-2],
            np.full(v.shape[1], h.sigma_gamma**-2),
            np.full(x.shape[1], h.sigma_mu_beta**-2),
            np.full(J, h.sigma_alpha**-2),
            np.repeat(h.sigma_beta_vector(len(varying)) ** -2, J),
        ]
    )
    t = design.treatment.astype(float)
    b = design.unit_weights

    def loss(theta):
        eta = columns @ theta
        return b @ np.logaddexp(0, eta) - (b * t) @ eta + 0.5 * precision @ theta**2

    def gradient(theta):
        pi = 1 / (1 + np.exp(-(columns @ theta)))
        return columns.T @ (b * (pi - t)) + precision * theta

    found = scipy.optimize.minimize(
        loss, np.zeros(len(precision)), jac=gradient, method="BFGS", options={"gtol": 1e-10}
    )
    pi = 1 / (1 + np.exp(-(columns @ found.x)))
    hessian = (columns * (b * pi * (1 - pi))[:, None]).T @ columns + np.diag(precision)
    return float(-found.fun + 0.5 * np.log(precision).sum() - 0.5 * np.linalg.slogdet(hessian)[1])


@pytest.mark.parametrize("base", [False, True], ids=["unweighted", "base weights"])
@pytest.mark.parametrize(
    "scales", [dict(), dict(sigma_alpha=0.3, sigma_beta=2.0)], ids=["defaults", "custom"]
)
def test_laplace_marginal_likelihood_equals_the_dense_computation(scales, base):
    frame, roles = make_frame(seed=31, sizes=(5, 40), n_groups=6, n_unit=2, n_group=1)
    if base:
        frame["b"] = np.random.default_rng(0).uniform(0.5, 2.0, len(frame))
    model = hierps.Model(frame, **roles, weights="b" if base else None)
    expected = dense_laplace(model.design, **scales)
    assert laplace_log_marginal(model.design, **scales) == pytest.approx(expected, abs=1e-6)


def test_partial_varying_slopes_in_the_laplace_approximation():
    frame, roles = make_frame(seed=32, sizes=(5, 40), n_groups=5, n_unit=3, n_group=0)
    model = hierps.Model(frame, **roles, varying_slopes=["x1"])
    expected = dense_laplace(model.design, sigma_beta=0.5)
    assert laplace_log_marginal(model.design, sigma_beta=0.5) == pytest.approx(expected, abs=1e-6)


def simulated(sigma_beta: float, seed: int) -> hierps.Model:
    study = hierps.datasets.simulate_multisite(
        n_groups=40, group_size=(60, 120), sigma_beta=sigma_beta, seed=seed
    )
    return hierps.Model(
        study.data,
        treatment=study.treatment,
        group=study.group,
        outcome=study.outcome,
        unit_covariates=study.unit_covariates,
        group_covariates=study.group_covariates,
    )


def test_estimated_slope_scale_follows_the_simulated_heterogeneity():
    chosen = {}
    for truth in (0.1, 1.5):
        selection = estimate_scales(simulated(truth, seed=3).design, ["sigma_alpha", "sigma_beta"])
        chosen[truth] = selection.scales["sigma_beta"]
        assert selection.evaluations < 60
    assert chosen[0.1] < 0.4
    assert 0.8 < chosen[1.5] < 3.0


def test_auto_fit_reports_the_chosen_scales_and_is_the_fixed_fit_there():
    model = simulated(0.5, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = model.fit_map(sigma_alpha="auto", sigma_beta="auto")
        h = fit.hyperparameters
        assert fit.selection.scales == {"sigma_alpha": h.sigma_alpha, "sigma_beta": h.sigma_beta}
        assert "Laplace" in fit.selection.method
        fixed = model.fit_map(sigma_alpha=h.sigma_alpha, sigma_beta=h.sigma_beta)
    np.testing.assert_allclose(fit.weights, fixed.weights, rtol=1e-10)
    # The chosen point maximizes the marginal likelihood (to the optimizer's tolerance).
    best = fit.selection.log_marginal_likelihood
    for factor in (0.7, 1.4):
        nearby = laplace_log_marginal(
            model.design, sigma_alpha=h.sigma_alpha, sigma_beta=h.sigma_beta * factor
        )
        assert nearby <= best + 1e-3
    with pytest.raises(ValueError, match="sigma_gamma='auto'"):
        model.fit_map(sigma_gamma="auto")
    with pytest.raises(TypeError, match=r"sigma_beta must be a positive number \(or 'auto'"):
        model.fit_map(sigma_beta="guess")


def test_pooling_path_marks_the_empirical_bayes_value():
    model = simulated(0.5, seed=5)
    table = hierps.pooling_path(model, sigma_beta=[0.1, 1.0, 10.0], auto=True)
    assert table["auto"].sum() == 1
    chosen = table.index[table["auto"]][0]
    assert chosen == pytest.approx(table.attrs["auto"]["sigma_beta"])
    assert len(table) == 4


def test_model_files_accept_auto_weights_and_estimand():
    from hierps.workflow.spec import ModelSpec

    spec = ModelSpec.model_validate(
        {
            "name": "t",
            "data": {"dataset": "nh0506", "treatment": "z", "group": "g", "weights": "w"},
            "map": {"sigma_alpha": "auto", "sigma_beta": "auto"},
            "output": {"estimand": "ate"},
        }
    )
    assert spec.map_hyperparameters() == {"sigma_alpha": "auto", "sigma_beta": "auto"}
    assert spec.data.weights == "w" and spec.output.estimand == "ate"
    with pytest.raises(ValueError):
        ModelSpec.model_validate(
            {
                "name": "t",
                "data": {"dataset": "nh0506", "treatment": "z", "group": "g"},
                "map": {"sigma_beta": "guess"},
            }
        )


@pytest.mark.parametrize("varying", [None, ["x1"]], ids=["all slopes vary", "one slope varies"])
def test_log_scale_gradient_equals_finite_differences(varying):
    from hierps.calibrated import empirical_bayes as eb

    frame, roles = make_frame(seed=33, sizes=(5, 40), n_groups=6, n_unit=2, n_group=1)
    frame["b"] = np.random.default_rng(1).uniform(0.5, 2.0, len(frame))
    design = hierps.Model(frame, **roles, varying_slopes=varying, weights="b").design
    data = eb._bernoulli_data(design)
    n_varying = int(design.varying.sum())
    masks = [np.arange(1 + n_varying) == 0, np.arange(1 + n_varying) > 0]

    def laplace(log_alpha, log_beta, with_gradient=False):
        h = MapHyperparameters.from_user(
            n_varying, sigma_alpha=np.exp(log_alpha), sigma_beta=np.exp(log_beta)
        )
        mode = eb._laplace(
            eb._bernoulli_problem(design, data, h),
            data,
            None,
            tol=1e-11,
            masks=masks if with_gradient else (),
        )
        return mode.log_marginal, mode.gradient

    point, step = (np.log(0.7), np.log(0.4)), 1e-5
    _, gradient = laplace(*point, with_gradient=True)
    numeric = [
        (laplace(point[0] + step, point[1])[0] - laplace(point[0] - step, point[1])[0]) / 2 / step,
        (laplace(point[0], point[1] + step)[0] - laplace(point[0], point[1] - step)[0]) / 2 / step,
    ]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-6)
