"""Standardized differences before and after control selection (natstrat's ``check_balance``).

For one pair of treatment groups (``treated`` and ``control``), each covariate's difference in
means is divided by the treated group's standard deviation over all units (the square root of
the mean of all groups' variances when that is zero, or with ``denom_variance="pooled"``), as
natstrat's ``get_stand_diffs`` does. Factor and character covariates become one indicator per
level (``race.Mexican American`` for factors, ``colorRed`` for character columns), booleans
become 0/1. Differences are reported across strata, within each stratum, and as the average
of the within-stratum differences weighted by each stratum's number of (selected) controls
with an observed value.

Departure from natstrat: the weights of the within-stratum average count the units of
``control`` (natstrat counts ``z == 0`` whatever ``control`` is).

Relation to :func:`hierps.balance_table` of the selection's 0/1 weights
(``balance_table({"selection": (model, result)})``, the model's treatment being ``treated``
against ``control`` and its group the strata): with two groups, every treated unit selected and
no missing values, ``|smd_before|`` and ``|smd_after|`` of its global table are ``sd_across``
and those of its per-group table are ``sd_strata`` (same denominator: the treated SD over all
units, ``ddof = 1``, the pooled SD where that is 0). They differ in three ways. Signs: the
balance table's SMD is signed (treated − control). Names: a factor level is ``race[White]``
there, ``race.White`` here. Missing values: here a missing value is left out of its means,
there it sits at the design's centre (the observed treated mean by default) and a missingness
indicator ``x_missing`` gets its own row; so the balance table's rows equal this function's
on the covariates with missing values set to that centre, plus the indicators as 0/1 columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierps.exceptions import DataError, check_choice
from hierps.natstrat.constraints import _kind, _levels
from hierps.natstrat.sizes import _show, make_design

__all__ = ["BalanceCheck", "check_balance"]

_COLUMNS = ["abs_stand_diff_before", "abs_stand_diff_after"]


@dataclass(frozen=True)
class BalanceCheck:
    """Absolute standardized differences in means, before and after selection.

    Attributes
    ----------
    sd_across
        One row per covariate (index ``covariate``), columns ``abs_stand_diff_before`` and
        ``abs_stand_diff_after``, over all strata.
    sd_strata
        The same within each stratum (index ``stratum``, ``covariate``).
    sd_strata_avg
        Average of the within-stratum differences weighted by the stratum's number of controls
        (before) or selected controls (after) with an observed value of the covariate.
    """

    sd_across: pd.DataFrame
    sd_strata: pd.DataFrame
    sd_strata_avg: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Mean, median and maximum of the differences after selection, per table."""
        rows = {
            "across strata": self.sd_across["abs_stand_diff_after"],
            "within strata, weighted average": self.sd_strata_avg["abs_stand_diff_after"],
            "within strata": self.sd_strata["abs_stand_diff_after"],
        }
        frame = pd.DataFrame(
            {
                name: {"mean": s.mean(), "median": s.median(), "max": s.max()}
                for name, s in rows.items()
            }
        ).T
        frame.index.name = "table"
        return frame


def _expand(X: pd.DataFrame) -> pd.DataFrame:
    """Numeric covariates as they are, booleans as 0/1, one indicator per categorical level."""
    columns: dict[str, np.ndarray] = {}
    for column in X.columns:
        name = str(column)
        series = X[column]
        kind = _kind(series, name)
        if kind in ("numeric", "logical"):
            columns[name] = series.to_numpy(dtype=float, na_value=np.nan)
            continue
        labels, codes = _levels(series, kind)
        sep = "." if kind == "factor" else ""
        for k, label in enumerate(labels):
            columns[f"{name}{sep}{label}"] = np.where(codes < 0, np.nan, (codes == k).astype(float))
    return pd.DataFrame(columns, index=X.index)


