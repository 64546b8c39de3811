"""Choosing MAP hyperparameters: the pooling path from complete to no pooling."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hierps.balance.statistics import INTERCEPT
from hierps.calibrated.deviations import CRITERIA, imposed_criterion
from hierps.calibrated.fit import MapResult
from hierps.exceptions import ArgumentError, ArgumentTypeError, HierpsWarning
from hierps.model import Model

__all__ = ["DEFAULT_SIGMA_BETA_GRID", "pooling_path"]

#: From (almost) complete pooling to (almost) no pooling, on the standardized logit scale.
DEFAULT_SIGMA_BETA_GRID = tuple(np.geomspace(0.01, 100.0, 13))


def pooling_path(
    model: Model,
    sigma_beta: Sequence[float] = DEFAULT_SIGMA_BETA_GRID,
    sigma_alpha: float | str | None = None,
    sigma_mu_beta: float | None = None,
    sigma_gamma: float | None = None,
    sigma_intercept: float | None = None,
    auto: bool = False,
    estimand: str = "att",
    deviations: str = "normal",
) -> pd.DataFrame:
    """Refit the MAP weights along a grid of ``sigma_beta``, warm-starting each fit.

    Small ``sigma_beta`` pools the slopes completely (global balance only); large
    ``sigma_beta`` lets every group balance on its own, at the price of effective sample size.

    Parameters
    ----------
    model
        The model to fit.
    sigma_beta
        Grid of values (fitted in increasing order).
    sigma_alpha, sigma_mu_beta, sigma_gamma, sigma_intercept
        Held fixed along the path (defaults as in :meth:`Model.fit_map`); ``sigma_alpha``
        may be ``"auto"`` (estimated once, at the empirical-Bayes ``sigma_beta``).
    auto
        Also fit the empirical-Bayes ``sigma_beta`` (``fit_map(sigma_beta="auto")``): its
        row is added to the grid and flagged in the ``auto`` column, and ``attrs["auto"]``
        records the chosen scales and how they were found.
    estimand
        The estimand of the fits (``"att"``, ``"atc"`` or ``"ate"``).
    deviations
        The prior of the slope deviations (``"normal"``, ``"laplace"`` or ``"low_rank"``;
        see :func:`hierps.calibrated.fit.fit_map`).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``sigma_beta``: ``global_max_smd`` (largest |SMD| over covariates after
        weighting), ``within_mean_smd`` and ``within_max_smd`` (mean and largest |SMD| over
        groups × covariates), ``ess`` (Kish ESS of all control weights), ``min_group_ess``,
        ``att`` (``atc``, ``ate``: the overall effect, when the model has an outcome),
        ``iterations`` and, with ``auto=True``, ``auto``. With Laplace or low-rank
        deviations also ``imposed_value`` and ``imposed_bound``: the within-group criterion
        the prior imposed (largest |imbalance|, or the spectral norm of the imbalance matrix,
        on the standardized scale) and its bound ``1/sigma_beta`` (the first weighted arm's;
        ``attrs["criterion"]`` names it).
    """
    if isinstance(sigma_beta, str | bytes) or not all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in np.ravel(np.asarray(sigma_beta, dtype=object))
    ):
        raise ArgumentTypeError(
            f"sigma_beta must be a list of positive numbers, not {sigma_beta!r}"
        )
    if not hasattr(model, "fit_map"):
        raise ArgumentTypeError(f"model must be a hierps.Model, not {type(model).__name__}")
    grid = np.sort(np.asarray(sigma_beta, dtype=float))
    if grid.ndim != 1 or len(grid) == 0 or np.any(grid <= 0) or not np.all(np.isfinite(grid)):
        raise ArgumentError(
            f"sigma_beta must be a non-empty list of positive numbers, not {sigma_beta}"
        )
    fixed = dict(
        sigma_alpha=sigma_alpha,
        sigma_mu_beta=sigma_mu_beta,
        sigma_gamma=sigma_gamma,
        sigma_intercept=sigma_intercept,
    )
    selection = None
    if auto or sigma_alpha == "auto":
        from hierps.calibrated.empirical_bayes import estimate_scales

        names = [
            name
            for name, wanted in (("sigma_alpha", sigma_alpha == "auto"), ("sigma_beta", auto))
            if wanted
        ]
        held = {k: v for k, v in fixed.items() if v is not None and k != "sigma_alpha"}
        if sigma_alpha != "auto" and sigma_alpha is not None:
            held["sigma_alpha"] = sigma_alpha
        selection = estimate_scales(model.design, names, **held)
        if "sigma_alpha" in selection.scales:
            fixed["sigma_alpha"] = selection.scales["sigma_alpha"]
        if "sigma_beta" in selection.scales:
            grid = np.unique(np.r_[grid, selection.scales["sigma_beta"]])
    rows = []
    previous: MapResult | None = None
    for value in grid:
        with warnings.catch_warnings():
            # Extreme-weight warnings are expected towards no pooling; the ESS columns show it.
            warnings.simplefilter("ignore", HierpsWarning)
            fit = model.fit_map(
                sigma_beta=float(value),
                init=previous,
                estimand=estimand,
                deviations=deviations,
                **fixed,
            )
        previous = fit
        balance = fit.balance()
        covariates = balance[balance["covariate"] != INTERCEPT]
        overall = covariates[covariates["scope"] == "global"]
        within = covariates[covariates["scope"] == "group"]["smd_after"].abs()
        row = {
            "sigma_beta": value,
            "global_max_smd": overall["smd_after"].abs().max(),
            "within_mean_smd": within.mean(),
            "within_max_smd": within.max(),
            "ess": fit.ess,
            "min_group_ess": fit.group_ess.min(),
            "iterations": fit.iterations,
        }
        imposed = imposed_criterion(fit)
        if imposed is not None:
            row["imposed_value"] = float(imposed["value"].iloc[0])
            row["imposed_bound"] = float(imposed["bound"].iloc[0])
        if model.design.outcome is not None:
            row[estimand] = fit.overall_effect
        if selection is not None and "sigma_beta" in selection.scales:
            row["auto"] = bool(value == selection.scales["sigma_beta"])
        rows.append(row)
    table = pd.DataFrame(rows).set_index("sigma_beta")
    table.attrs["fixed"] = {k: v for k, v in fixed.items() if v is not None}
    table.attrs["deviations"] = deviations
    if deviations != "normal":
        table.attrs["criterion"] = CRITERIA[deviations]
    if selection is not None:
        table.attrs["auto"] = selection.as_dict()
    return table
