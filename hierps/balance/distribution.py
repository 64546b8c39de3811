"""Balance of whole covariate distributions: weighted Kolmogorov–Smirnov and eCDF statistics.

Mean differences can balance while the distributions differ (in spread, in tails). For every
covariate, globally and within each group, this module compares the treated eCDF with the
control eCDF before weighting and after (the controls weighted by the result's weights):
the Kolmogorov–Smirnov statistic ``max |F_T − F_C|`` (the eCDF maximum, as cobalt's
``ks.max``/``ecdf.max``) and the mean of ``|F_T − F_C|`` over the distinct values of the
covariate in that scope (cobalt's ``ecdf.mean``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hierps.balance.statistics import att_result_design, binary_covariates, covariate_values

__all__ = ["distribution_balance", "ecdf_differences"]


def ecdf_differences(
    values: np.ndarray,
    treated: np.ndarray,
    control_weights: np.ndarray,
    codes: np.ndarray | None = None,
    n_groups: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """KS statistic and mean eCDF difference of treated against weighted controls, per group.

    Parameters
    ----------
    values
        ``(n,)`` one covariate.
    treated
        ``(n,)`` boolean: the treated units (each weighs 1).
    control_weights
        ``(n,)`` the weight of every control (entries of treated units are ignored).
    codes, n_groups
        Group of every unit (default one group).

    Returns
    -------
    tuple of numpy.ndarray
        ``(ks, ecdf_mean)``, each ``(n_groups,)``; NaN for a group without treated units or
        without control weight.
    """
    values = np.asarray(values, dtype=float)
    treated = np.asarray(treated, dtype=bool)
    codes = np.zeros(len(values), dtype=int) if codes is None else np.asarray(codes)
    a = treated.astype(float)
    c = np.where(treated, 0.0, np.asarray(control_weights, dtype=float))
    order = np.lexsort((values, codes))
    v, g, a, c = values[order], codes[order], a[order], c[order]
    # Each group's masses as shares of the group's total, so that every eCDF ends at 1.
    a_total = np.bincount(g, weights=a, minlength=n_groups)
    c_total = np.bincount(g, weights=c, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_share, c_share = a / a_total[g], c / c_total[g]
    ks = np.full(n_groups, np.nan)
    mean = np.full(n_groups, np.nan)
    usable = (a_total > 0) & (c_total > 0)
    if not usable.any():
        return ks, mean
    keep = usable[g]
    v, g, a_share, c_share = v[keep], g[keep], a_share[keep], c_share[keep]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    difference = _within_cumsum(a_share, starts) - _within_cumsum(c_share, starts)
    # The eCDFs are evaluated at the last unit of every run of equal values (ties step once).
    last = np.r_[(g[1:] != g[:-1]) | (v[1:] != v[:-1]), True]
    gaps, groups = np.abs(difference[last]), g[last]
    ks[usable] = np.maximum.reduceat(gaps, np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]))
    counts = np.bincount(groups, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean[usable] = (np.bincount(groups, weights=gaps, minlength=n_groups) / counts)[usable]
    return ks, mean


def _within_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarted at every start (each run's shares add to at most 1)."""
    total = np.cumsum(values)
    before = np.r_[0.0, total[starts[1:] - 1]]
    return total - np.repeat(before, np.diff(np.r_[starts, len(values)]))


def distribution_balance(result: Any) -> pd.DataFrame:
    """Weighted KS and eCDF statistics of every covariate, globally and within each group.

    Parameters
    ----------
    result
        A :class:`~hierps.calibrated.fit.MapResult`, an ATT
        :class:`~hierps.posterior.result.PosteriorResult` (its posterior-mean weights, as the
        point tables of :func:`hierps.balance_table` use), or any object with ``design`` and
        ``weights`` (one per unit; treated 1).

    Returns
    -------
    pandas.DataFrame
        One row per (scope, group, covariate), ``scope`` ``"global"`` (``group`` missing) or
        ``"group"``, with ``kind`` (binary or continuous), ``n_treated``, ``n_control``,
        ``ks_before``, ``ks_after`` (the maximum eCDF difference), ``ecdf_mean_before``,
        ``ecdf_mean_after`` (its mean over the distinct values). Covariates are the model's
        encoded columns on the original scale (unit covariates, then group covariates, whose
        within-group distributions are a single value and so appear in global rows only).
        NaN where a group lacks an arm.
    """
    design = att_result_design(result, "distribution_balance")
    weights = np.asarray(getattr(result, "weights", None), dtype=float).reshape(-1)
    if weights.shape != (design.n_units,):
        raise ValueError(f"expected one weight per unit ({design.n_units}), got {weights.shape}")
    # Within a group only weight ratios matter; a MAP fit's relative weights keep them exact
    # where exp(eta) underflows for a whole group.
    relative = getattr(result, "relative_weights", None)
    group_weights = weights if relative is None else np.asarray(relative, dtype=float)
    names, values, n_unit = covariate_values(design)
    kinds = np.where(binary_covariates(values), "binary", "continuous")
    treated = design.treatment == 1
    ones = np.ones(design.n_units)
    n_treated = design.treated_per_group.astype(int)
    n_control = design.units_per_group.astype(int) - n_treated
    frames: dict[str, list[pd.DataFrame]] = {"global": [], "group": []}
    for k, name in enumerate(names):
        x = values[:, k]
        scopes = [("global", None, 1, weights)]
        if k < n_unit:
            scopes.append(("group", design.group_codes, design.n_groups, group_weights))
        for scope, codes, n_groups, w in scopes:
            ks_before, mean_before = ecdf_differences(x, treated, ones, codes, n_groups)
            ks_after, mean_after = ecdf_differences(x, treated, w, codes, n_groups)
            is_global = codes is None
            frames[scope].append(
                pd.DataFrame(
                    {
                        "scope": scope,
                        "group": [None] if is_global else design.groups.tolist(),
                        "covariate": name,
                        "kind": kinds[k],
                        "n_treated": [int(treated.sum())] if is_global else n_treated,
                        "n_control": [int((~treated).sum())] if is_global else n_control,
                        "ks_before": ks_before,
                        "ks_after": ks_after,
                        "ecdf_mean_before": mean_before,
                        "ecdf_mean_after": mean_after,
                    }
                )
            )
    # Global rows first, then group by group with the covariates in the model's order.
    by_group = pd.concat(frames["group"], ignore_index=True) if frames["group"] else None
    if by_group is not None:
        position = {label: j for j, label in enumerate(design.groups)}
        by_group = by_group.sort_values(
            "group", key=lambda column: column.map(position), kind="stable"
        )
    table = pd.concat([*frames["global"], by_group], ignore_index=True)
    table.index.name = "row"
    table.attrs["weights"] = (
        "posterior-mean weights" if getattr(result, "idata", None) is not None else "weights"
    )
    table.attrs["ecdf_mean"] = "mean of |F_T - F_C| over the distinct values in the scope"
    return table
