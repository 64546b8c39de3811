"""Covariate balance of a Dask MAP fit, from per-group sums (no unit rows on the driver).

Every entry of :func:`hierps.balance.statistics.balance_frame` is a ratio of per-group sums
over the units: counts and ``Σ x`` by arm, ``Σ w x`` over the controls, and for the SMD
denominator ``Σ x²`` by arm. The Dask fit reduces those once (on the standardized scale);
this module turns them into the same long table. Original-scale sums follow from the
standardized ones, ``Σ x = scale · Σ s + centre · n``, and a group covariate's sums are its
group value times the group's sums of the intercept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hierps.balance.statistics import INTERCEPT

__all__ = ["balance_from_sums"]


def _variance(total: np.ndarray, squares: np.ndarray, count: float) -> np.ndarray:
    if count < 2:
        return np.full(np.shape(total), np.nan)
    return (squares - total**2 / count) / (count - 1)


def balance_from_sums(design, data: np.ndarray, sums: np.ndarray) -> pd.DataFrame:
    """The table of ``balance_frame`` for a :class:`~hierps.scale.dask_design.DaskDesign`.

    Parameters
    ----------
    design
        The Dask design.
    data
        ``(J, W)`` data-only sums per group (:func:`hierps.scale.dask_solver.control_block`).
    sums
        ``(J, 6 + p)`` weighted sums per group at the optimum (``_result_sums``).
    """
    from hierps.scale.dask_solver import _data_columns

    p = len(design.unit_names)
    columns = _data_columns(p)
    n_treated = data[:, columns["n_treated"]][:, 0]
    n_control = data[:, columns["n_control"]][:, 0]
    weight_total = sums[:, 3]
    v = design.group_matrix
    # Standardized per-group sums of every column: intercept, unit covariates, group ones.
    treated_s = np.column_stack([n_treated, data[:, columns["treated_x"]], v * n_treated[:, None]])
    control_s = np.column_stack([n_control, data[:, columns["control_x"]], v * n_control[:, None]])
    after_s = np.column_stack([weight_total, sums[:, 6 : 6 + p], v * weight_total[:, None]])
    scaling = pd.concat([design.unit_scaling, design.group_scaling])
    center = np.r_[0.0, scaling["center"].to_numpy()]
    scale = np.r_[1.0, scaling["scale"].to_numpy()]
    names = [INTERCEPT, *design.unit_names, *design.group_names]

    # The SMD denominator: the treated SD of each column over the whole sample (the pooled
    # SD where it is 0), on the original scale, from Σ s and Σ s² by arm.
    squares_t = np.r_[data[:, columns["treated_x2"]].sum(axis=0), n_treated @ v**2]
    squares_c = np.r_[data[:, columns["control_x2"]].sum(axis=0), n_control @ v**2]
    total_t, total_c = treated_s[:, 1:].sum(axis=0), control_s[:, 1:].sum(axis=0)
    n1, n0 = n_treated.sum(), n_control.sum()
    var_t = _variance(total_t, squares_t, n1) * scale[1:] ** 2
    var_c = _variance(total_c, squares_c, n0) * scale[1:] ** 2
    sd_t = np.sqrt(np.maximum(var_t, 0.0)) if n1 > 1 else np.zeros(len(var_t))
    sd = np.r_[np.nan, np.where(sd_t > 0, sd_t, np.sqrt((var_t + var_c) / 2))]

    def table(treated, control, after, counts, labels, keep) -> pd.DataFrame:
        count_t, count_c, total_w = counts
        frames = []
        for k in range(keep):
            original = [
                scale[k] * s[:, k] + center[k] * n
                for s, n in ((treated, count_t), (control, count_c), (after, total_w))
            ]
            with np.errstate(invalid="ignore", divide="ignore"):
                treated_mean = original[0] / count_t
                before = original[1] / count_c
                later = original[2] / total_w
            frame = pd.DataFrame(
                {
                    "treated_mean": treated_mean,
                    "control_mean_before": before,
                    "control_mean_after": later,
                    "smd_before": (treated_mean - before) / sd[k],
                    "smd_after": (treated_mean - later) / sd[k],
                    "treated_total": treated[:, k],
                    "control_total_after": after[:, k],
                },
                index=labels,
            )
            frame.insert(0, "covariate", names[k])
            frames.append(frame)
        out = pd.concat(frames)
        out["imbalance"] = out["control_total_after"] - out["treated_total"]
        return out

    def total(values: np.ndarray) -> np.ndarray:
        return values.sum(axis=0, keepdims=True)

    global_rows = table(
        total(treated_s),
        total(control_s),
        total(after_s),
        (np.array([n1]), np.array([n0]), np.array([weight_total.sum()])),
        pd.Index([None], dtype=object, name="group"),
        len(names),
    )
    # Group covariates are constant within a group: their within-group rows are left out,
    # as in balance_frame.
    group_rows = table(
        treated_s,
        control_s,
        after_s,
        (n_treated, n_control, weight_total),
        pd.Index(design.groups.tolist(), dtype=object, name="group"),
        1 + p,
    )
    global_rows.insert(0, "scope", "global")
    group_rows.insert(0, "scope", "group")
    out = pd.concat([global_rows, group_rows]).reset_index()
    return out[["scope", "group", *out.columns.drop(["scope", "group"])]]
