"""The one PyMC model: structure, densities checked by hand, and the same mode as fit_map."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from helpers import make_frame
from scipy.special import log_expit

import hierps
from hierps.calibrated.fit import hierarchical_problem
from hierps.calibrated.newton import objective
from hierps.design.hyperparameters import MapHyperparameters
from hierps.exceptions import HierpsWarning
from hierps.pymc_model import compress, coords_of, pattern_data

FIXED = dict(
    sigma_alpha=1.3, sigma_beta=0.7, sigma_mu_beta=1.1, sigma_gamma=0.9, sigma_intercept=2.5
)


@pytest.fixture(scope="module")
def model():
    frame, roles = make_frame(
        seed=1, sizes=(5, 100), n_groups=8, n_unit=2, n_group=1, categorical_levels=3
    )
    return hierps.Model(frame, **roles)


@pytest.fixture(scope="module")
def calibrated(model):
    return model.build_pymc(loss="calibrated", **FIXED)


def random_point(pymc_model, rng):
    return {
        rv.name: rng.normal(scale=0.5, size=pymc_model.initial_point()[rv.name].shape)
        for rv in pymc_model.free_RVs
    }


def gaussian_constant(point, scales):
    """−log of the Gaussian normalizers: what the PyMC density adds to the MAP objective."""
    constant = 0.0
    for name, value in point.items():
        constant += np.size(value) * (0.5 * np.log(2 * np.pi) + np.log(scales.get(name, 1.0)))
    return constant


def test_names_dims_and_data_containers(model):
    # The all-levels coding; the identified one is checked in test_coding.py.
    pymc_model = model.build_pymc(coding="full")
    assert {rv.name for rv in pymc_model.free_RVs} == {
        "intercept",
        "gamma",
        "sigma_alpha",
        "alpha_offset",
        "mu_beta",
        "sigma_beta",
        "beta_offset",
    }
    assert {"alpha", "beta"} <= {d.name for d in pymc_model.deterministics}
    dims = pymc_model.named_vars_to_dims
    assert dims["beta"] == ("group", "unit_covariate")
    assert dims["gamma"] == ("group_covariate",)
    assert dims["sigma_beta"] == ("varying_covariate",)
    assert list(pymc_model.coords["group"]) == list(model.design.groups)
    assert list(pymc_model.coords["unit_covariate"]) == list(model.design.unit_names)
    assert {"unit_design", "group_design", "group_index", "treatment"} <= set(pymc_model.named_vars)


def test_fixed_hyperparameters_are_constants(model, calibrated):
    names = {rv.name for rv in calibrated.free_RVs}
    assert "sigma_alpha" not in names and "sigma_beta" not in names
    assert "calibrated_loss" in {p.name for p in calibrated.potentials}
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        model.build_pymc(sigma_betta=1.0)
    with pytest.raises(ValueError, match="loss"):
        model.build_pymc(loss="probit")


@pytest.mark.slow
def test_bernoulli_density_matches_numpy(model):
    pymc_model = model.build_pymc(loss="bernoulli", coding="full", **FIXED)
    rng = np.random.default_rng(0)
    logp = pymc_model.compile_logp()
    d = model.design
    for _ in range(3):
        point = random_point(pymc_model, rng)
        alpha = (
            point["intercept"]
            + d.group_matrix @ point["gamma"]
            + FIXED["sigma_alpha"] * point["alpha_offset"]
        )
        beta = np.tile(point["mu_beta"], (d.n_groups, 1))
        beta[:, d.varying] += FIXED["sigma_beta"] * point["beta_offset"]
        eta = alpha[d.group_codes] + np.einsum("nk,nk->n", d.unit_matrix, beta[d.group_codes])
        likelihood = np.sum(np.where(d.treatment == 1, log_expit(eta), log_expit(-eta)))
        prior = sum(
            -0.5
            * np.sum((value / {"intercept": 2.5, "gamma": 0.9, "mu_beta": 1.1}.get(name, 1)) ** 2)
            for name, value in point.items()
        )
        scales = {"intercept": 2.5, "gamma": 0.9, "mu_beta": 1.1}
        expected = likelihood + prior - gaussian_constant(point, scales)
        assert logp(point) == pytest.approx(expected, rel=1e-10)


@pytest.mark.slow
def test_calibrated_density_is_minus_the_map_objective_everywhere(model, calibrated):
    """At any parameter value, −logp = the solver's objective + the Gaussian constants."""
    problem = hierarchical_problem(model.design, MapHyperparameters(**FIXED))
    logp = calibrated.compile_logp()
    rng = np.random.default_rng(1)
    scales = {"intercept": 2.5, "gamma": 0.9, "mu_beta": 1.1}
    for _ in range(3):
        point = random_point(calibrated, rng)
        theta_global = np.concatenate([[point["intercept"]], point["gamma"], point["mu_beta"]])
        theta_local = np.column_stack(
            [
                FIXED["sigma_alpha"] * point["alpha_offset"],
                FIXED["sigma_beta"] * point["beta_offset"],
            ]
        )
        expected = objective(problem, theta_global, theta_local) + gaussian_constant(point, scales)
        assert -logp(point) == pytest.approx(expected, rel=1e-10)


