"""Covariate balance of a set of control weights, globally and within each group."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hierps.design.build import Design
from hierps.effects.estimands import GroupSums
from hierps.exceptions import ArgumentError, ArgumentTypeError

__all__ = [
    "INTERCEPT",
    "BalanceDraws",
    "balance_draws",
    "balance_frame",
    "binary_covariates",
    "covariate_values",
    "variance_ratios",
    "weighted_variance",
]

#: Row name of the constant covariate 1, whose imbalance is the sum-to-n_treated gap.
INTERCEPT = "(intercept)"


def _frequency_variance(values: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``Σ b (x − x̄_b)² / (Σ b − 1)``: base weights as frequencies (ddof 1 when all are 1)."""
    total = base.sum()
    if total <= 1:
        return np.full(values.shape[1], np.nan)
    mean = base @ values / total
    return base @ (values - mean) ** 2 / (total - 1)


def _denominator_sd(
    values: np.ndarray, treated: np.ndarray, estimand: str, base: np.ndarray
) -> np.ndarray:
    """The SMD denominator of each column: the SD of the target population, unweighted by
    the balancing weights (cobalt's choice): the treated SD for the ATT, the control SD for
    the ATC, the pooled SD of both arms for the ATE; base-weighted if the design has base
    weights. Where the target SD is 0, the pooled SD."""
    variance = {
        arm: _frequency_variance(values[mask], base[mask])
        for arm, mask in (("treated", treated), ("control", ~treated))
    }
    pooled = np.sqrt((variance["treated"] + variance["control"]) / 2)
    if estimand == "ate":
        return pooled
    sd = np.sqrt(variance["treated" if estimand == "att" else "control"])
    return np.where(sd > 0, sd, pooled)


