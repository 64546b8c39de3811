"""The checks an applied Bayesian runs on the propensity posterior, as ArviZ groups and a table.

- ``log_likelihood``: the Bernoulli log-likelihood of every (group, covariate pattern) cell
  per draw, so that ``az.loo`` and ``az.compare`` run. A cell holds the units of one group
  with one covariate row; its log-likelihood is the sum of theirs, so PSIS-LOO leaves out a
  cell at a time (with continuous covariates every unit is its own cell). Models compared
  with ``az.compare`` must share the cells (the same covariates, hence the same patterns);
  see ``docs/posterior.md``.
- ``prior`` and ``prior_predictive``: draws of the prior and of the treated counts it implies
  (:func:`sample_prior_predictive`).
- ``posterior_predictive``: treated counts per group drawn from each posterior draw
  (``group_treated``; the observed counts sit in ``observed_data`` under the same name).
- :func:`calibration`: observed against predicted treated share per group, with posterior
  predictive intervals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit, log_expit

from hierps.design.build import Design
from hierps.mcmc.conventions import CI_PROB
from hierps.pymc_model import Patterns, compress

if TYPE_CHECKING:
    from hierps.posterior.result import PosteriorResult

__all__ = [
    "add_log_likelihood",
    "add_posterior_predictive",
    "calibration",
    "sample_prior_predictive",
]

# Draws are processed in chunks of about this many (draw × pattern × covariate) numbers.
_CHUNK_ELEMENTS = 1 << 22


def _pattern_eta(design: Design, posterior: xr.Dataset, patterns: Patterns):
    """Yield ``(slice of flattened draws, η (draws, patterns))`` chunk by chunk."""
    alpha = posterior["alpha"].transpose("chain", "draw", "group").to_numpy()
    n_draws = alpha.shape[0] * alpha.shape[1]
    alpha = alpha.reshape(n_draws, -1)
    beta = None
    if design.unit_names:
        beta = posterior["beta"].transpose("chain", "draw", "group", "unit_covariate").to_numpy()
        beta = beta.reshape(n_draws, *beta.shape[2:])
    size = max(1, _CHUNK_ELEMENTS // (len(patterns) * max(1, len(design.unit_names))))
    for start in range(0, n_draws, size):
        draws = slice(start, min(start + size, n_draws))
        eta = alpha[draws][:, patterns.group]
        if beta is not None:
            eta = eta + np.einsum("spk,pk->sp", beta[draws][:, patterns.group], patterns.design)
        yield draws, eta


def _by_group(values: np.ndarray, patterns: Patterns, n_groups: int) -> np.ndarray:
    """Sum ``(draws, patterns)`` over each group's patterns: ``(draws, groups)``."""
    out = np.zeros((values.shape[0], n_groups), dtype=values.dtype)
    np.add.at(out.T, patterns.group, values.T)
    return out


def add_log_likelihood(design: Design, idata: xr.DataTree) -> xr.DataTree:
    """Add the ``log_likelihood`` group: ``treated`` (chain, draw, pattern).

    Each entry is ``k·η − m·log(1 + e^η)`` for the ``m`` units of a (group, covariate pattern)
    cell, ``k`` of them treated: the sum of their Bernoulli log-likelihoods, under the same
    name and dim as the observed counts in ``observed_data``.
    """
    posterior = idata["posterior"].to_dataset()
    patterns = compress(design)
    shape = (posterior.sizes["chain"], posterior.sizes["draw"])
    values = np.empty((shape[0] * shape[1], len(patterns)))
    for draws, eta in _pattern_eta(design, posterior, patterns):
        values[draws] = patterns.treated * log_expit(eta) + patterns.controls * log_expit(-eta)
    idata["log_likelihood"] = xr.Dataset(
        {"treated": (("chain", "draw", "pattern"), values.reshape(*shape, -1))},
        coords={
            "chain": posterior["chain"].values,
            "draw": posterior["draw"].values,
            "pattern": np.arange(len(patterns)),
        },
        attrs={
            "description": (
                "Bernoulli log-likelihood summed over the units of each (group, covariate "
                "pattern) cell; LOO leaves out one cell at a time"
            )
        },
    )
    return idata


def add_posterior_predictive(
    design: Design, idata: xr.DataTree, rng: np.random.Generator
) -> xr.DataTree:
    """Add ``posterior_predictive/group_treated`` (chain, draw, group): treated counts per group
    drawn from each posterior draw, and the observed counts as ``observed_data/group_treated``."""
    posterior = idata["posterior"].to_dataset()
    patterns = compress(design)
    shape = (posterior.sizes["chain"], posterior.sizes["draw"])
    counts = np.empty((shape[0] * shape[1], design.n_groups), dtype="int64")
    for draws, eta in _pattern_eta(design, posterior, patterns):
        drawn = rng.binomial(patterns.units, expit(eta))
        counts[draws] = _by_group(drawn, patterns, design.n_groups)
    groups = list(design.groups)
    idata["posterior_predictive"] = xr.Dataset(
        {"group_treated": (("chain", "draw", "group"), counts.reshape(*shape, -1))},
        coords={
            "chain": posterior["chain"].values,
            "draw": posterior["draw"].values,
            "group": groups,
        },
    )
    _add_group_counts(design, idata)
    return idata


