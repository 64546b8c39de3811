"""Model checks of posterior mode: log-likelihood, predictive draws, calibration, progress."""

from __future__ import annotations

import io
import sys
import warnings

import arviz as az
import numpy as np
import pytest
import xarray as xr
from helpers import hand_built_tree, make_frame
from scipy.special import log_expit

import hierps
from hierps.exceptions import HierpsWarning
from hierps.mcmc.conventions import show_progress
from hierps.posterior.checks import (
    add_log_likelihood,
    add_posterior_predictive,
    calibration,
)

FRAME, ROLES = make_frame(seed=5, sizes=(20, 60), n_groups=7, n_unit=2, n_group=1)
# Discrete covariates so that cells hold several units.
FRAME["x1"] = np.round(FRAME["x1"])
FRAME["x2"] = (FRAME["x2"] > 0).astype(float)


@pytest.fixture(scope="module")
def model():
    return hierps.Model(FRAME, **ROLES)


@pytest.fixture(scope="module")
def tree(model):
    fit = model.fit_map(sigma_beta=1.0)
    return hand_built_tree(fit, chains=2, draws=50, spread=0.2)


def unit_eta(design, posterior):
    alpha = posterior["alpha"].transpose("chain", "draw", "group").to_numpy()
    beta = posterior["beta"].transpose("chain", "draw", "group", "unit_covariate").to_numpy()
    codes = design.group_codes
    return alpha[:, :, codes] + np.einsum("cdnk,nk->cdn", beta[:, :, codes], design.unit_matrix)


def test_log_likelihood_sums_the_units_of_each_cell(model, tree):
    design = model.design
    idata = add_log_likelihood(design, tree.copy())
    cells = idata["log_likelihood"]["treated"].to_numpy()
    eta = unit_eta(design, tree["posterior"])
    per_unit = np.where(design.treatment == 1, log_expit(eta), log_expit(-eta))
    # Cells are coarser than units (discrete covariates), and the totals agree per draw.
    assert cells.shape[-1] < design.n_units
    np.testing.assert_allclose(cells.sum(axis=-1), per_unit.sum(axis=-1), rtol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k > 0.5 of hand-made draws
        loo = az.loo(idata, pointwise=True)
    assert np.isfinite(loo.elpd)
    assert loo.pareto_k.sizes["pattern"] == cells.shape[-1]


def test_posterior_predictive_counts_and_calibration(model, tree):
    design = model.design
    idata = add_posterior_predictive(design, tree.copy(), np.random.default_rng(0))
    drawn = idata["posterior_predictive"]["group_treated"]
    assert drawn.dims == ("chain", "draw", "group")
    sizes = design.units_per_group
    assert (drawn.to_numpy() >= 0).all() and (drawn.to_numpy() <= sizes).all()
    # The mean of the draws is the expected count Σ π within Monte Carlo error.
    pi = 1 / (1 + np.exp(-unit_eta(design, tree["posterior"])))
    expected = np.stack([pi[..., design.group_codes == j].sum(-1) for j in range(len(sizes))], -1)
    error = np.abs(drawn.mean(("chain", "draw")).to_numpy() - expected.mean((0, 1)))
    assert (error < 4 * np.sqrt(sizes / 4 / 100) + 0.5).all()
    table = calibration(idata, prob=0.8)
    np.testing.assert_allclose(table["observed"], design.treated_per_group / sizes)
    assert (table["lower"] <= table["predicted"]).all()
    assert (table["predicted"] <= table["upper"]).all()
    assert table["outside"].dtype == bool and table["p_value"].between(0, 1).all()
    outside = (table["observed"] < table["lower"]) | (table["observed"] > table["upper"])
    assert (outside == table["outside"]).all()
    with pytest.raises(ValueError, match="prob"):
        calibration(idata, prob=1.5)
    with pytest.raises(ValueError, match="posterior_predictive"):
        calibration(tree)


def test_progress_follows_the_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert show_progress(None) is True
    assert show_progress(False) is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert show_progress(None) is False
    assert show_progress(True) is True


@pytest.mark.slow
def test_sampled_result_has_the_workflow_groups_and_they_round_trip(model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = model.sample(draws=200, tune=300, chains=2, random_seed=3, prior_draws=100)
    idata = result.idata
    for group in ("log_likelihood", "prior", "prior_predictive", "posterior_predictive"):
        assert group in idata.children, group
    assert idata["prior"].sizes["draw"] == 100
    assert "group_treated" in idata["prior_predictive"]
    loo = az.loo(idata, pointwise=True)
    assert np.isfinite(loo.elpd) and np.isfinite(loo.pareto_k).all()
    path = tmp_path / "result.nc"
    idata.to_netcdf(path)
    back = xr.open_datatree(path)
    for group in ("log_likelihood", "prior", "prior_predictive", "posterior_predictive"):
        xr.testing.assert_allclose(back[group].to_dataset(), idata[group].to_dataset())
    assert len(calibration(result)) == model.design.n_groups
    from hierps.plots import plot_calibration

    fig, _ = plot_calibration(result)
    assert fig.axes
    prior = model.sample_prior_predictive(draws=50, random_seed=1)
    assert prior["prior_predictive"]["group_treated"].sizes["group"] == model.design.n_groups
    with pytest.raises(ValueError, match="loss='calibrated' has no predictive"):
        hierps.sample_prior_predictive(model.design, loss="calibrated")


def test_calibrated_loss_with_hyperpriors_warns_before_sampling(model):
    # The invalid fixed scale stops the call after the warning and before any compilation.
    with pytest.warns(HierpsWarning, match="improper"), pytest.raises(ValueError):
        model.sample(loss="calibrated", sigma_mu_beta=-1.0)