def balance_frame(design: Design, weights: np.ndarray, estimand: str = "att") -> pd.DataFrame:
    """Balance before and after weighting, as a tidy long DataFrame.

    One row per (scope, group, covariate): ``scope`` is ``"global"`` (``group`` missing) or
    ``"group"``. Covariates are the model's encoded columns (one-hot levels, missingness
    indicators with missing entries at their centre) plus the group covariates (global rows
    only) and :data:`INTERCEPT`.

    Columns
    -------
    treated_mean, control_mean_before, control_mean_after
        On the original scale; after = weighted by ``weights``. With the ATC and the ATE
        the treated are reweighted too: ``treated_mean_after``.
    smd_before, smd_after
        (treated − control) mean difference divided by the SD of the target population in
        the whole sample (cobalt's choice: the treated SD for the ATT, the control SD for
        the ATC, the pooled SD for the ATE; the pooled SD where the target SD is 0). The same
        denominator is used in every group so that SMDs compare across groups.
    treated_total, control_total_after, imbalance
        Sums on the model's standardized scale, and the weighted arm's total minus its
        target's (ATT: ``control_total_after − treated_total``; ATC: the treated after minus
        the controls; ATE: the controls after minus the whole sample, and
        ``imbalance_treated`` likewise): the quantities the MAP first-order conditions tie
        to the coefficients.

    Base weights of the design weigh every unit before weighting; ``weights`` include them.
    """
    treated = design.treatment == 1
    base = design.unit_weights
    reweights_treated = estimand != "att"
    control_weights = np.where(treated, 0.0, weights)
    treated_weights = np.where(treated, weights if reweights_treated else base, 0.0)
    sums = GroupSums(design.group_codes, design.n_groups)
    unit_original = design.unit_frame(original_scale=True).to_numpy()
    group_original = design.group_frame(original_scale=True).to_numpy()[design.group_codes]
    names = [INTERCEPT, *design.unit_names, *design.group_names]
    n_unit = len(design.unit_names)
    standardized = np.column_stack(
        [np.ones(design.n_units), design.unit_matrix, design.group_matrix[design.group_codes]]
    )
    original = np.column_stack([np.ones(design.n_units), unit_original, group_original])
    sd = np.r_[np.nan, _denominator_sd(original[:, 1:], treated, estimand, base)]
    treated_base = np.where(treated, base, 0.0)
    control_base = np.where(treated, 0.0, base)

    def table(scope_sum, labels) -> pd.DataFrame:
        treated_count = scope_sum(treated_base)
        control_count = scope_sum(control_base)
        weight_total = scope_sum(control_weights)
        treated_total_after = scope_sum(treated_weights)
        rows = {}
        for column, name in enumerate(names):
            x, s = original[:, column], standardized[:, column]
            with np.errstate(invalid="ignore"):  # 0/0 in a scope without an arm
                treated_mean = scope_sum(treated_base * x) / treated_count
                treated_after = scope_sum(treated_weights * x) / treated_total_after
                before = scope_sum(control_base * x) / control_count
                after = scope_sum(control_weights * x) / weight_total
            rows[name] = {
                "treated_mean": treated_mean,
                "control_mean_before": before,
                "control_mean_after": after,
                "smd_before": (treated_mean - before) / sd[column],
                "smd_after": (treated_after - after) / sd[column],
                "treated_total": scope_sum(treated_base * s),
                "control_total_after": scope_sum(control_weights * s),
            }
            if reweights_treated:
                rows[name]["treated_mean_after"] = treated_after
                rows[name]["treated_total_after"] = scope_sum(treated_weights * s)
                rows[name]["control_total"] = scope_sum(control_base * s)
        frames = []
        for name, columns in rows.items():
            frame = pd.DataFrame(columns, index=labels)
            frame.insert(0, "covariate", name)
            frames.append(frame)
        out = pd.concat(frames)
        if estimand == "att":
            out["imbalance"] = out["control_total_after"] - out["treated_total"]
        elif estimand == "atc":
            out["imbalance"] = out["treated_total_after"] - out["control_total"]
        else:
            whole = out["treated_total"] + out["control_total"]
            out["imbalance"] = out["control_total_after"] - whole
            out["imbalance_treated"] = out["treated_total_after"] - whole
        return out

    def global_sum(values: np.ndarray) -> np.ndarray:
        return np.array([values.sum()])

    global_rows = table(global_sum, pd.Index([None], dtype=object, name="group"))
    group_rows = table(sums, pd.Index(design.groups.tolist(), dtype=object, name="group"))
    # Group covariates are constant within a group: their within-group balance is the
    # sum gap times the group's value, reported once in the intercept row.
    group_rows = group_rows[group_rows["covariate"].isin(names[: 1 + n_unit])]
    global_rows.insert(0, "scope", "global")
    group_rows.insert(0, "scope", "group")
    out = pd.concat([global_rows, group_rows]).reset_index()
    return out[["scope", "group", *out.columns.drop(["scope", "group"])]]


# --------------------------------------------------------------------------------------------
# Helpers of the balance table (hierps.balance.table): covariate kinds, variance ratios, and
# balance draw by draw. Same covariates, scale and SMD denominator as balance_frame.
# --------------------------------------------------------------------------------------------


def covariate_values(design: Design) -> tuple[list[str], np.ndarray, int]:
    """Unit then group covariates on the original scale, one row per unit.

    Returns the names, the ``(n, K)`` values (missing entries at their imputed centre, group
    covariates repeated for every unit of a group) and the number of unit covariates.
    """
    unit = design.unit_frame(original_scale=True).to_numpy()
    group = design.group_frame(original_scale=True).to_numpy()[design.group_codes]
    names = [*design.unit_names, *design.group_names]
    return names, np.column_stack([unit, group]), len(design.unit_names)


def binary_covariates(values: np.ndarray) -> np.ndarray:
    """Which columns take at most two values (one-hot levels, missingness indicators, any
    dummy such as 1/2), as cobalt calls a covariate binary: its variance is set by its mean.

    Values are compared after rounding to 9 decimals, since putting standardized columns back
    on the original scale leaves 0/1 levels a rounding error away from 0 and 1.
    """
    rounded = np.round(values, 9)
    return np.array([len(np.unique(column)) <= 2 for column in rounded.T], dtype=bool)