def _means(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    block = values[mask]
    observed = ~np.isnan(block)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(observed, block, 0.0).sum(axis=0) / observed.sum(axis=0)


def _differences(
    values: np.ndarray, treated: np.ndarray, control: np.ndarray, denom: np.ndarray
) -> np.ndarray:
    t_mean, c_mean = _means(values, treated), _means(values, control)
    with np.errstate(invalid="ignore", divide="ignore"):
        difference = np.abs(t_mean - c_mean) / denom
    # Equal means are balanced even when the scale is 0 (natstrat sets them to 0).
    return np.where(t_mean == c_mean, 0.0, difference)


def check_balance(
    z: Any,
    X: pd.DataFrame,
    st: Any,
    selected: Any,
    treated: Any = 1,
    control: Any = None,
    denom_variance: str = "treated",
) -> BalanceCheck:
    """Standardized differences between two treatment groups before and after selection.

    Parameters
    ----------
    z
        Treatment group of each unit.
    X
        Covariates (one row per unit); numeric, boolean, categorical or string columns. Any
        covariates may be checked, balanced by the selection or not.
    st
        Stratum of each unit.
    selected
        Boolean, one entry per unit: the selection (e.g. ``optimize_controls(...).selected``).
    treated, control
        The two groups compared. ``control`` defaults to the other group when ``z`` has two.
    denom_variance
        ``"treated"`` or ``"pooled"``, as in :func:`hierps.generate_constraints`.

    Returns
    -------
    BalanceCheck
        ``sd_across``, ``sd_strata`` and ``sd_strata_avg`` (natstrat's names).

    Raises
    ------
    DataError
        If the inputs disagree in length, ``treated`` or ``control`` is not a group, or
        ``control`` is missing with more than two groups.
    """
    check_choice("denom_variance", denom_variance, ("treated", "pooled"))
    if not isinstance(X, pd.DataFrame):
        raise DataError(f"X must be a pandas DataFrame, got {type(X).__name__}")
    design = make_design(z, st, len(X))
    chosen = np.asarray(selected)
    if chosen.shape != (len(X),):
        raise DataError(f"selected has {chosen.size} entries but X has {len(X)} rows")
    if chosen.dtype != bool:
        raise DataError("selected must be boolean")
    t = design.group_index(treated, "treated")
    if control is None:
        if len(design.groups) != 2:
            raise DataError(
                f"control must be given when z has more than two groups: "
                f"{[_show(g) for g in design.groups]}"
            )
        c = 1 - t
    else:
        c = design.group_index(control, "control")
    if c == t:
        raise DataError("treated and control must be different groups")

    expanded = _expand(X)
    values = expanded.to_numpy()
    names = pd.Index(expanded.columns, name="covariate")
    codes = design.group_codes

    def variance(mask: np.ndarray) -> np.ndarray:
        block = values[mask]
        observed = ~np.isnan(block)
        count = observed.sum(axis=0)
        mean = _means(values, mask)
        squares = np.where(observed, (block - mean) ** 2, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            result = squares / (count - 1)
        return np.where(count > 1, result, 0.0)  # an undefined variance counts as 0

    variances = np.array([variance(codes == g) for g in range(len(design.groups))])
    pooled = np.sqrt(variances.mean(axis=0))
    denom = pooled
    if denom_variance == "treated":
        denom = np.sqrt(variances[t])
        denom = np.where(denom == 0, pooled, denom)

    is_t, is_c = codes == t, codes == c

    def table(inside: np.ndarray) -> pd.DataFrame:
        before = _differences(values, is_t & inside, is_c & inside, denom)
        after = _differences(values, is_t & inside & chosen, is_c & inside & chosen, denom)
        return pd.DataFrame(dict(zip(_COLUMNS, (before, after), strict=True)), index=names)

    sd_across = table(np.ones(len(X), dtype=bool))
    per_stratum = [table(design.stratum_codes == s) for s in range(len(design.strata))]
    sd_strata = pd.concat(per_stratum, keys=design.strata, names=["stratum", "covariate"])

    observed = ~np.isnan(values)
    averages = {}
    for column, units in zip(_COLUMNS, (is_c, is_c & chosen), strict=True):
        weights = np.array(
            [
                (observed & (units & (design.stratum_codes == s))[:, None]).sum(axis=0)
                for s in range(len(design.strata))
            ]
        ).astype(float)
        diffs = np.array([frame[column].to_numpy() for frame in per_stratum])
        # A stratum without such controls adds nothing (its difference is undefined).
        contributions = np.where(weights > 0, np.nan_to_num(diffs) * weights, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            averages[column] = contributions.sum(axis=0) / weights.sum(axis=0)
    sd_strata_avg = pd.DataFrame(averages, index=names)
    return BalanceCheck(sd_across=sd_across, sd_strata=sd_strata, sd_strata_avg=sd_strata_avg)
