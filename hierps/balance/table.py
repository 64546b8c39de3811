"""Balance tables: how far the weighted controls are from the treated, and where.

:func:`balance_table` is modelled on cobalt's ``bal.tab(..., cluster=)``: standardized mean
differences (SMD) and variance ratios per covariate before and after weighting, globally, in
every group and summarised across groups, with the effective sample size of the control
weights. It is the one way into balance: it takes a MAP result, a posterior result (with
intervals over the draws) or any result with ``.design`` and ``.weights``. It returns a
:class:`BalanceTable` of tidy DataFrames that prints as rich tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
from rich.console import Group

from hierps.balance.render import balance_renderables
from hierps.balance.statistics import (
    INTERCEPT,
    BalanceDraws,
    balance_draws,
    balance_frame,
    binary_covariates,
    covariate_values,
    variance_ratios,
)
from hierps.balance.terms import expanded_design
from hierps.calibrated.deviations import imposed_criterion
from hierps.design.build import Design
from hierps.effects.estimands import kish_ess
from hierps.exceptions import ArgumentError, ArgumentTypeError
from hierps.mcmc.conventions import CI_PROB, SAMPLE_DIMS
from hierps.rendering import render_text

if TYPE_CHECKING:
    from hierps.balance.weightings import BalanceComparison

__all__ = ["DEFAULT_THRESHOLD", "BalanceTable", "as_balance_table", "balance_table"]

#: |SMD| above which a covariate is flagged (the usual 0.1 of Austin 2009 and cobalt).
DEFAULT_THRESHOLD = 0.1
_SMD_DENOMINATOR = {
    "att": (
        "treated SD of the unweighted full sample (cobalt's choice for the ATT; the pooled SD "
        "of both arms where the treated SD is 0), the same in every group"
    ),
    "atc": (
        "control SD of the unweighted full sample (cobalt's choice for the ATC; the pooled SD "
        "of both arms where the control SD is 0), the same in every group"
    ),
    "ate": "pooled SD of both arms in the unweighted full sample (cobalt's choice for the ATE)",
}


@dataclass(frozen=True, eq=False)
class BalanceTable:
    """Covariate balance of a set of control weights (see :func:`balance_table`).

    Attributes
    ----------
    global_
        One row per covariate (unit covariates, then group covariates).
    by_group
        One row per (group, unit covariate).
    across_groups
        One row per unit covariate: the within-group SMDs summarised over groups.
    ess
        Kish effective sample size of the control weights: one ``global`` row, then one row
        per group.
    threshold
        The |SMD| above which a covariate counts as imbalanced.
    weights
        Which weights were assessed ("MAP weights" or "posterior-mean weights").
    per_draw
        Where the per-draw intervals come from, or why there are none.
    ci_prob
        Probability of the per-draw intervals (``None`` without them).
    deviations
        For a MAP fit with ``deviations="laplace"`` or ``"low_rank"``: the within-group
        criterion the prior imposed and its bound ``1/sigma_beta``, per weighted arm (see
        :func:`hierps.calibrated.deviations.imposed_criterion`); ``None`` otherwise.
    """

    global_: pd.DataFrame
    by_group: pd.DataFrame
    across_groups: pd.DataFrame
    ess: pd.DataFrame
    threshold: float
    weights: str
    per_draw: str
    ci_prob: float | None = None
    deviations: pd.DataFrame | None = None

    @property
    def has_intervals(self) -> bool:
        """Whether the tables carry per-draw intervals (``smd_after_lower`` …)."""
        return self.ci_prob is not None

    @property
    def n_imbalanced(self) -> int:
        """Covariates whose global |SMD| after weighting exceeds the threshold."""
        return int((self.global_["smd_after"].abs() > self.threshold).sum())

    def __rich__(self) -> Group:
        return Group(*balance_renderables(self))

    def __str__(self) -> str:
        return render_text(self)

    def __repr__(self) -> str:
        return self.__str__()


def balance_table(
    result: Any,
    threshold: float = DEFAULT_THRESHOLD,
    ci_prob: float | None = None,
    squares: bool = False,
    interactions: bool = False,
) -> BalanceTable | BalanceComparison:
    """Covariate balance of a result's control weights, globally, per group and across groups.

    Modelled on cobalt's ``bal.tab(..., cluster=)`` for the ATT. The covariates are the
    model's encoded columns on their original scale: numeric unit covariates, one column per
    level of a categorical (``C1[4]``), missingness indicators (``x_missing``; the missing
    entries of ``x`` sit at the centre the design imputed, the treated mean by default, so
    the row of ``x`` is the balance of the values the model balanced), then the group
    covariates. Within a group a group covariate is constant, so the per-group tables hold
    unit covariates only.

    - **SMD**: (treated mean − control mean) / s, before weighting (plain control mean) and
      after (weighted control mean). ``s`` is the treated SD of the unweighted full sample,
      as cobalt uses for the ATT (the pooled SD where the treated SD is 0); the same ``s`` in
      every group, so that within-group SMDs compare across groups.
    - **Variance ratio**: treated variance / control variance, the control variance weighted
      after weighting, with the reliability-weights correction ``Σw(x−x̄)²/(Σw − Σw²/Σw)``
      (cobalt's). Continuous covariates only: NaN for binary columns (those taking two
      values, such as one-hot levels and indicators), whose variance is set by the mean.
      NaN where an arm has fewer than two units in the group (a group with one treated unit
      has an SMD but no variance ratio).
    - **balanced**: ``|smd_after| <= threshold`` (NA where the SMD is undefined: a group
      without treated or without controls).
    - **Across groups** (per unit covariate, over the groups with a defined SMD): mean and
      max |SMD| before and after, the group where the max after weighting occurs, and the
      number of groups above the threshold. Groups count equally, as in cobalt's cluster
      summary.
    - **ESS**: Kish's ``(Σw)²/Σw²`` of the control weights, with the weight sum (compare it
      with ``n_treated``) and the share of the largest control weight.
    - **Imposed criterion** (``deviations``): for a MAP fit with Laplace or low-rank slope
      deviations, the largest within-group imbalance or the spectral norm of the matrix of
      within-group imbalances next to its bound ``1/sigma_beta`` (docs/math.md §19).

    Parameters
    ----------
    result
        A :class:`~hierps.calibrated.fit.MapResult` (its ``weights``), or a posterior result
        (anything with ``design`` and an ``idata`` DataTree, such as
        :class:`~hierps.posterior.result.PosteriorResult` with the ATT). For a posterior the point
        tables use the **posterior-mean weights** (``weights/weight``); note that the SMD of
        the mean weights is not the posterior mean of the SMD. The tables then also carry
        per-draw equal-tailed intervals of the SMD after weighting (``smd_after_lower``,
        ``smd_after_upper``, and ``abs_smd_after_lower``/``_upper`` for |SMD|), of the
        maximum |SMD| across groups and of the ESS, computed from the stored per-draw weights
        (``weights/weight_draws``, from ``store_weights=True``) or, without them, recomputed
        from the posterior draws of ``alpha`` and ``beta`` (``w = exp(η)``). When neither is
        in ``idata`` there are no intervals; ``per_draw`` and the DataFrames' ``attrs`` say so.
        Any object with ``design`` and ``weights`` (one weight per unit, treated 1) works too;
        :func:`hierps.balance.weightings.weights_result` wraps user weights so.

        A **dict** of label → weighting (``None`` for the unweighted sample, a result, or a
        ``(model, weights)`` pair, where ``weights`` may be a control selection of
        :func:`hierps.optimize_controls`: 0/1 weights) compares several weightings of one
        design: see :func:`hierps.balance.weightings.compare_balance`, which returns a
        :class:`~hierps.balance.weightings.BalanceComparison` (the same tables stacked with a
        ``weighting`` column).
    threshold
        |SMD| above which a covariate is flagged.
    ci_prob
        Probability of the per-draw intervals; by default the ``ci_prob`` the posterior
        recorded, else 0.9.
    squares, interactions
        Also assess the squares of the continuous unit covariates (``x^2``) and the products
        of pairs of unit covariates (``a:b``), continuous columns centred at their treated
        mean: the balance of variances and covariances (see
        :func:`hierps.balance.terms.expanded_design`). They are rows of every table after
        the model's covariates.

    Returns
    -------
    BalanceTable
        Tidy DataFrames ``global_``, ``by_group``, ``across_groups`` and ``ess``; prints as
        rich tables (a ``BalanceComparison`` for a dict of weightings).

    Examples
    --------
    >>> from hierps.balance.table import balance_table
    >>> table = balance_table(fit)  # doctest: +SKIP
    >>> print(table)  # doctest: +SKIP
    >>> table.across_groups.sort_values("max_abs_smd_after")  # doctest: +SKIP
    >>> balance_table({"unweighted": None, "MAP": fit, "posterior": post})  # doctest: +SKIP
    """
    if isinstance(result, Mapping):
        # Imported here: the comparison module builds on this one.
        from hierps.balance.weightings import compare_balance

        return compare_balance(result, threshold, ci_prob, squares, interactions)
    if isinstance(threshold, bool) or not np.isscalar(threshold) or not threshold > 0:
        raise ArgumentError(f"threshold must be a positive number, not {threshold!r}")
    threshold = float(threshold)
    design, weights, label, draw_weights, per_draw, recorded_prob = _resolve_weights(result)
    if squares or interactions:
        design = expanded_design(design, squares=bool(squares), interactions=bool(interactions))
    draws = None if draw_weights is None else balance_draws(design, *draw_weights)
    if ci_prob is not None and not 0 < ci_prob < 1:
        raise ArgumentError(f"ci_prob must lie strictly between 0 and 1, not {ci_prob!r}")
    prob = None if draws is None else float(ci_prob or recorded_prob or CI_PROB)

    names, values, n_unit = covariate_values(design)
    kinds = np.where(binary_covariates(values), "binary", "continuous")
    estimand = str(getattr(result, "estimand", "att"))
    frame = balance_frame(design, weights, estimand=estimand)
    frame = frame[frame["covariate"] != INTERCEPT]
    vr_global_before, vr_global_after, vr_group_before, vr_group_after = variance_ratios(
        design, weights, estimand=estimand
    )
    columns = ["treated_mean", "control_mean_before", "control_mean_after"]
    if estimand != "att":
        columns.insert(1, "treated_mean_after")
    columns += ["smd_before", "smd_after"]

    overall = frame[frame["scope"] == "global"].set_index("covariate").loc[names, columns]
    global_ = pd.DataFrame(
        {
            "covariate": names,
            "level": ["unit"] * n_unit + ["group"] * (len(names) - n_unit),
            "kind": kinds,
        }
    )
    for column in columns:
        global_[column] = overall[column].to_numpy()
    global_["var_ratio_before"] = vr_global_before
    global_["var_ratio_after"] = vr_global_after

    unit_names = names[:n_unit]
    groups = design.groups.tolist()
    n_treated = design.treated_per_group.astype(int)
    n_control = design.units_per_group.astype(int) - n_treated
    within = frame[frame["scope"] == "group"]
    by_group = pd.DataFrame(
        {
            "group": pd.Series(np.repeat(groups, n_unit) if n_unit else [], dtype=object),
            "covariate": np.tile(unit_names, len(groups)),
            "kind": np.tile(kinds[:n_unit], len(groups)),
            "n_treated": np.repeat(n_treated, n_unit),
            "n_control": np.repeat(n_control, n_unit),
        }
    )
    # balance_frame lists groups within each covariate; reorder to covariates within groups.
    keyed = within.assign(_code=np.tile(np.arange(len(groups)), n_unit)).set_index(
        ["_code", "covariate"]
    )
    keys = pd.MultiIndex.from_arrays(
        [np.repeat(np.arange(len(groups)), n_unit), np.tile(unit_names, len(groups))]
    )
    for column in columns:
        by_group[column] = keyed[column].reindex(keys).to_numpy()
    by_group["var_ratio_before"] = vr_group_before.ravel()
    by_group["var_ratio_after"] = vr_group_after.ravel()

    ess = _ess_frame(design, weights, estimand)
    if draws is not None:
        _add_intervals(global_, by_group, ess, draws, prob)
    global_["balanced"] = _balanced(global_["smd_after"], threshold)
    by_group["balanced"] = _balanced(by_group["smd_after"], threshold)
    across = _across_groups(by_group, unit_names, kinds[:n_unit], threshold, draws, prob)

    attrs = {
        "threshold": threshold,
        "weights": label,
        "per_draw": per_draw,
        "ci_prob": prob,
        "smd_denominator": _SMD_DENOMINATOR[estimand],
        "estimand": estimand,
    }
    for table in (global_, by_group, across, ess):
        table.attrs.update(attrs)
    return BalanceTable(
        global_=global_,
        by_group=by_group,
        across_groups=across,
        ess=ess,
        threshold=threshold,
        weights=label,
        per_draw=per_draw,
        ci_prob=prob,
        deviations=imposed_criterion(result),
    )


def _resolve_weights(
    result: Any,
) -> tuple[
    Design,
    np.ndarray,
    str,
    tuple[Callable[[int, np.ndarray], np.ndarray], int] | None,
    str,
    float | None,
]:
    """Design, point weights, their label, per-draw weights (if any: a function of the group
    and rows, and the number of draws), how those were found, and the interval probability
    the result recorded.

    Branches on what the result holds, not on its class: an ``idata`` means a posterior.
    """
    design = getattr(result, "design", None)
    if not isinstance(design, Design):
        raise ArgumentTypeError(
            f"expected a hierps result with a .design (MapResult or PosteriorResult), not "
            f"{type(result).__name__}"
        )
    idata = getattr(result, "idata", None)
    if idata is None:
        weights = getattr(result, "weights", None)
        if weights is None:
            raise ArgumentTypeError(f"{type(result).__name__} has no .weights to assess")
        weights = np.asarray(weights, dtype=float).reshape(-1)
        if weights.shape != (design.n_units,):
            raise ArgumentError(
                f"expected one weight per unit ({design.n_units}), got {weights.shape[0]}"
            )
        label = getattr(result, "weights_label", "MAP weights")
        return design, weights, label, None, "not applicable (one set of weights)", None

    estimand = getattr(result, "estimand", "att")
    children = idata.children
    stored = idata["weights"].to_dataset() if "weights" in children else xr.Dataset()
    if "weight" in stored:
        weights = stored["weight"].to_numpy().astype(float)
    elif "weight_draws" in stored:
        weights = stored["weight_draws"].mean(SAMPLE_DIMS).to_numpy()
    else:
        raise ArgumentError("the posterior result has no weights group (weights/weight)")
    recorded = None
    for group in ("weights", "estimands"):
        if group in children and "ci_prob" in idata[group].attrs:
            recorded = float(idata[group].attrs["ci_prob"])
            break

    draws: Callable[[int, np.ndarray], np.ndarray] | None = None
    n_draws = 0
    if estimand != "att":
        # The per-draw summaries follow the control weights of the ATT.
        per_draw = f"not available for the {str(estimand).upper()} (per-draw balance is ATT-only)"
    elif "weight_draws" in stored:
        stacked = stored["weight_draws"].transpose(*SAMPLE_DIMS, "obs").to_numpy()
        stacked = stacked.reshape(-1, stacked.shape[-1])
        n_draws = stacked.shape[0]

        def draws(j: int, rows: np.ndarray) -> np.ndarray:
            return stacked[:, rows]

        per_draw = "stored per-draw weights (weights/weight_draws)"
    elif "posterior" in children and "alpha" in idata["posterior"].data_vars:
        draws, n_draws = _recomputed_weights(design, idata["posterior"].to_dataset())
        per_draw = "per-draw weights recomputed from the posterior of alpha and beta"
    else:
        per_draw = (
            "not available: idata holds neither weights/weight_draws (store_weights=True) nor "
            "posterior alpha and beta"
        )
    draw_weights = None if draws is None else (draws, n_draws)
    return design, weights, "posterior-mean weights", draw_weights, per_draw, recorded


def _recomputed_weights(
    design: Design, posterior: xr.Dataset
) -> tuple[Callable[[int, np.ndarray], np.ndarray], int]:
    """Per-draw control weights ``exp(alpha_j + x'beta_j)`` from the posterior draws."""
    alpha = posterior["alpha"].transpose(*SAMPLE_DIMS, "group").to_numpy()
    if alpha.shape[-1] != design.n_groups:
        raise ArgumentError(
            f"the posterior's alpha has {alpha.shape[-1]} groups, the design {design.n_groups}"
        )
    alpha = alpha.reshape(-1, design.n_groups)
    beta = None
    if design.unit_names:
        if "beta" not in posterior:
            raise ArgumentError("the posterior has no 'beta' but the design has unit covariates")
        beta = (
            posterior["beta"]
            .sel(unit_covariate=list(design.unit_names))
            .transpose(*SAMPLE_DIMS, "group", "unit_covariate")
            .to_numpy()
        )
        beta = beta.reshape(-1, *beta.shape[2:])
    x = design.unit_matrix

    def weights(j: int, rows: np.ndarray) -> np.ndarray:
        eta = np.repeat(alpha[:, j, None], len(rows), axis=1)
        if beta is not None:
            eta = eta + beta[:, j, :] @ x[rows].T
        with np.errstate(over="ignore"):
            return np.exp(eta)

    return weights, alpha.shape[0]


def _arm_ess(
    design: Design, weights: np.ndarray, arm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weight sum, Kish ESS and largest weight share of one arm: global first, then groups."""
    arm_weights = np.where(arm, weights, 0.0)
    codes = design.group_codes
    weight_sum = np.bincount(codes, weights=arm_weights, minlength=design.n_groups)
    square_sum = np.bincount(codes, weights=arm_weights**2, minlength=design.n_groups)
    largest = np.zeros(design.n_groups)
    np.maximum.at(largest, codes, arm_weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        group_ess = np.where(square_sum > 0, weight_sum**2 / square_sum, 0.0)
        share = np.where(weight_sum > 0, largest / weight_sum, np.nan)
        global_ess = float(kish_ess(arm_weights[arm]))
        global_share = arm_weights.max() / arm_weights.sum()
    return (
        np.r_[arm_weights.sum(), weight_sum],
        np.r_[global_ess, group_ess],
        np.r_[global_share, share],
    )


def _ess_frame(design: Design, weights: np.ndarray, estimand: str = "att") -> pd.DataFrame:
    """ESS of the reweighted arm: the controls (ATT, and ATE with ``*_treated`` columns for
    the treated) or the treated (ATC)."""
    treated = design.treatment == 1
    n_treated = design.treated_per_group.astype(int)
    n_control = design.units_per_group.astype(int) - n_treated
    primary = treated if estimand == "atc" else ~treated
    weight_sum, ess, share = _arm_ess(design, weights, primary)
    frame = pd.DataFrame(
        {
            "scope": ["global"] + ["group"] * design.n_groups,
            "group": pd.Series([None, *design.groups.tolist()], dtype=object),
            "n_treated": np.r_[treated.sum(), n_treated],
            "n_control": np.r_[(~treated).sum(), n_control],
            "weight_sum": weight_sum,
            "ess": ess,
            "max_weight_share": share,
        }
    )
    count = frame["n_treated" if estimand == "atc" else "n_control"]
    with np.errstate(invalid="ignore", divide="ignore"):
        frame.insert(6, "ess_ratio", frame["ess"] / count.where(count > 0))
    if estimand == "ate":
        weight_sum, ess, share = _arm_ess(design, weights, treated)
        frame["weight_sum_treated"] = weight_sum
        frame["ess_treated"] = ess
        frame["max_weight_share_treated"] = share
    frame.attrs["arm"] = "treated" if estimand == "atc" else "control"
    return frame


def _quantiles(values: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed interval over the leading (draw) axis, ignoring NaN draws."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        lower, upper = np.nanquantile(values, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return lower, upper


def _add_intervals(
    global_: pd.DataFrame,
    by_group: pd.DataFrame,
    ess: pd.DataFrame,
    draws: BalanceDraws,
    prob: float,
) -> None:
    def insert(frame: pd.DataFrame, smd: np.ndarray) -> None:
        lower, upper = _quantiles(smd, prob)
        abs_lower, abs_upper = _quantiles(np.abs(smd), prob)
        position = frame.columns.get_loc("smd_after") + 1
        for offset, (name, value) in enumerate(
            {
                "smd_after_lower": lower,
                "smd_after_upper": upper,
                "abs_smd_after_lower": abs_lower,
                "abs_smd_after_upper": abs_upper,
            }.items()
        ):
            frame.insert(position + offset, name, value.ravel())

    insert(global_, draws.smd_global)
    insert(by_group, draws.smd_group)
    ess_draws = np.column_stack([draws.ess_global, draws.ess_group])
    lower, upper = _quantiles(ess_draws, prob)
    position = ess.columns.get_loc("ess") + 1
    ess.insert(position, "ess_lower", lower)
    ess.insert(position + 1, "ess_upper", upper)


def _balanced(smd: pd.Series, threshold: float) -> pd.arrays.BooleanArray:
    balanced = pd.array((smd.abs() <= threshold).to_numpy(), dtype="boolean")
    balanced[smd.isna().to_numpy()] = pd.NA
    return balanced


def _across_groups(
    by_group: pd.DataFrame,
    unit_names: Sequence[str],
    kinds: np.ndarray,
    threshold: float,
    draws: BalanceDraws | None,
    prob: float | None,
) -> pd.DataFrame:
    rows = []
    for covariate, kind in zip(unit_names, kinds, strict=True):
        rows_of = by_group[by_group["covariate"] == covariate]
        before = rows_of["smd_before"].abs()
        after = rows_of["smd_after"].abs()
        defined = after.notna()
        worst = after.idxmax() if defined.any() else None
        rows.append(
            {
                "covariate": covariate,
                "kind": kind,
                "n_groups": int(defined.sum()),
                "mean_abs_smd_before": before.mean(),
                "mean_abs_smd_after": after.mean(),
                "max_abs_smd_before": before.max(),
                "max_abs_smd_after": after.max(),
                "max_group": None if worst is None else rows_of.at[worst, "group"],
                "n_imbalanced": int((after > threshold).sum()),
            }
        )
    across = pd.DataFrame(
        rows,
        columns=[
            "covariate",
            "kind",
            "n_groups",
            "mean_abs_smd_before",
            "mean_abs_smd_after",
            "max_abs_smd_before",
            "max_abs_smd_after",
            "max_group",
            "n_imbalanced",
        ],
    )
    across["max_group"] = across["max_group"].astype(object)
    if draws is not None and len(unit_names):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            worst_draws = np.nanmax(np.abs(draws.smd_group), axis=1)  # (S, K_unit)
        lower, upper = _quantiles(worst_draws, prob)
        position = across.columns.get_loc("max_abs_smd_after") + 1
        across.insert(position, "max_abs_smd_after_lower", lower)
        across.insert(position + 1, "max_abs_smd_after_upper", upper)
    return across


def as_balance_table(result_or_table: Any, threshold: float | None = None) -> BalanceTable:
    """A :class:`BalanceTable` as it is, or the balance table of a result."""
    if isinstance(result_or_table, BalanceTable):
        return result_or_table
    return balance_table(result_or_table, threshold=threshold or DEFAULT_THRESHOLD)