def weighted_variance(
    values: np.ndarray, weights: np.ndarray, codes: np.ndarray | None = None, n_groups: int = 1
) -> np.ndarray:
    """Weighted variance of each column, globally or per group, with the reliability-weights
    correction (cobalt's ``col_w_var``): ``Σ w (x − x̄_w)² / (Σ w − Σ w² / Σ w)``.

    With equal weights this is the usual ``ddof=1`` variance; with fewer than two units of
    positive weight it is NaN.

    Parameters
    ----------
    values
        ``(n, K)``.
    weights
        ``(n,)``, zero for the units that do not belong to the arm.
    codes, n_groups
        Group code of each unit and the number of groups; ``None`` for one global variance
        per column.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` globally, ``(n_groups, K)`` per group.
    """
    squeeze = codes is None
    if codes is None:
        codes, n_groups = np.zeros(len(weights), dtype=np.int64), 1
    sums = GroupSums(codes, n_groups)
    total = sums(weights)  # (J,)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums(weights * values.T).T / total[:, None]  # (J, K)
        # Two passes (centre, then square) avoid the cancellation of Σwx² − (Σwx)²/Σw.
        spread = sums(weights * ((values - mean[codes]) ** 2).T).T
        denominator = total - sums(weights**2) / total
        variance = spread / denominator[:, None]
    variance = np.where((denominator > 0)[:, None], variance, np.nan)
    return variance[0] if squeeze else variance


