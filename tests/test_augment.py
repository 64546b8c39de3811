"""Augmentation of MAP and posterior results with outcome-model draws."""

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
    frame, roles = make_frame(seed=61, sizes=(20, 60), n_groups=5, n_unit=2, n_group=1)
    model = hierps.Model(frame, **roles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        fit = model.fit_map(sigma_beta=0.5)
    return model, fit


def predictions(design, n_samples, seed=0):
    rng = np.random.default_rng(seed)
    values = design.outcome[None, :] * 0.5 + rng.normal(size=(n_samples, design.n_units))
    return xr.DataArray(values, dims=("sample", "obs"), coords={"obs": list(design.index)})


@pytest.mark.parametrize("uncertainty", ["propensity", "bayesian_bootstrap"])
def test_posterior_augmentation_equals_hand_computation(fitted, uncertainty):
    model, fit = fitted
    design = model.design
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = from_idata(
            design,
            hand_built_tree(fit, draws=30),
            uncertainty=uncertainty,
            random_seed=5,
            store_weights=True,
        )
    m = predictions(design, 60)
    table = hierps.augment(result, m)
    # By hand, draw by draw, from the weights the result stored with the same seed.
    weights = result.idata["weights"]
    control = weights["weight_draws"].stack(sample=("chain", "draw")).transpose("sample", "obs")
    control = control.to_numpy()
    treated = np.ones_like(control)
    if uncertainty == "bayesian_bootstrap":
        bootstrap = weights["bootstrap_weight"].stack(sample=("chain", "draw"))
        treated = bootstrap.transpose("sample", "obs").to_numpy()
        control = control * treated
    residual = design.outcome - m.to_numpy()
    t = design.treatment == 1
    catt = np.empty((60, design.n_groups))
    for j in range(design.n_groups):
        rows = design.group_codes == j
        a, c = rows & t, rows & ~t
        catt[:, j] = (treated[:, a] * residual[:, a]).sum(1) / treated[:, a].sum(1) - (
            control[:, c] * residual[:, c]
        ).sum(1) / control[:, c].sum(1)
    np.testing.assert_allclose(table["mean"].to_numpy(), catt.mean(axis=0), rtol=1e-10)
    assert table.attrs["att"]["lower"] <= table.attrs["att"]["mean"] <= table.attrs["att"]["upper"]


def test_map_augmentation_with_zero_outcome_model_is_plain_weighting(fitted):
    model, fit = fitted
    zero = xr.DataArray(
        np.zeros((4, model.design.n_units)),
        dims=("sample", "obs"),
        coords={"obs": list(model.design.index)},
    )
    table = hierps.augment(fit, zero)
    np.testing.assert_allclose(table["mean"], fit.catt["estimate"], rtol=1e-12)
    assert table.attrs["att"]["mean"] == pytest.approx(fit.att)


def test_augment_rejects_other_objects(fitted):
    with pytest.raises(TypeError, match="MapResult or PosteriorResult"):
        hierps.augment(object(), None)
