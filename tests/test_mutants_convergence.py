"""The vectorized R-hat, bulk and tail ESS against ArviZ on short and odd chains, and their
handling of missing draws, constants and shapes."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest
import xarray as xr
from test_convergence import _chains

from hierps.mcmc.convergence import rhat_and_ess, tail_ess

CASES = ["independent", "autocorrelated", "antithetic", "disagreeing chains", "random walk",
         "ties", "odd draws"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_tail_ess_equals_arviz(case):
    draws = _chains(case)
    data = xr.Dataset({"x": (("chain", "draw", "entry"), draws)})
    expected = az.ess(data, method="tail")["x"].to_numpy()
    np.testing.assert_allclose(tail_ess(np.moveaxis(draws, -1, 0)), expected, rtol=1e-8)


def test_tail_ess_at_other_quantiles_equals_arviz():
    draws = _chains("autocorrelated")
    data = xr.Dataset({"x": (("chain", "draw", "entry"), draws)})
    expected = az.ess(data, method="tail", prob=(0.25, 0.75))["x"].to_numpy()
    np.testing.assert_allclose(tail_ess(np.moveaxis(draws, -1, 0), prob=0.25), expected, 1e-8)


def test_tail_ess_of_missing_draws_and_short_chains_is_nan():
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(3, 2, 50))
    draws[1, 0, 7] = np.nan
    ess = tail_ess(draws)
    assert ess.shape == (3,)
    assert np.isnan(ess[1]) and np.isfinite(ess[[0, 2]]).all()
    short = tail_ess(rng.normal(size=(4, 2, 3)))
    assert short.shape == (4,) and np.isnan(short).all()
    assert np.isfinite(tail_ess(rng.normal(size=(4, 2, 4)))).all()


def _arviz_both(draws):
    """ArviZ's R-hat and bulk ESS of (chain, draw, entry) draws."""
    data = xr.Dataset({"x": (("chain", "draw", "entry"), draws)})
    return az.rhat(data)["x"].to_numpy(), az.ess(data, method="bulk")["x"].to_numpy()


@pytest.mark.parametrize("n_draws", [4, 5, 6, 9, 14, 15, 22, 29, 40])
def test_short_and_strongly_autocorrelated_chains_equal_arviz(n_draws):
    # Short chains of every kind: independent, AR(1) with ρ = 0.9 and −0.7, random walks.
    rng = np.random.default_rng(n_draws)
    noise = rng.normal(size=(3, n_draws, 40))
    draws = noise.copy()
    for kind, rho in enumerate([0.0, 0.9, -0.7]):
        entries = slice(10 * kind, 10 * kind + 10)
        for t in range(1, n_draws):
            draws[:, t, entries] = rho * draws[:, t - 1, entries] + noise[:, t, entries]
    draws[:, :, 30:] = np.cumsum(noise[:, :, 30:], axis=1)
    expected_rhat, expected_ess = _arviz_both(draws)
    # Entries in two leading dims (4, 10): the result keeps them.
    stacked = np.moveaxis(draws, -1, 0).reshape(4, 10, 3, n_draws)
    rhat, ess = rhat_and_ess(stacked)
    assert rhat.shape == ess.shape == (4, 10)
    np.testing.assert_allclose(rhat.ravel(), expected_rhat, rtol=1e-10)
    np.testing.assert_allclose(ess.ravel(), expected_ess, rtol=1e-8)
    data = xr.Dataset({"x": (("chain", "draw", "entry"), draws)})
    expected_tail = az.ess(data, method="tail")["x"].to_numpy()
    np.testing.assert_allclose(tail_ess(stacked).ravel(), expected_tail, rtol=1e-8)


def test_too_few_draws_or_one_chain_keep_the_entry_shape():
    rng = np.random.default_rng(5)
    rhat, ess = rhat_and_ess(rng.normal(size=(4, 3, 2, 3)))
    assert rhat.shape == ess.shape == (4, 3)
    assert np.isnan(rhat).all() and np.isnan(ess).all()
    one_chain = rng.normal(size=(4, 3, 1, 50))
    rhat, ess = rhat_and_ess(one_chain)
    assert rhat.shape == ess.shape == (4, 3)
    assert np.isnan(rhat).all() and np.isfinite(ess).all()


def test_a_missing_draw_leaves_the_other_entries_alone():
    rng = np.random.default_rng(6)
    draws = rng.normal(size=(2, 60, 4))
    draws[1, 3, 0] = np.nan
    expected_rhat, expected_ess = _arviz_both(draws[:, :, 1:])
    rhat, ess = rhat_and_ess(np.moveaxis(draws, -1, 0))
    assert np.isnan(rhat[0]) and np.isnan(ess[0])
    np.testing.assert_allclose(rhat[1:], expected_rhat, rtol=1e-10)
    np.testing.assert_allclose(ess[1:], expected_ess, rtol=1e-8)


def test_constant_draws_raise_no_floating_point_warnings():
    draws = np.full((3, 2, 40), 2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rhat, ess = rhat_and_ess(draws)
        tail = tail_ess(draws)
    assert np.isnan(rhat).all()
    np.testing.assert_array_equal(ess, 80.0)
    assert tail.shape == (3,)