def sample_prior_predictive(
    design: Design,
    draws: int = 500,
    random_seed: int | np.random.Generator | None = None,
    loss: str = "bernoulli",
    coding: str = "identified",
    deviations: str = "normal",
    rank: int | None = None,
    **fixed: float,
) -> xr.DataTree:
    """Draw from the prior of the propensity model and the treated counts it implies.

    Parameters
    ----------
    design
        The validated design.
    draws
        Number of prior draws.
    random_seed
        Seed of the draws.
    loss
        Only ``"bernoulli"`` has a predictive distribution; the calibrated loss is not a
        likelihood of the treatment.
    coding, deviations, rank
        Parameterization of categorical covariates and the prior of the group slope
        deviations, as in :func:`hierps.pymc_model.build_pymc`.
    **fixed
        Hyperparameters fixed at a number, as in :func:`hierps.pymc_model.build_pymc`.

    Returns
    -------
    xarray.DataTree
        ``prior`` (every parameter, chain × draw with one chain), ``prior_predictive``
        (``treated`` per pattern and ``group_treated`` per group) and ``observed_data``.
    """
    import pymc as pm

    from hierps.pymc_model import build_pymc

    if loss != "bernoulli":
        raise ValueError(
            f"loss={loss!r} has no predictive distribution: prior predictive draws need the "
            f"Bernoulli likelihood (loss='bernoulli')"
        )
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise ValueError(f"draws must be a positive integer, not {draws!r}")
    pymc_model = build_pymc(
        design, loss="bernoulli", coding=coding, deviations=deviations, rank=rank, **fixed
    )
    with pymc_model:
        # The forward graph is small and runs once per draw: the Python linker compiles in a
        # fraction of the time of the C or numba ones and runs 500 draws in well under 1 s.
        prior = pm.sample_prior_predictive(
            draws=int(draws), random_seed=random_seed, compile_kwargs={"mode": "FAST_COMPILE"}
        )
    tree = prior if isinstance(prior, xr.DataTree) else xr.DataTree.from_dict(dict(prior.items()))
    patterns = compress(design)
    predictive = tree["prior_predictive"].to_dataset()
    treated = predictive["treated"].transpose("chain", "draw", "pattern").to_numpy()
    by_group = _by_group(treated.reshape(-1, treated.shape[-1]), patterns, design.n_groups)
    predictive["group_treated"] = xr.DataArray(
        by_group.reshape(*treated.shape[:2], -1),
        dims=("chain", "draw", "group"),
        coords={"group": list(design.groups)},
    )
    tree["prior_predictive"] = predictive
    _add_group_counts(design, tree)
    return tree


def _add_group_counts(design: Design, idata: xr.DataTree) -> None:
    """The observed treated count of each group (``observed_data/group_treated``) and its
    number of units (``constant_data/group_units``), next to what the sampler stored."""
    groups = list(design.groups)
    for name, values, node in (
        ("group_treated", design.treated_per_group, "observed_data"),
        ("group_units", design.units_per_group, "constant_data"),
    ):
        array = xr.DataArray(values.astype("int64"), dims="group", coords={"group": groups})
        if node in idata.children:
            idata[node] = idata[node].to_dataset().assign({name: array})
        else:
            idata[node] = xr.Dataset({name: array})


def calibration(result: PosteriorResult | xr.DataTree, prob: float = CI_PROB) -> pd.DataFrame:
    """Observed against predicted treated share of every group.

    Parameters
    ----------
    result
        A posterior result (or its ``DataTree``) with a ``posterior_predictive`` group.
    prob
        Probability of the equal-tailed posterior predictive interval.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``n_units``, ``observed`` (treated share), ``predicted`` (posterior
        predictive mean share), ``lower``, ``upper`` (interval of the predicted share),
        ``outside`` (the observed share lies outside the interval) and ``p_value`` (two-sided
        posterior predictive p-value of the observed count, mid-p for ties). With a
        calibrated model about ``1 − prob`` of the groups fall outside.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must lie strictly between 0 and 1, not {prob}")
    idata = getattr(result, "idata", result)
    if "posterior_predictive" not in idata.children or (
        "group_treated" not in idata["posterior_predictive"]
    ):
        raise ValueError(
            "result has no posterior_predictive/group_treated: sample with "
            "posterior_predictive=True (the default) or add it with add_posterior_predictive"
        )
    drawn = idata["posterior_predictive"]["group_treated"]
    observed = idata["observed_data"]["group_treated"]
    groups = drawn["group"].values
    sizes = idata["constant_data"]["group_units"].sel(group=groups).to_numpy().astype(float)
    counts = drawn.transpose("group", "chain", "draw").to_numpy().reshape(len(groups), -1)
    share = counts / sizes[:, None]
    lower, upper = np.quantile(share, [(1 - prob) / 2, (1 + prob) / 2], axis=1)
    observed_count = observed.sel(group=groups).to_numpy()
    observed_share = observed_count / sizes
    below = (counts < observed_count[:, None]).mean(axis=1)
    tied = (counts == observed_count[:, None]).mean(axis=1)
    mid = below + tied / 2
    table = pd.DataFrame(
        {
            "n_units": sizes.astype(int),
            "observed": observed_share,
            "predicted": share.mean(axis=1),
            "lower": lower,
            "upper": upper,
            "outside": (observed_share < lower) | (observed_share > upper),
            "p_value": np.minimum(1.0, 2 * np.minimum(mid, 1 - mid)),
        },
        index=pd.Index(groups, name="group"),
    )
    if hasattr(result, "design"):
        table.index = result.design.groups
    table.attrs["prob"] = prob
    return table