@pytest.mark.slow
def test_fit_map_and_find_map_reach_the_same_optimum(model, calibrated):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = model.fit_map(**FIXED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        found = pm.find_MAP(model=calibrated, progressbar=False)
    c = fit.coefficients
    ours = {
        "intercept": float(c["intercept"]),
        "gamma": c["gamma"].to_numpy(),
        "alpha_offset": c["alpha_deviation"].to_numpy() / FIXED["sigma_alpha"],
        "mu_beta": c["mu_beta"].to_numpy(),
        "beta_offset": c["beta_deviation"].to_numpy() / FIXED["sigma_beta"],
    }
    logp = calibrated.compile_logp()
    theirs = logp({name: found[name] for name in ours})
    assert logp(ours) == pytest.approx(theirs, rel=1e-6)
    assert logp(ours) >= theirs - 1e-9 * abs(theirs)
    # The weights are the odds exp(η) of the same model at find_MAP's point.
    np.testing.assert_allclose(found["mu_beta"], ours["mu_beta"], atol=1e-3)


# --------------------------------------------------------------------------------------------
# The likelihood on covariate patterns
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def discrete_model():
    """Discrete covariates, so that units really share (group, covariate row) patterns."""
    rng = np.random.default_rng(4)
    n = 600
    school = rng.integers(0, 5, n)
    frame = pd.DataFrame(
        {
            "school": [f"s{j}" for j in school],
            "x1": rng.integers(0, 4, n).astype(float),
            "x2": rng.integers(0, 2, n).astype(float),
            "c1": rng.choice(["a", "b", "c"], n),
            "v1": np.array([0.3, -1.2, 0.8, 0.1, -0.4])[school],
        }
    )
    frame["z"] = (rng.random(n) < 0.3 + 0.3 * frame["x2"]).astype(int)
    return hierps.Model(
        frame,
        treatment="z",
        group="school",
        unit_covariates=["x1", "x2", "c1"],
        group_covariates=["v1"],
        categorical=["c1"],
        varying_slopes=["x1", "c1"],
    )


def per_unit_eta(design, point, fixed=FIXED):
    alpha = (
        point["intercept"]
        + design.group_matrix @ point["gamma"]
        + fixed["sigma_alpha"] * point["alpha_offset"]
    )
    beta = np.tile(point["mu_beta"], (design.n_groups, 1))
    beta[:, design.varying] += fixed["sigma_beta"] * point["beta_offset"]
    codes = design.group_codes
    return alpha[codes] + np.einsum("nk,nk->n", design.unit_matrix, beta[codes])


def test_compress_counts_every_unit_once(discrete_model):
    d = discrete_model.design
    patterns = compress(d)
    assert len(patterns) < d.n_units / 4  # 5 schools × 4 × 2 × 3 covariate rows at most
    np.testing.assert_array_equal(patterns.design[patterns.of_unit], d.unit_matrix)
    np.testing.assert_array_equal(patterns.group[patterns.of_unit], d.group_codes)
    np.testing.assert_array_equal(
        patterns.units, np.bincount(patterns.of_unit, minlength=len(patterns))
    )
    np.testing.assert_array_equal(
        patterns.treated, np.bincount(patterns.of_unit, weights=d.treatment).astype(int)
    )
    assert np.all(np.diff(patterns.group) >= 0)  # sorted by group
    assert len(np.unique(np.column_stack([patterns.group, patterns.design]), axis=0)) == len(
        patterns
    )


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bernoulli", "calibrated"])
def test_compressed_likelihood_is_the_per_unit_sum(discrete_model, loss):
    """The likelihood term on patterns = the per-unit Bernoulli log-likelihood (no binomial
    coefficients), or minus the per-unit calibrated loss."""
    d = discrete_model.design
    pymc_model = discrete_model.build_pymc(loss=loss, coding="full", **FIXED)
    term = pymc_model["treated" if loss == "bernoulli" else "calibrated_loss"]
    likelihood = pymc_model.compile_fn(pymc_model.logp(vars=[term]), point_fn=True)
    rng = np.random.default_rng(7)
    for _ in range(4):
        point = random_point(pymc_model, rng)
        eta = per_unit_eta(d, point)
        if loss == "bernoulli":
            expected = np.sum(np.where(d.treatment == 1, log_expit(eta), log_expit(-eta)))
        else:
            expected = -(np.sum(np.exp(eta[d.treatment == 0])) - np.sum(eta[d.treatment == 1]))
        assert likelihood(point) == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_calibrated_loss_and_gradient_ignore_treated_only_patterns_that_overflow():
    """exp(η) of a pattern without controls is never formed: an η that overflows there leaves
    the calibrated loss and its gradient finite."""
    frame = pd.DataFrame(
        {
            "school": ["a"] * 6 + ["b"] * 6,
            "x1": [0.0, 1.0, 2.0, 0.0, 1.0, 800.0] * 2,
            "z": [0, 0, 1, 1, 0, 1] * 2,
        }
    )
    model = hierps.Model(
        frame, treatment="z", group="school", unit_covariates=["x1"], standardize=False
    )
    pymc_model = model.build_pymc(loss="calibrated", **FIXED)
    point = {name: np.zeros_like(value) for name, value in pymc_model.initial_point().items()}
    point["mu_beta"] = np.array([1.0])  # η = 800 on the treated x1 = 800 units: exp overflows
    loss = pymc_model.compile_fn(
        pymc_model.logp(vars=[pymc_model["calibrated_loss"]]), point_fn=True
    )
    gradient = pymc_model.compile_dlogp()(point)
    # Per school: controls at x1 = 0, 1, 1 and treated at x1 = 2, 0, 800.
    assert loss(point) == pytest.approx(-2 * (1 + 2 * np.e - 802), rel=1e-12)
    assert np.all(np.isfinite(gradient))


@pytest.mark.slow
def test_pattern_data_moves_a_built_model_to_other_rows(discrete_model):
    d = discrete_model.design
    frame = discrete_model.data
    other = hierps.Model(
        frame.iloc[: len(frame) // 2],
        treatment="z",
        group="school",
        unit_covariates=["x1", "x2", "c1"],
        group_covariates=["v1"],
        categorical=["c1"],
        varying_slopes=["x1", "c1"],
    )
    assert list(other.design.groups) == list(d.groups)
    # The identified coding bakes in the design's column scales; "full" has no such constants.
    built = discrete_model.build_pymc(coding="full", **FIXED)
    with built:
        pm.set_data(pattern_data(other.design), coords=coords_of(other.design))
    direct = other.build_pymc(coding="full", **FIXED)
    point = random_point(direct, np.random.default_rng(3))
    assert built.compile_logp()(point) == pytest.approx(direct.compile_logp()(point), rel=1e-12)
