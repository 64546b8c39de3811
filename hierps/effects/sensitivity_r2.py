"""Variance-based sensitivity of a weighting estimator's ATT (math §18).

Huang & Pimentel's model (R package ``senseweight``; Soriano, Ben-Michael, Bickel, Feller &
Pimentel 2023) describes an omitted confounder by what it would do to the weights: the error
``ε = w* − w`` of the fitted control weights against the ideal ones, with two parameters, the
share ``R²`` of the ideal weights' variance that ``ε`` explains and its correlation ``ρ`` with
the outcome among the controls. The bias of the ATT is then

    bias = ρ · sqrt(var(w) · R² / (1 − R²)) · sd(Y),

with ``var(w)`` and ``sd(Y)`` over the controls and the weights normalized to mean 1.
:func:`sensitivity_r2` gives the R² that explains the estimate away (at a given ρ, and the
equal-strength robustness value ``R² = ρ²``), :func:`bias_contour` the adjusted estimate over a
grid of (R², ρ), and :func:`benchmark_r2` the parameters implied by leaving out each observed
covariate in turn (refitting the MAP weights), which reproduce the observed change exactly.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierps.balance.statistics import att_result_design
from hierps.design.build import Design
from hierps.exceptions import HierpsWarning

__all__ = ["AttWeights", "att_weights", "benchmark_r2", "bias_contour", "sensitivity_r2"]


@dataclass(frozen=True)
class AttWeights:
    """The ATT of a result as one weighting estimator over the controls.

    ``estimate = treated_mean − mean(weights · outcome)``, the controls of the groups with an
    estimable CATT, their weights normalized to mean 1 and scaled so that each group carries
    its share of the treated (the Hájek ATT of every mode, math §10).
    """

    estimate: float
    treated_mean: float
    weights: np.ndarray
    outcome: np.ndarray
    source: str

    @property
    def var_weights(self) -> float:
        """Variance of the normalized control weights (population variance, ``ddof = 0``)."""
        return float(np.var(self.weights))

    @property
    def sd_outcome(self) -> float:
        """Standard deviation of the controls' outcomes (``ddof = 0``)."""
        return float(np.std(self.outcome))


def _design_and_weights(result: Any) -> tuple[Design, np.ndarray, str]:
    design = att_result_design(result, "the variance-based sensitivity model")
    if design.outcome is None:
        raise ValueError("result: the model has no outcome column; give outcome= to hierps.Model")
    relative = getattr(result, "relative_weights", None)
    if relative is not None and getattr(result, "idata", None) is None:
        # Within a group only ratios matter; the relative weights keep them where exp(η)
        # underflows for a whole group.
        return design, np.asarray(relative, dtype=float), "MAP weights"
    weights = np.asarray(result.weights, dtype=float).reshape(-1)
    if weights.shape != (design.n_units,):
        raise ValueError(f"result: expected one weight per unit ({design.n_units})")
    label = "posterior-mean weights" if getattr(result, "idata", None) is not None else "weights"
    return design, weights, getattr(result, "weights_label", label)


def att_weights(result: Any) -> AttWeights:
    """The ATT of ``result``'s weights as ``treated mean − mean(w · Y)`` over the controls.

    Parameters
    ----------
    result
        A :class:`~hierps.calibrated.fit.MapResult`, an ATT posterior result (its
        posterior-mean weights) or any result with ``design`` and ``weights`` (such as
        :func:`hierps.weights_result`).

    Returns
    -------
    AttWeights
    """
    design, weights, source = _design_and_weights(result)
    return _att_weights(design, weights, source)


def _att_weights(design: Design, weights: np.ndarray, source: str) -> AttWeights:
    treated = design.treatment == 1
    codes, y = design.group_codes, design.outcome
    control_weights = np.where(treated, 0.0, weights)
    n_treated = np.bincount(codes, weights=treated.astype(float), minlength=design.n_groups)
    weight_sum = np.bincount(codes, weights=control_weights, minlength=design.n_groups)
    estimable = (n_treated > 0) & (weight_sum > 0)
    if not estimable.any():
        raise ValueError("result: no group has both treated units and weighted controls")
    in_scope = estimable[codes]
    controls = ~treated & in_scope
    share = np.where(estimable, n_treated, 0.0) / n_treated[estimable].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = control_weights * (share / np.where(weight_sum > 0, weight_sum, 1.0))[codes]
    w = unit[controls] * controls.sum()  # mean 1 over the controls in scope
    treated_mean = float(y[treated & in_scope].mean())
    estimate = treated_mean - float(np.mean(w * y[controls]))
    return AttWeights(estimate, treated_mean, w, y[controls].astype(float), source)