def variance_ratios(
    design: Design, weights: np.ndarray, estimand: str = "att"
) -> tuple[np.ndarray, ...]:
    """Treated variance over control variance before and after weighting.

    Returns ``(global_before, global_after)`` of shape ``(K,)`` over unit then group
    covariates and ``(group_before, group_after)`` of shape ``(J, K_unit)``. Columns holding
    two values only get NaN: their variance is fixed by their mean, so the ratio adds nothing
    to the SMD (cobalt reports none either). Before weighting every unit counts with its base
    weight (1 without base weights); after weighting the treated keep it for the ATT and
    carry ``weights`` for the ATC and ATE.
    """
    _, values, n_unit = covariate_values(design)
    treated = design.treatment == 1
    base = design.unit_weights
    control = np.where(treated, 0.0, base)
    control_weights = np.where(treated, 0.0, weights)
    treated_before = np.where(treated, base, 0.0)
    treated_after = treated_before if estimand == "att" else np.where(treated, weights, 0.0)
    binary = binary_covariates(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = [
            weighted_variance(values, treated_before) / weighted_variance(values, control),
            weighted_variance(values, treated_after) / weighted_variance(values, control_weights),
        ]
        unit, codes, n_groups = values[:, :n_unit], design.group_codes, design.n_groups
        out += [
            weighted_variance(unit, treated_before, codes, n_groups)
            / weighted_variance(unit, control, codes, n_groups),
            weighted_variance(unit, treated_after, codes, n_groups)
            / weighted_variance(unit, control_weights, codes, n_groups),
        ]
    masks = [binary, binary, binary[:n_unit], binary[:n_unit]]
    return tuple(np.where(mask, np.nan, ratio) for ratio, mask in zip(out, masks, strict=True))


@dataclass(frozen=True)
class BalanceDraws:
    """SMDs after weighting and Kish ESS of the control weights, one row per draw.

    ``smd_global`` is ``(S, K)`` over unit then group covariates, ``smd_group`` is
    ``(S, J, K_unit)``, ``ess_global`` ``(S,)`` and ``ess_group`` ``(S, J)``.
    """

    smd_global: np.ndarray
    smd_group: np.ndarray
    ess_global: np.ndarray
    ess_group: np.ndarray


def balance_draws(
    design: Design,
    control_weights: Callable[[int, np.ndarray], np.ndarray],
    n_draws: int,
) -> BalanceDraws:
    """Balance of every draw of the control weights, one group at a time.

    Parameters
    ----------
    design
        The design.
    control_weights
        ``control_weights(j, rows)`` returns the ``(n_draws, len(rows))`` weights of the
        control units at positions ``rows`` (all in group ``j``). Working group by group keeps
        memory at draws × (largest group), never draws × units.
    n_draws
        Number of draws ``S``.

    Returns
    -------
    BalanceDraws
        SMDs with the same treated means and denominators as :func:`balance_frame`.
    """
    _, values, n_unit = covariate_values(design)
    treated = design.treatment == 1
    base = design.unit_weights
    codes = design.group_codes
    sd = _denominator_sd(values, treated, "att", base)
    n_groups = design.n_groups
    # The treated keep their base weights (1 without base weights), as in balance_frame.
    treated_base = np.where(treated, base, 0.0)
    sums = GroupSums(codes, n_groups)
    with np.errstate(invalid="ignore"):  # 0/0 in a group without treated units
        treated_mean_group = sums(treated_base * values.T).T / sums(treated_base)[:, None]
    treated_mean = treated_base @ values / treated_base.sum()

    weight_sum = np.zeros((n_draws, n_groups))
    square_sum = np.zeros((n_draws, n_groups))
    weighted_sum = np.zeros((n_draws, n_groups, values.shape[1]))
    control_rows = np.flatnonzero(~treated)
    order = control_rows[np.argsort(codes[control_rows], kind="stable")]
    bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
    for start, stop in itertools.pairwise(bounds if len(order) else []):
        rows = order[start:stop]
        j = int(codes[rows[0]])
        w = np.asarray(control_weights(j, rows), dtype=float).reshape(n_draws, len(rows))
        weight_sum[:, j] = w.sum(axis=1)
        square_sum[:, j] = (w**2).sum(axis=1)
        weighted_sum[:, j, :] = w @ values[rows]
    # 0/0 in groups without controls; x/0 where every square of a group's weights underflows
    # (weights below about 1e-162), whose ESS is then 0. (Σw / √Σw²)² rather than (Σw)² / Σw²
    # keeps the ESS finite for weights up to about 1e154.
    with np.errstate(invalid="ignore", divide="ignore"):
        control_mean = weighted_sum.sum(axis=1) / weight_sum.sum(axis=1)[:, None]
        smd_global = (treated_mean - control_mean) / sd
        control_mean_group = weighted_sum[:, :, :n_unit] / weight_sum[:, :, None]
        smd_group = (treated_mean_group[:, :n_unit] - control_mean_group) / sd[:n_unit]
        ess_global = (weight_sum.sum(axis=1) / np.sqrt(square_sum.sum(axis=1))) ** 2
        ess_group = np.where(square_sum > 0, (weight_sum / np.sqrt(square_sum)) ** 2, 0.0)
    return BalanceDraws(smd_global, smd_group, ess_global, ess_group)


def att_result_design(result: object, purpose: str) -> Design:
    """The design of a hierps result whose weights target the ATT.

    Parameters
    ----------
    result
        A MAP or posterior result (anything with a ``.design``).
    purpose
        What the caller assesses, for the error message (``"overlap"``).

    Raises
    ------
    ArgumentTypeError
        If ``result`` has no design.
    ArgumentError
        If the result estimated another estimand.
    """
    design = getattr(result, "design", None)
    if not isinstance(design, Design):
        raise ArgumentTypeError(
            f"expected a hierps result with a .design (MapResult or PosteriorResult), not "
            f"{type(result).__name__}"
        )
    estimand = str(getattr(result, "estimand", "att"))
    if estimand != "att":
        raise ArgumentError(
            f"{purpose} assesses ATT weights (controls reweighted to the treated); this result "
            f"estimated the {estimand.upper()}"
        )
    return design
