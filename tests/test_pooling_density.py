"""The CATT-pooling model's log density against scipy's, at fixed points (no sampling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hierps.effects.catt_pooling import _pooling_model

ESTIMATE = np.array([0.9, 0.2, 1.6, -0.3, 0.7, 1.1])
SE = np.array([0.25, 0.6, 0.4, 1.3, 0.15, 0.8])
GROUPS = [f"g{j}" for j in range(len(ESTIMATE))]


def covariates(k: int) -> pd.DataFrame:
    rng = np.random.default_rng(k)
    values = rng.normal(size=(len(ESTIMATE), k))
    return pd.DataFrame(values, index=GROUPS, columns=[f"v{i}" for i in range(k)])


def scipy_logp(point, estimate, se, v, spread):
    mu, sigma, z = point["mu_tau"], point["sigma_tau"], point["z"]
    phi = point.get("phi", np.zeros(v.shape[1]))
    theta = mu + v @ phi + sigma * z
    return (
        stats.norm.logpdf(mu, 0.0, 10.0 * spread)
        + stats.halfnorm.logpdf(sigma, scale=spread)
        + stats.norm.logpdf(phi, 0.0, spread).sum()
        + stats.norm.logpdf(z).sum()
        + stats.norm.logpdf(estimate, theta, se).sum()
    )


@pytest.mark.parametrize("n_covariates", [0, 2])
def test_log_density_equals_scipy_at_fixed_points(n_covariates):
    v = covariates(n_covariates)
    model = _pooling_model(ESTIMATE, SE, v)
    logp = model.compile_logp(jacobian=False, mode="FAST_COMPILE")
    spread = np.std(ESTIMATE, ddof=1)
    rng = np.random.default_rng(1)
    for _ in range(5):
        point = {
            "mu_tau": rng.normal(),
            "sigma_tau": rng.uniform(0.05, 2.0),
            "z": rng.normal(size=len(ESTIMATE)),
        }
        if n_covariates:
            point["phi"] = rng.normal(size=n_covariates)
        values = {
            "mu_tau": np.asarray(point["mu_tau"]),
            "sigma_tau_log__": np.asarray(np.log(point["sigma_tau"])),
            "z": point["z"],
            **({"phi": point["phi"]} if n_covariates else {}),
        }
        expected = scipy_logp(point, ESTIMATE, SE, v.to_numpy(), spread)
        assert float(logp(values)) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_the_likelihood_takes_the_standard_errors_as_standard_deviations():
    # Only the likelihood depends on se: the change in log density between two sets of standard
    # errors is the change in Σ log N(τ̂ | θ, se).
    point = {"mu_tau": np.asarray(0.4), "sigma_tau_log__": np.asarray(np.log(0.3))}
    point["z"] = np.linspace(-1, 1, len(ESTIMATE))
    theta = 0.4 + 0.3 * point["z"]
    v = covariates(0)
    base = float(
        _pooling_model(ESTIMATE, SE, v).compile_logp(jacobian=False, mode="FAST_COMPILE")(point)
    )
    wider = float(
        _pooling_model(ESTIMATE, 2 * SE, v).compile_logp(jacobian=False, mode="FAST_COMPILE")(point)
    )
    expected = (
        stats.norm.logpdf(ESTIMATE, theta, 2 * SE).sum()
        - stats.norm.logpdf(ESTIMATE, theta, SE).sum()
    )
    assert wider - base == pytest.approx(expected, rel=1e-10)


def test_equal_estimates_scale_the_priors_by_the_typical_standard_error():
    estimate = np.full(len(SE), 0.5)
    model = _pooling_model(estimate, SE, covariates(0))
    spread = np.sqrt(np.mean(SE**2))
    point = {"mu_tau": 0.2, "sigma_tau": 0.7, "z": np.linspace(-1, 1, len(SE))}
    values = {
        "mu_tau": np.asarray(0.2),
        "sigma_tau_log__": np.asarray(np.log(0.7)),
        "z": point["z"],
    }
    expected = scipy_logp(point, estimate, SE, np.zeros((len(SE), 0)), spread)
    assert float(model.compile_logp(jacobian=False, mode="FAST_COMPILE")(values)) == pytest.approx(
        expected, rel=1e-10
    )


def test_the_model_names_its_dims_and_deterministics():
    model = _pooling_model(ESTIMATE, SE, covariates(2))
    assert model.coords["group"] == tuple(GROUPS)
    assert model.coords["covariate"] == ("v0", "v1")
    assert {d.name for d in model.deterministics} == {"fitted", "theta"}
    assert [rv.name for rv in model.observed_RVs] == ["estimate"]
    np.testing.assert_array_equal(model["v"].get_value(), covariates(2).to_numpy())
