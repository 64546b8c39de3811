"""Overlap of the propensity distributions of the two arms, globally and within each group.

The ATT weights are odds: a control's weight ``w = exp(η) = π / (1 − π)``, so the propensity the
weights imply is ``π = w / (1 + w)`` and, for every unit, ``π = 1 / (1 + exp(−η))`` with the
fitted linear predictor ``η = α_j + x' β_j``. Treated units whose propensity lies outside the
range of their group's controls have no comparable control; groups whose control weight rests on
a few controls give CATTs that are extrapolations. :func:`overlap` tabulates both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit

from hierps.balance.statistics import att_result_design
from hierps.mcmc.conventions import SAMPLE_DIMS

__all__ = ["ALL_GROUPS", "linear_predictor", "overlap"]

#: Label of the row that pools every group.
ALL_GROUPS = "(all)"
_QUANTILES = {"min": 0.0, "q10": 0.1, "median": 0.5, "q90": 0.9, "max": 1.0}


def linear_predictor(result: Any) -> np.ndarray:
    """Every unit's linear predictor ``η = α_j + x' β_j`` of a result, ``(draws, n)``.

    A MAP result gives one row (its mode); a posterior result one row per posterior draw
    (chains stacked), from the ``alpha`` and ``beta`` of ``idata.posterior``.
    """
    design = att_result_design(result, "overlap")
    idata = getattr(result, "idata", None)
    if idata is None:
        coefficients = getattr(result, "coefficients", None)
        if not isinstance(coefficients, xr.Dataset):
            raise TypeError(
                f"{type(result).__name__} has neither coefficients (MAP) nor idata (posterior)"
            )
        alpha = coefficients["alpha"].to_numpy()[None]
        beta = coefficients["beta"].to_numpy()[None] if design.unit_names else None
    else:
        from hierps.posterior.draws import _coefficients

        if "posterior" not in idata.children:
            raise ValueError("the result's idata has no 'posterior' group")
        alpha, beta = _coefficients(design, idata["posterior"].to_dataset())
        alpha = alpha.reshape(-1, design.n_groups)
        beta = None if beta is None else beta.reshape(-1, *beta.shape[2:])
    eta = alpha[:, design.group_codes].copy()
    if beta is not None:
        # Group by group: a (draws × units × covariates) product would not fit in memory.
        codes = design.group_codes
        order = np.argsort(codes, kind="stable")
        starts = np.searchsorted(codes[order], np.arange(design.n_groups + 1))
        for j in range(design.n_groups):
            rows = order[starts[j] : starts[j + 1]]
            eta[:, rows] += beta[:, j, :] @ design.unit_matrix[rows].T
    return eta


def overlap(
    result: Any,
    max_outside_share: float = 0.1,
    min_ess_ratio: float = 0.1,
    max_weight_share: float = 0.5,
    min_ess: float = 2.0,
) -> pd.DataFrame:
    """Propensity overlap of the arms in every group and overall, with a flag per group.

    Parameters
    ----------
    result
        A :class:`~hierps.calibrated.fit.MapResult` or an ATT
        :class:`~hierps.posterior.result.PosteriorResult`. For a posterior the propensity of a
        unit is its posterior-mean propensity and the control weights are the posterior-mean
        weights (``result.weights``).
    max_outside_share
        A group is flagged when more than this share of its treated units have a propensity
        outside the range (min to max) of its controls' propensities.
    min_ess_ratio
        ... or when the Kish effective sample size of its control weights is below this share
        of its number of controls,
    max_weight_share
        ... or when one control carries more than this share of the group's control weight,
    min_ess
        ... or when the effective sample size of its controls is below this number (a group
        with treated units and no controls is always flagged).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``group`` (the groups, then :data:`ALL_GROUPS`, the whole sample), with the
        columns ``n_treated``, ``n_control``; the propensity quantiles of each arm
        ``treated_min``, ``treated_q10``, ``treated_median``, ``treated_q90``,
        ``treated_max`` and the same for ``control_``; ``share_outside`` (treated units
        outside the controls' propensity range), ``ess`` (Kish ESS of the control weights),
        ``ess_ratio`` (``ess / n_control``), ``max_weight_share``, ``limited_overlap`` and
        ``reasons`` (which thresholds were crossed). Groups without treated units carry no
        CATT and are never flagged. ``attrs`` hold the thresholds and the source of the
        propensities.
    """
    for name, value, upper in (
        ("max_outside_share", max_outside_share, 1.0),
        ("min_ess_ratio", min_ess_ratio, 1.0),
        ("max_weight_share", max_weight_share, 1.0),
        ("min_ess", min_ess, np.inf),
    ):
        if isinstance(value, bool) or not np.isscalar(value) or not 0 <= value <= upper:
            raise ValueError(f"{name} must be a number in [0, {upper:g}], not {value!r}")
    design = att_result_design(result, "overlap")
    eta = linear_predictor(result)
    propensity = expit(eta).mean(axis=0)
    weights = np.asarray(result.weights, dtype=float)
    if getattr(result, "idata", None) is None:
        # Within a group only weight ratios matter, and the relative weights keep them exact
        # where exp(eta) underflows for a whole group.
        group_weights = np.asarray(result.relative_weights, dtype=float)
        source = "MAP mode: pi = 1 / (1 + exp(-eta)) at the fitted coefficients"
    else:
        group_weights = weights
        source = "posterior-mean propensity and posterior-mean weights"
    treated = design.treatment == 1
    scopes = [(label, design.group_codes == j) for j, label in enumerate(design.groups)]
    rows = [
        _scope_row(propensity, group_weights, members & treated, members & ~treated)
        for _, members in scopes
    ]
    rows.append(_scope_row(propensity, weights, treated, ~treated))
    scopes.append((ALL_GROUPS, None))
    table = pd.DataFrame(rows, index=pd.Index([s[0] for s in scopes], dtype=object, name="group"))
    reasons = []
    for _, row in table.iterrows():
        crossed = []
        if row["n_treated"] > 0:
            if row["n_control"] == 0:
                crossed.append("no controls")
            else:
                if row["share_outside"] > max_outside_share:
                    crossed.append(f"{row['share_outside']:.0%} of treated outside control range")
                if row["ess"] < min_ess:
                    crossed.append(f"control ESS {row['ess']:.1f} < {min_ess:g}")
                if row["ess_ratio"] < min_ess_ratio:
                    crossed.append(f"ESS/n {row['ess_ratio']:.2f} < {min_ess_ratio:g}")
                if row["max_weight_share"] > max_weight_share:
                    crossed.append(f"one control holds {row['max_weight_share']:.0%} of weight")
        reasons.append("; ".join(crossed))
    table["limited_overlap"] = [bool(r) for r in reasons]
    table["reasons"] = reasons
    table.attrs.update(
        {
            "max_outside_share": float(max_outside_share),
            "min_ess_ratio": float(min_ess_ratio),
            "max_weight_share": float(max_weight_share),
            "min_ess": float(min_ess),
            "propensity": source,
            "draws": int(eta.shape[0]),
            "sample_dims": SAMPLE_DIMS if eta.shape[0] > 1 else (),
        }
    )
    return table


def _scope_row(
    propensity: np.ndarray, weights: np.ndarray, treated: np.ndarray, control: np.ndarray
) -> dict[str, float]:
    row: dict[str, float] = {"n_treated": int(treated.sum()), "n_control": int(control.sum())}
    for arm, members in (("treated", treated), ("control", control)):
        values = propensity[members]
        quantiles = (
            np.quantile(values, list(_QUANTILES.values()))
            if len(values)
            else np.full(len(_QUANTILES), np.nan)
        )
        row.update({f"{arm}_{name}": q for name, q in zip(_QUANTILES, quantiles, strict=True)})
    if row["n_treated"] == 0:
        row["share_outside"] = np.nan
    elif row["n_control"] == 0:
        row["share_outside"] = 1.0
    else:
        p = propensity[treated]
        outside = (p < row["control_min"]) | (p > row["control_max"])
        row["share_outside"] = float(outside.mean())
    w = weights[control]
    total = w.sum()
    if total > 0:
        row["ess"] = float(total**2 / np.sum(w**2))
        row["ess_ratio"] = row["ess"] / row["n_control"]
        row["max_weight_share"] = float(w.max() / total)
    else:
        row["ess"] = 0.0 if row["n_control"] == 0 else np.nan
        row["ess_ratio"] = np.nan
        row["max_weight_share"] = np.nan
    return row
