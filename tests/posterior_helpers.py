"""Small posterior results without sampling: a hand-built DataTree passed to ``from_idata``.

The draws scatter around a MAP fit's coefficients, so that the result has the shape and the
derived groups of a real :class:`hierps.posterior.result.PosteriorResult` in milliseconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from hierps.exceptions import HierpsWarning


def hand_built_tree(
    fit,
    chains: int = 2,
    draws: int = 60,
    spread: float = 0.1,
    seed: int = 0,
    divergences: int = 0,
) -> xr.DataTree:
    """Posterior draws of the propensity model around ``fit.coefficients``, with sample stats.

    ``alpha`` (chain, draw, group), ``beta`` (chain, draw, group, unit_covariate) and
    hyperparameters ``intercept``, ``sigma_alpha``, ``sigma_beta`` (varying_covariate);
    ``sample_stats`` with ``diverging`` (the first ``divergences`` draws of chain 0) and iid
    ``energy`` (E-BFMI ≈ 2).
    """
    rng = np.random.default_rng(seed)
    coefficients = fit.coefficients
    design = fit.design
    shape = (chains, draws)
    alpha = coefficients["alpha"].to_numpy() + spread * rng.normal(size=(*shape, design.n_groups))
    variables = {
        "alpha": (("chain", "draw", "group"), alpha),
        "intercept": (("chain", "draw"), rng.normal(size=shape)),
        "sigma_alpha": (("chain", "draw"), np.abs(rng.normal(size=shape))),
    }
    coords = {
        "chain": np.arange(chains),
        "draw": np.arange(draws),
        "group": list(design.groups),
    }
    if design.unit_names:
        beta = coefficients["beta"].to_numpy()
        variables["beta"] = (
            ("chain", "draw", "group", "unit_covariate"),
            beta + spread * rng.normal(size=(*shape, *beta.shape)),
        )
        varying = list(design.varying_names)
        variables["sigma_beta"] = (
            ("chain", "draw", "varying_covariate"),
            np.abs(rng.normal(size=(*shape, len(varying)))),
        )
        coords["unit_covariate"] = list(design.unit_names)
        coords["varying_covariate"] = varying
    diverging = np.zeros(shape, dtype=bool)
    diverging[0, :divergences] = True
    stats = xr.Dataset(
        {
            "diverging": (("chain", "draw"), diverging),
            "energy": (("chain", "draw"), rng.normal(size=shape)),
        },
        coords={"chain": coords["chain"], "draw": coords["draw"]},
    )
    return xr.DataTree.from_dict(
        {"posterior": xr.Dataset(variables, coords=coords), "sample_stats": stats}
    )


def hand_built_posterior(fit, store_weights: bool = False, estimand: str = "att", **kwargs):
    """A :class:`hierps.posterior.result.PosteriorResult` from :func:`hand_built_tree`."""
    from hierps.posterior.draws import from_idata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        return from_idata(
            fit.design,
            hand_built_tree(fit, **kwargs),
            uncertainty="propensity",
            estimand=estimand,
            random_seed=1,
            store_weights=store_weights,
        )