def _bias(r2: Any, rho: Any, var_weights: float, sd_outcome: float) -> np.ndarray:
    r2, rho = np.asarray(r2, dtype=float), np.asarray(rho, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return rho * np.sqrt(var_weights * r2 / (1 - r2)) * sd_outcome


def _check_rho(rho: Any) -> np.ndarray:
    values = np.asarray(rho, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(np.abs(values) > 1):
        raise ValueError(f"rho must be correlations in [-1, 1], not {rho!r}")
    return values


def sensitivity_r2(result: Any, rho: Any = 1.0, threshold: float = 0.0) -> pd.DataFrame:
    """The R² of an omitted confounder that explains the ATT away (math §18).

    Parameters
    ----------
    result
        As in :func:`att_weights`.
    rho
        One or more correlations ``|ρ| ≤ 1`` of the weight error with the outcome at which
        to give the R² that moves the estimate to ``threshold`` (1: the worst case).
    threshold
        The value the bias must move the estimate to (``senseweight``'s ``b_star``); 0
        explains the effect away.

    Returns
    -------
    pandas.DataFrame
        One row per ρ, indexed by ``rho``, with ``estimate``, ``var_weights``,
        ``sd_outcome``, ``cor_weights_outcome`` (the correlation of the fitted weights with the
        outcome among the controls), ``r2`` (the R² at that |ρ|, 0 when the estimate is the
        threshold) and ``robustness_value`` (the equal-strength value ``R² = ρ²`` whose bias
        reaches the threshold, as ``senseweight::robustness_value``; the same in every row).
    """
    values = np.atleast_1d(_check_rho(rho))
    if not np.isscalar(threshold) or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, not {threshold!r}")
    fit = att_weights(result)
    var_w, sd_y = fit.var_weights, fit.sd_outcome
    if var_w == 0 or sd_y == 0:
        raise ValueError("result: the control weights or outcomes do not vary; R² is undefined")
    # bias² = ρ² R²/(1−R²) var(w) var(Y): solve for R² at the needed bias.
    a = (fit.estimate - threshold) ** 2 / (var_w * sd_y**2)
    robustness = (np.sqrt(a**2 + 4 * a) - a) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(values**2 > 0, a / (values**2 + a), np.where(a > 0, 1.0, 0.0))
    cor = float(np.corrcoef(fit.weights, fit.outcome)[0, 1]) if var_w > 0 else np.nan
    table = pd.DataFrame(
        {
            "estimate": fit.estimate,
            "var_weights": var_w,
            "sd_outcome": sd_y,
            "cor_weights_outcome": cor,
            "r2": r2,
            "robustness_value": robustness,
        },
        index=pd.Index(values, name="rho"),
    )
    table.attrs.update(
        {
            "threshold": float(threshold),
            "weights": fit.source,
            "model": "variance-based sensitivity model (Huang & Pimentel)",
        }
    )
    return table


def bias_contour(result: Any, r2: Any = None, rho: Any = None) -> pd.DataFrame:
    """Bias and adjusted ATT over a grid of the two sensitivity parameters (math §18).

    Parameters
    ----------
    result
        As in :func:`att_weights`.
    r2
        Values of R² in [0, 1); default 0 to 0.95 by 0.05 (``senseweight``'s grid).
    rho
        Correlations in [-1, 1]; default -1 to 1 by 0.05.

    Returns
    -------
    pandas.DataFrame
        One row per (R², ρ), indexed by ``point``, with ``r2``, ``rho``, ``bias`` and
        ``adjusted`` (``estimate − bias``: the ATT the ideal weights would give).
    """
    r2 = np.round(np.arange(0, 0.951, 0.05), 10) if r2 is None else np.asarray(r2, dtype=float)
    rho = np.round(np.arange(-1, 1.001, 0.05), 10) if rho is None else _check_rho(rho)
    if r2.size == 0 or not np.all((r2 >= 0) & (r2 < 1)):
        raise ValueError("r2 must be values in [0, 1)")
    fit = att_weights(result)
    grid_r2, grid_rho = (a.ravel() for a in np.meshgrid(r2, np.atleast_1d(rho), indexing="ij"))
    bias = _bias(grid_r2, grid_rho, fit.var_weights, fit.sd_outcome)
    table = pd.DataFrame(
        {"r2": grid_r2, "rho": grid_rho, "bias": bias, "adjusted": fit.estimate - bias},
        index=pd.RangeIndex(len(grid_r2), name="point"),
    )
    table.attrs.update({"estimate": fit.estimate, "weights": fit.source})
    return table


def _without(design: Design, source: str) -> Design:
    """The design without the encoded columns of one covariate (levels, indicator included)."""
    unit_keep = np.array([design.unit_sources.get(n, n) != source for n in design.unit_names])
    group_keep = np.array([design.group_sources.get(n, n) != source for n in design.group_names])
    unit_names = tuple(n for n, k in zip(design.unit_names, unit_keep, strict=True) if k)
    group_names = tuple(n for n, k in zip(design.group_names, group_keep, strict=True) if k)
    return dataclasses.replace(
        design,
        unit_matrix=design.unit_matrix[:, unit_keep] if len(unit_keep) else design.unit_matrix,
        unit_names=unit_names,
        varying=design.varying[unit_keep] if len(unit_keep) else design.varying,
        unit_scaling=design.unit_scaling.loc[list(unit_names)],
        unit_sources={n: design.unit_sources.get(n, n) for n in unit_names},
        group_matrix=(
            design.group_matrix[:, group_keep] if len(group_keep) else design.group_matrix
        ),
        group_names=group_names,
        group_scaling=design.group_scaling.loc[list(group_names)],
        group_sources={n: design.group_sources.get(n, n) for n in group_names},
    )


def _sources(design: Design) -> dict[str, str]:
    """Covariate (source column) → level, in design order."""
    out: dict[str, str] = {}
    for name in design.unit_names:
        out.setdefault(design.unit_sources.get(name, name), "unit")
    for name in design.group_names:
        out.setdefault(design.group_sources.get(name, name), "group")
    return out


def benchmark_r2(result: Any, covariates: Any = None) -> pd.DataFrame:
    """Leave-one-covariate-out benchmarks of the variance-based model (math §18).

    For each covariate the MAP weights are refitted without it (its one-hot levels and
    missingness indicator with it; the same prior scales), and the change of the weights
    ``ε_k = w − w₋ₖ`` is read as a confounder: ``R²_k = var(ε_k) / (var(w) + var(ε_k))`` and
    ``ρ_k = cor(ε_k, Y)`` over the controls. With these parameters the bias formula gives
    exactly ``estimate_without − estimate``: an omitted confounder as strong as covariate k
    would move the ATT by as much as leaving k out does.

    Parameters
    ----------
    result
        A :class:`~hierps.calibrated.fit.MapResult` with an outcome.
    covariates
        Covariates (model columns, before encoding) to benchmark; default all.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``covariate``, with ``level`` (unit or group), ``estimate`` (the full
        fit's ATT), ``estimate_without``, ``change``, ``r2``, ``rho``, ``bias`` (the formula at
        ``r2``, ``rho``; equal to ``change``), ``adjusted`` (``estimate − bias``: the ATT if a
        confounder like k were still missing) and ``strength_to_explain_away``
        (``estimate / bias``: how many times as strong as k, in bias, a confounder must be to
        explain the ATT away; ``senseweight``'s MRCS).
    """
    from hierps.calibrated.fit import fit_map

    hyperparameters = getattr(result, "hyperparameters", None)
    if hyperparameters is None or getattr(result, "idata", None) is not None:
        raise TypeError(
            f"result must be a MapResult (benchmarks refit its weights), not "
            f"{type(result).__name__}"
        )
    design = result.design
    full = att_weights(result)
    sources = _sources(design)
    if covariates is None:
        chosen = list(sources)
    else:
        chosen = [covariates] if isinstance(covariates, str) else list(covariates)
        unknown = [c for c in chosen if c not in sources]
        if unknown:
            raise ValueError(
                f"covariates: {unknown} are not covariates of the model (have {list(sources)})"
            )
    scales = hyperparameters.as_dict()
    rows = []
    for covariate in chosen:
        reduced = _without(design, covariate)
        options = dict(scales)
        if np.ndim(options["sigma_beta"]) > 0:  # one scale per varying slope: drop k's
            kept = [design.unit_sources.get(n, n) != covariate for n in design.unit_names]
            options["sigma_beta"] = np.asarray(options["sigma_beta"])[
                np.asarray(kept)[design.varying]
            ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HierpsWarning)
            refit = fit_map(reduced, **options)
        without = _att_weights(reduced, refit.relative_weights.to_numpy(), "MAP weights")
        epsilon = full.weights - without.weights
        var_eps = float(np.var(epsilon))
        r2 = var_eps / (full.var_weights + var_eps)
        rho = (
            float(np.corrcoef(epsilon, full.outcome)[0, 1])
            if var_eps > 0 and full.sd_outcome > 0
            else 0.0
        )
        bias = float(_bias(r2, rho, full.var_weights, full.sd_outcome))
        rows.append(
            {
                "covariate": covariate,
                "level": sources[covariate],
                "estimate": full.estimate,
                "estimate_without": without.estimate,
                "change": without.estimate - full.estimate,
                "r2": r2,
                "rho": rho,
                "bias": bias,
                "adjusted": full.estimate - bias,
                "strength_to_explain_away": full.estimate / bias if bias != 0 else np.inf,
            }
        )
    table = pd.DataFrame(rows).set_index("covariate")
    table.attrs.update({"weights": full.source, "refit": "MAP, the full fit's prior scales"})
    return table
