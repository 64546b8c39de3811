"""Extreme but valid prior scales in MAP mode: a result, equal to the limit it stands for."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import make_frame

import hierps
from hierps.exceptions import HierpsWarning


@pytest.fixture(scope="module")
def model():
    frame, roles = make_frame(seed=11, sizes=(40, 120), n_groups=5, n_unit=2, n_group=1)
    return hierps.Model(frame, **roles)


def fit(model, **scales):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return model.fit_map(**scales)


@pytest.mark.parametrize("name", ["sigma_alpha", "sigma_beta", "sigma_mu_beta", "sigma_gamma"])
@pytest.mark.parametrize(("extreme", "bound"), [(1e-12, 1e-6), (1e12, 1e4)])
def test_scales_beyond_the_bounds_act_as_the_bounds(model, name, extreme, bound):
    beyond, at = fit(model, **{name: extreme}), fit(model, **{name: bound})
    np.testing.assert_array_equal(beyond.weights, at.weights)
    assert beyond.hyperparameters.as_dict()[name] == extreme  # reported as given


def test_no_pooling_limit_balances_every_group(model):
    result = fit(model, sigma_alpha=1e12, sigma_beta=1e12)
    d = model.design
    w = result.weights.to_numpy()
    z = np.column_stack([np.ones(d.n_units), d.unit_matrix])
    for j in range(d.n_groups):
        controls = (d.group_codes == j) & (d.treatment == 0)
        treated = (d.group_codes == j) & (d.treatment == 1)
        imbalance = w[controls] @ z[controls] - z[treated].sum(axis=0)
        assert np.abs(imbalance).max() < 1e-5 * max(1, treated.sum())
