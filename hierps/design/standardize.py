"""Standardization of the design's columns: spreads per arm, then centre and scale.

The rules (math §2): centre at the treated mean and divide by the treated standard deviation
(``"treated"``, the default), by the pooled standard deviation of both arms (``"pooled"``), or
leave the columns as they are (``"none"``); columns without variation are dropped. Spreads
take frequency weights (base weights, or a group row standing for its units), and the same
rules serve in-memory and Dask designs, which compute the spreads in their own ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hierps.exceptions import warn

__all__ = ["Spread", "column_spread", "scaling_from_spread", "standardized"]


@dataclass(frozen=True)
class Spread:
    """Count, mean and standard deviation (ddof=1) of each column over a set of rows.

    ``sd`` is exactly 0 for a column with a single distinct value among two or more entries:
    summation error makes the standard deviation of a constant float column a few 1e-17
    rather than 0 (e.g. ``pd.Series([0.1] * 1000).std()``), and scaling by that would blow
    the column up to ~1e16. Columns with fewer than two values have a NaN ``sd``. Missing
    entries are skipped, as by pandas' ``mean`` and ``std``.
    """

    count: pd.Series
    mean: pd.Series
    sd: pd.Series


def column_spread(
    values: np.ndarray, names: Sequence[str], counts: np.ndarray | None = None
) -> Spread:
    """The :class:`Spread` of the columns of ``values`` (n, p), rows repeated ``counts`` times.

    One pass per column with NumPy reductions: pandas' ``nunique``, which the single-value
    rule needs, hashes every entry and costs several times ``std``; the minimum and the
    maximum decide it at a fraction of the cost. ``counts`` (frequency weights, for the
    group covariates: one row per group, repeated once per unit) defaults to one per row.
    """
    p = len(names)
    count, mean, sd = np.zeros(p), np.full(p, np.nan), np.full(p, np.nan)
    for k in range(p):
        column = values[:, k]
        present = ~np.isnan(column)
        if counts is not None:
            present &= counts > 0
        if not present.all():
            column = column[present]
        weights = None if counts is None else counts[present]
        n = float(len(column) if weights is None else weights.sum())
        count[k] = n
        if n == 0:
            continue
        mean[k] = np.average(column, weights=weights)
        if n < 2:
            continue
        if column.min() == column.max():
            sd[k] = 0.0
            continue
        deviation = (column - mean[k]) ** 2
        total = deviation.sum() if weights is None else deviation @ weights
        sd[k] = np.sqrt(total / (n - 1))
    index = pd.Index(list(names))
    return Spread(
        pd.Series(count, index=index), pd.Series(mean, index=index), pd.Series(sd, index=index)
    )


def scaling(
    values: pd.DataFrame,
    treated: np.ndarray,
    method: str,
    level: str,
    weights: np.ndarray | None = None,
    counts: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Centre and scale of each column; columns without variation are listed to be dropped.

    With base ``weights`` the means and standard deviations are weighted ones (frequency
    weights). ``counts`` gives, instead of ``treated``, the treated and control units (or
    their base-weight totals) each row stands for (group covariates: one row per group).
    """
    matrix = values.to_numpy(dtype=float)
    names = list(values.columns)
    if counts is None:
        treated_mask = treated.astype(bool)

        def rows(mask: np.ndarray) -> np.ndarray | None:
            return None if weights is None else weights[mask]

        spreads = (
            column_spread(matrix, names, weights),
            column_spread(matrix[treated_mask], names, rows(treated_mask)),
            column_spread(matrix[~treated_mask], names, rows(~treated_mask)),
        )
    else:
        n_treated, n_control = counts
        spreads = (
            column_spread(matrix, names, n_treated + n_control),
            column_spread(matrix, names, n_treated),
            column_spread(matrix, names, n_control),
        )
    return scaling_from_spread(*spreads, method=method, level=level)


def scaling_from_spread(
    overall: Spread, treated: Spread, control: Spread, method: str, level: str
) -> tuple[pd.DataFrame, list[str]]:
    """The standardization rules (math §2) on the spreads of all units and of each arm.

    Shared by in-memory and Dask designs, which compute the spreads in their own ways.
    """
    columns = overall.count.index
    overall_sd = overall.sd
    constant = [name for name in columns if not overall_sd[name] > 0]
    if method == "none":
        center = pd.Series(0.0, index=columns)
        scale = pd.Series(1.0, index=columns)
    else:
        pooled_sd = np.sqrt((treated.sd**2 + control.sd**2) / 2)
        if method == "treated":
            center = treated.mean.copy()
            scale = treated.sd.copy()
            fallback = [name for name in columns if name not in constant and not scale[name] > 0]
            if fallback:
                warn(
                    f"{level} covariates {_short_list(fallback)} have no variation among the "
                    f"treated; they are scaled by the pooled standard deviation instead"
                )
                scale[fallback] = pooled_sd[fallback]
                center[fallback] = center[fallback].fillna(overall.mean[fallback])
        else:
            center = overall.mean.copy()
            scale = pooled_sd
        # A column that varies only across arms can still have zero pooled spread.
        scale = scale.where(scale > 0, overall_sd)
    if constant:
        warn(f"{level} covariates {_short_list(constant)} are constant in the data and are dropped")
    table = pd.DataFrame({"center": center, "scale": scale}).drop(index=constant)
    table.index.name = "covariate"
    return table, constant


def standardized(encoded: pd.DataFrame, scaling: pd.DataFrame) -> np.ndarray:
    center = scaling["center"].to_numpy()
    scale = scaling["scale"].to_numpy()
    values = (encoded.to_numpy(dtype=float) - center) / scale
    # Missing entries sit at the centre; their missingness indicator carries the information.
    return np.ascontiguousarray(np.nan_to_num(values, nan=0.0))


def _short_list(names: Sequence[str], limit: int = 12) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
