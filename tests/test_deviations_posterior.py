"""Structured slope deviations in the PyMC model: log densities against hand computations,
small sampling runs, and the errors for bad combinations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import make_frame
from scipy import stats

import hierps
from hierps.exceptions import ArgumentError, ArgumentTypeError, HierpsWarning
from hierps.pymc_model import build_pymc


@pytest.fixture(scope="module")
def design():
    frame, roles = make_frame(seed=3, sizes=(30, 80), n_groups=6, n_unit=3, n_group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return hierps.Model(frame, **roles).design


def _point(model, seed: int) -> dict[str, np.ndarray]:
    """A random point on the model's (transformed) value variables."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(scale=0.4, size=np.shape(value))
        for name, value in model.initial_point().items()
    }


def _calibrated_logp(design, point, deviation, penalty, sigma_alpha=0.8):
    """The calibrated-loss log density by hand: − loss + normal priors − penalty(Δ)."""
    intercept, gamma = point["intercept"], point["gamma"]
    alpha = intercept + design.group_matrix @ gamma + sigma_alpha * point["alpha_offset"]
    beta = point["mu_beta"] + deviation
    eta = alpha[design.group_codes] + np.einsum(
        "nk,nk->n", design.unit_matrix, beta[design.group_codes]
    )
    controls = design.treatment == 0
    loss = np.exp(eta[controls]).sum() - eta[~controls].sum()
    priors = (
        stats.norm(0, 2.5).logpdf(intercept)
        + stats.norm(0, 1).logpdf(gamma).sum()
        + stats.norm(0, 1).logpdf(point["alpha_offset"]).sum()
        + stats.norm(0, 1).logpdf(point["mu_beta"]).sum()
    )
    return -loss + priors - penalty


@pytest.mark.parametrize("scale", [0.7, np.array([0.5, 1.0, 2.0])])
def test_laplace_calibrated_density_is_the_penalized_map_objective(design, scale):
    model = build_pymc(
        design, loss="calibrated", deviations="laplace", sigma_alpha=0.8, sigma_beta=scale
    )
    logp = model.compile_logp()
    for seed in range(3):
        point = _point(model, seed)
        deviation = point["beta_deviation"]
        # Laplace(0, b) log density: −|δ|/b − log(2b).
        laplace = stats.laplace(0, np.broadcast_to(scale, deviation.shape)).logpdf(deviation)
        expected = _calibrated_logp(design, point, deviation, -laplace.sum())
        assert logp(point) == pytest.approx(expected, rel=1e-9)


def test_low_rank_calibrated_density_has_the_nuclear_norm_penalty(design):
    model = build_pymc(
        design, loss="calibrated", deviations="low_rank", rank=1, sigma_alpha=0.8, sigma_beta=0.5
    )
    logp = model.compile_logp()
    for seed in range(3):
        point = _point(model, seed)
        deviation = point["beta_deviation"]
        nuclear = np.linalg.svd(deviation, compute_uv=False).sum()
        expected = _calibrated_logp(design, point, deviation, nuclear / 0.5)
        assert logp(point) == pytest.approx(expected, rel=1e-9)


def test_laplace_scale_mixture_has_the_laplace_marginal(design):
    """Prior draws of δ = b·sqrt(2e)·z against the Laplace(0, b) distribution."""
    model = build_pymc(design, deviations="laplace", sigma_beta=0.6)
    draws = hierps.sample_prior_predictive(
        design, draws=4000, random_seed=1, deviations="laplace", sigma_beta=0.6
    )["prior"]
    assert "beta_mixing" in model.named_vars and "beta_offset" in model.named_vars
    beta = draws["beta"].to_numpy()
    mu = draws["mu_beta"].to_numpy()
    deviations = (beta - mu[:, :, None, :]).ravel()
    result = stats.kstest(deviations, stats.laplace(0, 0.6).cdf)
    assert result.pvalue > 1e-3
    # Not a normal with the same variance: the Laplace's tails are heavier.
    assert stats.kurtosis(deviations) > 2.0


def test_low_rank_loadings_are_lower_triangular_with_a_positive_diagonal(design):
    draws = hierps.sample_prior_predictive(
        design, draws=300, random_seed=2, deviations="low_rank", rank=2, sigma_beta=0.5
    )["prior"]
    loadings = draws["loadings"].transpose(..., "varying_covariate", "factor").to_numpy()
    assert loadings.shape[-2:] == (3, 2)
    assert np.all(loadings[..., 0, 1] == 0.0)
    assert np.all(loadings[..., [0, 1], [0, 1]] > 0.0)
    # δ_j = L f_j: every group's deviation matrix has rank ≤ 2 in every draw.
    deviation = (draws["beta"] - draws["mu_beta"]).transpose(
        "chain", "draw", "unit_covariate", "group"
    )
    singular = np.linalg.svd(deviation.to_numpy(), compute_uv=False)
    assert np.all(singular[..., 2] < 1e-10 * singular[..., 0])


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"deviations": "sparse"}, ArgumentError, "deviations='sparse'"),
        ({"deviations": "low_rank"}, ArgumentError, "needs rank=K"),
        ({"deviations": "low_rank", "rank": 4}, ArgumentError, "rank=4 must be between 1"),
        ({"deviations": "low_rank", "rank": 1.5}, ArgumentTypeError, "rank must be an integer"),
        ({"deviations": "laplace", "rank": 2}, ArgumentError, "rank=2 applies to"),
        (
            {"deviations": "low_rank", "rank": 1, "sigma_beta": [0.5, 1.0, 1.0]},
            ArgumentError,
            "one sigma_beta",
        ),
    ],
)
def test_bad_structures_are_refused_by_name(design, options, error, match):
    with pytest.raises(error, match=match):
        build_pymc(design, **options)


def test_categorical_varying_slopes_need_the_full_coding():
    frame, roles = make_frame(seed=1, sizes=(30, 60), n_groups=5, categorical_levels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        model = hierps.Model(frame, **roles, categorical=["c1"])
    with pytest.raises(ArgumentError, match="coding='full'"):
        model.build_pymc(deviations="laplace")
    assert "beta_offset" in model.build_pymc(deviations="laplace", coding="full").named_vars


@pytest.mark.slow
@pytest.mark.parametrize(
    ("deviations", "rank"), [("laplace", None), ("low_rank", 1), ("low_rank", 2)]
)
def test_structured_posteriors_sample_and_give_effects(design, deviations, rank):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = hierps.sample(
            design,
            draws=300,
            tune=300,
            chains=2,
            random_seed=5,
            deviations=deviations,
            rank=rank,
            progressbar=False,
            prior_draws=0,
        )
    posterior = result.idata["posterior"]
    assert posterior["beta"].dims == ("chain", "draw", "group", "unit_covariate")
    assert np.isfinite(result.catt["mean"]).all()
    assert np.isfinite(result.att["mean"].iloc[0])
    assert result.idata.attrs["hierps_deviations"] == deviations
    assert int(result.idata["sample_stats"]["diverging"].sum()) <= 3
    if deviations == "low_rank":
        assert posterior["factor_scores"].sizes["factor"] == rank
