"""The vectorized tail ESS against ArviZ's, and its missing-value handling."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import xarray as xr
from test_convergence import _chains

from hierps.mcmc.convergence import tail_ess

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
