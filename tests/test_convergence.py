"""The vectorized R-hat and bulk ESS against ArviZ's entry-by-entry implementation."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import rankdata

from hierps.mcmc.convergence import _average_ranks, rhat_and_ess, rhat_and_ess_of

RNG = np.random.default_rng(20261122)


def _chains(name: str) -> np.ndarray:
    """Draws shaped (chain, draw, entry) with the behaviours the ESS truncation must handle."""
    normal = RNG.normal
    if name == "independent":
        return normal(size=(2, 1000, 20))
    if name == "autocorrelated":
        return np.cumsum(normal(size=(2, 800, 20)), axis=1) * 0.1 + normal(size=(2, 800, 20))
    if name == "antithetic":
        sign = (-1.0) ** np.arange(301)[None, :, None]
        return (
            np.cumsum(normal(size=(4, 301, 10)) * sign, axis=1) * 0.01
            + normal(size=(4, 301, 10)) * 0.1
        )
    if name == "disagreeing chains":
        return normal(size=(3, 200, 10)) + np.array([0.0, 1.5, 3.0])[:, None, None]
    if name == "random walk":
        return np.cumsum(normal(size=(2, 500, 10)), axis=1)
    if name == "ties":
        return RNG.integers(0, 3, size=(2, 100, 10)).astype(float)
    if name == "few draws":
        return normal(size=(2, 5, 10))
    if name == "odd draws":
        return normal(size=(2, 7, 10))
    raise ValueError(name)


def _arviz(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = xr.Dataset({"x": (("chain", "draw", "entry"), draws)})
    return az.rhat(data)["x"].to_numpy(), az.ess(data, method="bulk")["x"].to_numpy()


@pytest.mark.parametrize(
    "case",
    [
        "independent",
        "autocorrelated",
        "antithetic",
        "disagreeing chains",
        "random walk",
        "ties",
        "few draws",
        "odd draws",
    ],
)
def test_rhat_and_bulk_ess_equal_arviz(case):
    draws = _chains(case)
    expected_rhat, expected_ess = _arviz(draws)
    rhat, ess = rhat_and_ess(np.moveaxis(draws, -1, 0))
    np.testing.assert_allclose(rhat, expected_rhat, rtol=1e-10)
    np.testing.assert_allclose(ess, expected_ess, rtol=1e-8)


def test_disagreeing_chains_are_flagged():
    rhat, _ = rhat_and_ess(np.moveaxis(_chains("disagreeing chains"), -1, 0))
    assert np.all(rhat > 1.1)


def test_nan_constant_and_single_chain_follow_arviz():
    draws = RNG.normal(size=(2, 100, 3))
    draws[0, 5, 0] = np.nan
    draws[:, :, 1] = 4.0
    rhat, ess = rhat_and_ess(np.moveaxis(draws, -1, 0))
    assert np.isnan(rhat[0]) and np.isnan(ess[0])
    assert np.isnan(rhat[1]) and ess[1] == 200  # a constant: every draw counts
    one_chain = RNG.normal(size=(1, 400, 2))
    rhat, ess = rhat_and_ess(np.moveaxis(one_chain, -1, 0))
    expected_rhat, expected_ess = _arviz(one_chain)
    assert np.all(np.isnan(rhat)) and np.all(np.isnan(expected_rhat))
    np.testing.assert_allclose(ess, expected_ess, rtol=1e-8)


def test_datasets_keep_names_and_dims():
    data = xr.Dataset(
        {
            "scale": (("chain", "draw"), RNG.normal(size=(2, 300))),
            "beta": (("chain", "draw", "group", "covariate"), RNG.normal(size=(2, 300, 4, 2))),
        },
        coords={"group": list("abcd"), "covariate": ["x", "y"]},
    )
    rhat, ess = rhat_and_ess_of(data)
    expected_rhat, expected_ess = az.rhat(data), az.ess(data, method="bulk")
    for name in data.data_vars:
        assert rhat[name].dims == expected_rhat[name].dims
        xr.testing.assert_allclose(rhat[name], expected_rhat[name], rtol=1e-10)
        xr.testing.assert_allclose(ess[name], expected_ess[name], rtol=1e-8)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(1, 40)),
        elements=st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]),
    )
)
def test_average_ranks_equal_scipy(values):
    np.testing.assert_array_equal(
        _average_ranks(values), rankdata(values, method="average", axis=-1)
    )
