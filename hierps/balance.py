"""Covariate balance of a set of control weights, globally and within each group."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hierps.data import Design
from hierps.estimands import GroupSums

__all__ = ["INTERCEPT", "balance_frame"]

#: Row name of the constant covariate 1, whose imbalance is the sum-to-n_treated gap.
INTERCEPT = "(intercept)"


def _treated_sd(values: np.ndarray, treated: np.ndarray) -> np.ndarray:
    sd = values[treated].std(axis=0, ddof=1) if treated.sum() > 1 else np.zeros(values.shape[1])
    pooled = np.sqrt(
        (values[treated].var(axis=0, ddof=1) + values[~treated].var(axis=0, ddof=1)) / 2
    )
    return np.where(sd > 0, sd, pooled)


def balance_frame(design: Design, weights: np.ndarray) -> pd.DataFrame:
    """Balance before and after weighting, as a tidy long DataFrame.

    One row per (scope, group, covariate): ``scope`` is ``"global"`` (``group`` missing) or
    ``"group"``. Covariates are the model's encoded columns (one-hot levels, missingness
    indicators with missing entries at their centre) plus the group covariates (global rows
    only) and :data:`INTERCEPT`.

    Columns
    -------
    treated_mean, control_mean_before, control_mean_after
        On the original scale; after = weighted by ``weights``.
    smd_before, smd_after
        (treated − control) mean difference divided by the treated SD of the whole unweighted
        sample (cobalt's choice for the ATT; the pooled SD where the treated SD is 0). The same
        denominator is used in every group so that SMDs compare across groups.
    treated_total, control_total_after, imbalance
        Sums on the model's standardized scale, and ``control_total_after − treated_total``:
        the quantities the MAP first-order conditions tie to the coefficients.
    """
    treated = design.treatment == 1
    control_weights = np.where(treated, 0.0, weights)
    sums = GroupSums(design.group_codes, design.n_groups)
    unit_original = design.unit_frame(original_scale=True).to_numpy()
    group_original = design.group_frame(original_scale=True).to_numpy()[design.group_codes]
    names = [INTERCEPT, *design.unit_names, *design.group_names]
    n_unit = len(design.unit_names)
    standardized = np.column_stack(
        [np.ones(design.n_units), design.unit_matrix, design.group_matrix[design.group_codes]]
    )
    original = np.column_stack([np.ones(design.n_units), unit_original, group_original])
    sd = np.r_[np.nan, _treated_sd(original[:, 1:], treated)]

    def table(scope_sum, labels) -> pd.DataFrame:
        treated_count = scope_sum(treated.astype(float))
        control_count = scope_sum((~treated).astype(float))
        weight_total = scope_sum(control_weights)
        rows = {}
        for column, name in enumerate(names):
            x, s = original[:, column], standardized[:, column]
            with np.errstate(invalid="ignore", divide="ignore"):
                treated_mean = scope_sum(np.where(treated, x, 0.0)) / treated_count
                before = scope_sum(np.where(treated, 0.0, x)) / control_count
                after = scope_sum(control_weights * x) / weight_total
            rows[name] = {
                "treated_mean": treated_mean,
                "control_mean_before": before,
                "control_mean_after": after,
                "smd_before": (treated_mean - before) / sd[column],
                "smd_after": (treated_mean - after) / sd[column],
                "treated_total": scope_sum(np.where(treated, s, 0.0)),
                "control_total_after": scope_sum(control_weights * s),
            }
        frames = []
        for name, columns in rows.items():
            frame = pd.DataFrame(columns, index=labels)
            frame.insert(0, "covariate", name)
            frames.append(frame)
        out = pd.concat(frames)
        out["imbalance"] = out["control_total_after"] - out["treated_total"]
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
