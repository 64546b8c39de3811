"""Rank-normalized R-hat, bulk ESS and tail ESS for many parameters at once.

The same statistics as ArviZ's ``rhat(method="rank")``, ``ess(method="bulk")`` and
``ess(method="tail")`` (Vehtari
et al. 2021, "Rank-normalization, folding, and localization: an improved R-hat"), computed
for every entry of an array in one vectorized pass. ArviZ evaluates them entry by entry in
Python, a few milliseconds each: hundreds of group-level parameters took seconds after
every fit, longer than sampling them. The tests check agreement with ArviZ to 1e-8.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.fft import next_fast_len
from scipy.special import ndtri

__all__ = ["rhat_and_ess", "rhat_and_ess_of", "tail_ess"]

_MIN_DRAWS = 4


def rhat_and_ess(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalized split R-hat and bulk ESS of every entry, sharing their ranks.

    R-hat is the larger of the bulk R-hat (of the normal scores of the ranks over all split
    chains) and the tail R-hat (the same for the draws folded about their median). The bulk
    ESS is the ESS of those normal scores.

    Parameters
    ----------
    draws
        ``(..., chain, draw)``.

    Returns
    -------
    rhat, ess : numpy.ndarray
        ``(...)`` each. NaN for entries with a NaN draw or with fewer than 4 draws; R-hat is
        also NaN with a single chain.
    """
    draws = np.asarray(draws, dtype=float)
    if draws.shape[-1] < _MIN_DRAWS:
        empty = np.full(draws.shape[:-2], np.nan)
        return empty, empty.copy()
    split = _split_chains(draws)
    bulk = _z_scale(split)
    missing = _has_nan(draws)
    ess = np.where(missing, np.nan, _ess(bulk))
    if draws.shape[-2] < 2:
        return np.full(draws.shape[:-2], np.nan), ess
    return np.where(missing, np.nan, np.maximum(_rhat(bulk), _tail_rhat(split))), ess


