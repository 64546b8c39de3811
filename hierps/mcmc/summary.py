"""The one draw summary every result table uses: mean, sd, interval, ESS and R-hat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from hierps.exceptions import ArgumentError
from hierps.mcmc.conventions import CI_PROB, SAMPLE_DIMS
from hierps.mcmc.convergence import rhat_and_ess, tail_ess

__all__ = ["SUMMARY_COLUMNS", "summarize_draws"]

#: The columns of :func:`summarize_draws`, in order.
SUMMARY_COLUMNS = ("mean", "sd", "lower", "upper", "ess_bulk", "ess_tail", "r_hat")


def summarize_draws(
    draws: xr.DataArray, ci_prob: float = CI_PROB, sample_dims: tuple[str, ...] = SAMPLE_DIMS
) -> pd.DataFrame:
    """Summarize every entry of a (chain, draw, …) array.

    Parameters
    ----------
    draws
        Draws with the dims ``sample_dims`` and any others; a missing ``chain`` dim counts as
        one chain.
    ci_prob
        Probability of the equal-tailed interval (``lower``, ``upper``).
    sample_dims
        The dims that index draws.

    Returns
    -------
    pandas.DataFrame
        One row per entry of the other dims (C order; one row for a scalar) with the columns
        ``mean``, ``sd`` (ddof 1), ``lower``, ``upper``, ``ess_bulk``, ``ess_tail`` and
        ``r_hat`` (rank-normalized split R-hat; bulk and tail ESS as in ArviZ). An entry with a
        NaN draw (a group without an estimable effect) is NaN in every column.
    """
    if not 0 < ci_prob < 1:
        raise ArgumentError(f"ci_prob must lie strictly between 0 and 1, not {ci_prob}")
    chain, draw = sample_dims
    if chain not in draws.dims:
        draws = draws.expand_dims(chain)
    other = [dim for dim in draws.dims if dim not in (chain, draw)]
    values = draws.transpose(*other, chain, draw).to_numpy().astype(float)
    values = values.reshape(-1, *values.shape[-2:])
    flat = values.reshape(values.shape[0], -1)
    missing = np.isnan(flat).any(axis=1)
    safe = np.where(missing[:, None], 0.0, flat)
    lower, upper = np.quantile(safe, [(1 - ci_prob) / 2, (1 + ci_prob) / 2], axis=1)
    sd = safe.std(axis=1, ddof=1) if flat.shape[1] > 1 else np.full(len(flat), np.nan)
    rhat, ess_bulk = rhat_and_ess(values)
    columns = {
        "mean": safe.mean(axis=1),
        "sd": sd,
        "lower": lower,
        "upper": upper,
        "ess_bulk": ess_bulk,
        "ess_tail": tail_ess(values),
        "r_hat": rhat,
    }
    return pd.DataFrame(
        {name: np.where(missing, np.nan, column) for name, column in columns.items()}
    )
