"""The augmented posterior ATT computed by hand, draw by draw."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from helpers import hand_built_tree, make_frame

import hierps
from hierps.exceptions import HierpsWarning
from hierps.posterior.draws import from_idata


@pytest.fixture(scope="module")
def fitted():
    # Groups of very different sizes, so that weighing groups by their treated count or by
    # their bootstrap treated mass gives visibly different ATTs.
    frame, roles = make_frame(seed=62, sizes=[15, 80, 30, 120, 25], n_unit=2, n_group=1)
    model = hierps.Model(frame, **roles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = model.fit_map(sigma_beta=0.5)
    return model, fit


def by_hand(design, result, m):
    """Per draw: the augmented CATTs and their weighting by the treated (bootstrap) mass."""
    weights = result.idata["weights"]
    control = weights["weight_draws"].stack(sample=("chain", "draw")).transpose("sample", "obs")
    control = control.to_numpy()
    treated = np.ones_like(control)
    if "bootstrap_weight" in weights:
        bootstrap = weights["bootstrap_weight"].stack(sample=("chain", "draw"))
        treated = bootstrap.transpose("sample", "obs").to_numpy()
        control = control * treated
    residual = design.outcome - m
    t = design.treatment == 1
    draws = len(control)
    catt, mass = np.empty((draws, design.n_groups)), np.empty((draws, design.n_groups))
    for s in range(draws):
        for j in range(design.n_groups):
            rows = design.group_codes == j
            a, c = rows & t, rows & ~t
            mass[s, j] = treated[s, a].sum()
            catt[s, j] = (treated[s, a] * residual[s, a]).sum() / mass[s, j] - (
                control[s, c] * residual[s, c]
            ).sum() / control[s, c].sum()
    att = np.array([np.sum(catt[s] * mass[s]) / np.sum(mass[s]) for s in range(draws)])
    return catt, att


@pytest.mark.parametrize("uncertainty", ["propensity", "bayesian_bootstrap"])
def test_augmented_att_is_the_treated_mass_weighted_mean_of_each_draws_catts(fitted, uncertainty):
    model, fit = fitted
    design = model.design
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = from_idata(
            design,
            hand_built_tree(fit, draws=25),
            uncertainty=uncertainty,
            random_seed=11,
            store_weights=True,
        )
    rng = np.random.default_rng(3)
    values = 0.5 * design.outcome[None, :] + rng.normal(size=(50, design.n_units))
    m = xr.DataArray(values, dims=("sample", "obs"), coords={"obs": list(design.index)})
    table = hierps.augment(result, m)
    catt, att = by_hand(design, result, values)
    np.testing.assert_allclose(table["mean"], catt.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(table["sd"], catt.std(axis=0, ddof=1), rtol=1e-10)
    summary = table.attrs["att"]
    assert summary["mean"] == pytest.approx(att.mean(), rel=1e-12)
    assert summary["sd"] == pytest.approx(att.std(ddof=1), rel=1e-10)
    assert summary["lower"] == pytest.approx(np.quantile(att, 0.05), rel=1e-12)
    assert summary["upper"] == pytest.approx(np.quantile(att, 0.95), rel=1e-12)
    assert table.attrs["ci_prob"] == 0.9
    np.testing.assert_array_equal(table["n_treated"], design.treated_per_group)