def rhat_and_ess_of(samples: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """Rank-normalized R-hat and bulk ESS of every variable of a (chain, draw, …) Dataset.

    The same Datasets as ``arviz.rhat(samples)`` and ``arviz.ess(samples, method="bulk")``.
    """
    rhat, ess = {}, {}
    for name, array in samples.data_vars.items():
        rhat[name], ess[name] = xr.apply_ufunc(
            rhat_and_ess,
            array,
            input_core_dims=[["chain", "draw"]],
            output_core_dims=[[], []],
        )
    return xr.Dataset(rhat), xr.Dataset(ess)


def tail_ess(draws: np.ndarray, prob: float = 0.11) -> np.ndarray:
    """Tail ESS of every entry: the smaller ESS of the indicators of the ``prob`` and
    ``1 − prob`` quantiles (ArviZ's ``ess(method="tail")``, whose default ``prob`` follows its
    ``stats.ci_prob`` of 0.89: quantiles 0.11 and 0.89). ``draws`` is ``(..., chain, draw)``;
    the result is ``(...)``, NaN for entries with a NaN draw or with fewer than 4 draws.
    """
    draws = np.asarray(draws, dtype=float)
    if draws.shape[-1] < _MIN_DRAWS:
        return np.full(draws.shape[:-2], np.nan)
    flat = draws.reshape(*draws.shape[:-2], -1)
    missing = _has_nan(draws)
    smallest = np.full(draws.shape[:-2], np.inf)
    for level in (prob, 1.0 - prob):
        with np.errstate(invalid="ignore"):
            quantile = np.quantile(np.where(missing[..., None], 0.0, flat), level, axis=-1)
        below = (draws <= quantile[..., None, None]).astype(float)
        smallest = np.minimum(smallest, _ess(_split_chains(below)))
    return np.where(missing, np.nan, smallest)


def _tail_rhat(split: np.ndarray) -> np.ndarray:
    """R-hat of the folded draws ``|θ − median θ|``: differences in the chains' spread."""
    median = np.median(split.reshape(*split.shape[:-2], -1), axis=-1)[..., None, None]
    return _rhat(_z_scale(np.abs(split - median)))


def _has_nan(draws: np.ndarray) -> np.ndarray:
    return np.isnan(draws).any(axis=(-2, -1))


def _split_chains(draws: np.ndarray) -> np.ndarray:
    """Each chain's first and last halves as separate chains (the middle draw of an odd
    count is left out)."""
    half = draws.shape[-1] // 2
    return np.concatenate([draws[..., :half], draws[..., -half:]], axis=-2)


def _z_scale(draws: np.ndarray) -> np.ndarray:
    """Normal scores of the ranks over all chains and draws jointly (Blom's offset 3/8)."""
    flat = draws.reshape(*draws.shape[:-2], -1)
    size = flat.shape[-1]
    return ndtri((_average_ranks(flat) - 0.375) / (size + 0.25)).reshape(draws.shape)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1 along the last axis, ties given their mean rank.

    ``scipy.stats.rankdata(values, method="average", axis=-1)``, from one unstable argsort:
    three times faster on many rows.
    """
    order = np.argsort(values, axis=-1)
    ordered = np.take_along_axis(values, order, axis=-1)
    size = values.shape[-1]
    position = np.arange(size)
    starts = np.ones(values.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(values.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    last = np.minimum.accumulate(np.where(ends, position, size)[..., ::-1], axis=-1)[..., ::-1]
    ranks = np.empty(values.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def _rhat(draws: np.ndarray) -> np.ndarray:
    """Classic R-hat from between- and within-chain variances, per entry."""
    n_draws = draws.shape[-1]
    between = n_draws * np.var(draws.mean(axis=-1), axis=-1, ddof=1)
    within = np.var(draws, axis=-1, ddof=1).mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((between / within + n_draws - 1) / n_draws)


def _ess(draws: np.ndarray) -> np.ndarray:
    """ESS from the autocorrelations, truncated by Geyer's initial monotone sequence."""
    n_chains, n_draws = draws.shape[-2:]
    total = n_chains * n_draws
    centred = draws - draws.mean(axis=-1, keepdims=True)
    length = next_fast_len(2 * n_draws)
    spectrum = np.fft.rfft(centred, n=length, axis=-1)
    autocovariance = np.fft.irfft(spectrum * np.conjugate(spectrum), n=length, axis=-1)
    autocovariance = autocovariance[..., :n_draws] / n_draws
    mean_variance = autocovariance[..., 0].mean(axis=-1) * n_draws / (n_draws - 1.0)
    variance_plus = mean_variance * (n_draws - 1.0) / n_draws
    if n_chains > 1:
        variance_plus = variance_plus + np.var(draws.mean(axis=-1), axis=-1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (
            1.0
            - (mean_variance[..., None] - autocovariance.mean(axis=-2)) / (variance_plus[..., None])
        )
    rho[..., 0] = 1.0

    # Pairs Γ_k = ρ_2k + ρ_2k+1. Geyer's initial positive sequence keeps pairs while they
    # are positive: it computes pair k (k ≥ 1) while pair k − 1 is positive and k < last.
    last = (n_draws - 2 + 1) // 2  # pairs 1 … last − 1 can be computed (2k − 1 < n − 3)
    n_pairs = max(last, 1)
    pairs = rho[..., : 2 * n_pairs : 2] + rho[..., 1 : 2 * n_pairs : 2]
    even = rho[..., : 2 * n_pairs : 2]
    stops = pairs[..., 1:] <= 0.0
    # k_last: the last pair computed, the first non-positive one or the last allowed.
    if stops.shape[-1]:
        first_stop = np.where(stops.any(axis=-1), stops.argmax(axis=-1) + 1, n_pairs - 1)
    else:  # too few draws for any pair after the first
        first_stop = np.zeros(stops.shape[:-1], dtype=int)
    k_last = np.where(pairs[..., 0] > 0.0, first_stop, 0)
    # Pairs before k_last enter through their running minimum (the monotone sequence).
    monotone = np.minimum.accumulate(pairs, axis=-1)
    kept = np.arange(n_pairs) < k_last[..., None]
    pair_sum = np.where(kept, monotone, 0.0).sum(axis=-1)
    last_pair = np.take_along_axis(pairs, k_last[..., None], axis=-1)[..., 0]
    last_even = np.take_along_axis(even, k_last[..., None], axis=-1)[..., 0]
    # The even autocorrelation of the last pair counts when the pair was kept (≥ 0), or
    # when it is positive; at k_last = 0 it is ρ_0 = 1.
    tail = np.where((last_pair >= 0.0) | (last_even > 0.0), last_even, 0.0)
    tail = np.where(k_last == 0, 1.0, tail)
    tau = -1.0 + 2.0 * pair_sum + tail
    tau = np.maximum(tau, 1.0 / np.log10(total))
    ess = total / tau
    constant = np.ptp(draws.reshape(*draws.shape[:-2], -1), axis=-1) < np.finfo(float).resolution
    ess = np.where(constant, float(total), ess)
    return np.where(np.isnan(rho).any(axis=-1) & ~constant, np.nan, ess)
