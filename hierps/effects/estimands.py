"""Effects on the treated from weights: group CATTs and the overall ATT (Hájek estimators).

NumPy cores with a leading draw axis allowed; the MAP and posterior results wrap them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["GroupSums", "att_from_catt", "catt_from_weights", "effects_from_sums", "kish_ess"]


class GroupSums:
    """Sums of per-unit values within groups, for one weight vector or a stack of draws."""

    def __init__(self, codes: np.ndarray, n_groups: int) -> None:
        n = len(codes)
        self.n_groups = n_groups
        self._indicator = sp.csr_array((np.ones(n), (np.arange(n), codes)), shape=(n, n_groups))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Group sums along the last axis: ``(..., n) -> (..., n_groups)``."""
        values = np.asarray(values, dtype=float)
        flat = values.reshape(-1, values.shape[-1])
        sums = (self._indicator.T @ flat.T).T
        return np.asarray(sums).reshape(*values.shape[:-1], self.n_groups)


def catt_from_weights(
    outcome: np.ndarray,
    treatment: np.ndarray,
    group_sums: GroupSums,
    control_weights: np.ndarray,
    treated_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Group effects on the treated, ``mean_treated(Y) − Σ_C w Y / Σ_C w`` per group.

    Parameters
    ----------
    outcome, treatment
        Shape ``(n,)``.
    group_sums
        The group structure.
    control_weights
        ``(..., n)``; entries of treated units are ignored.
    treated_weights
        ``(..., n)`` weights of the treated units (Bayesian bootstrap); ``None`` means 1.

    Returns
    -------
    dict
        ``catt``, ``treated_mean``, ``control_mean``, ``treated_weight`` (the treated count or
        its reweighted version) and ``control_weight`` (sum of control weights), each
        ``(..., n_groups)``. Groups with no controls or no treated give NaN effects.
    """
    is_control = treatment == 0
    w = np.where(is_control, control_weights, 0.0)
    a = np.where(is_control, 0.0, 1.0 if treated_weights is None else treated_weights)
    a = np.broadcast_to(a, w.shape) if a.ndim < w.ndim else a
    return effects_from_sums(
        treated_weight=group_sums(a),
        treated_total=group_sums(a * outcome),
        control_weight=group_sums(w),
        control_total=group_sums(w * outcome),
    )


def effects_from_sums(
    treated_weight: np.ndarray,
    treated_total: np.ndarray,
    control_weight: np.ndarray,
    control_total: np.ndarray,
) -> dict[str, np.ndarray]:
    """Group effects from each arm's weight sum ``Σ w`` and weighted outcome sum ``Σ w Y``.

    The arrays are ``(..., n_groups)``; the result has the keys of :func:`catt_from_weights`.
    A group whose arm has no weight gets a NaN mean for that arm and so a NaN effect.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        control_mean = np.where(control_weight > 0, control_total / control_weight, np.nan)
        treated_mean = np.where(treated_weight > 0, treated_total / treated_weight, np.nan)
    return {
        "catt": treated_mean - control_mean,
        "treated_mean": treated_mean,
        "control_mean": control_mean,
        "treated_weight": treated_weight,
        "control_weight": control_weight,
    }


def att_from_catt(catt: np.ndarray, treated_weight: np.ndarray) -> np.ndarray:
    """The ATT as the treated-weighted mean of the estimable group CATTs (last axis)."""
    estimable = np.isfinite(catt)
    weight = np.where(estimable, treated_weight, 0.0)
    return np.sum(np.where(estimable, catt, 0.0) * weight, axis=-1) / np.sum(weight, axis=-1)


def kish_ess(weights: np.ndarray, group_sums: GroupSums | None = None) -> np.ndarray:
    """Kish's effective sample size ``(Σw)² / Σw²``, overall or per group (last axis)."""
    if group_sums is None:
        return np.sum(weights, axis=-1) ** 2 / np.sum(weights**2, axis=-1)
    total = group_sums(weights)
    squares = group_sums(weights**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(squares > 0, total**2 / squares, 0.0)
