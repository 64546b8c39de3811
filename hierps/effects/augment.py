"""Augmented ("bias-corrected") effects: weights plus a Bayesian outcome model, per draw.

τ_j = mean_{T,j}(Y − m) − Σ_{C_j} w (Y − m) / W_j, with m the outcome model fit on the
controls (docs/math.md §13). The outcome never feeds back into the propensity model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from hierps.calibrated.fit import MapResult
from hierps.effects.outcome import OutcomeModel, augment_map, augmented_effects
from hierps.exceptions import ArgumentError, ArgumentTypeError, DataError

__all__ = ["augment"]


def _predictions(design, outcome_model: OutcomeModel | xr.DataArray) -> xr.DataArray:
    if isinstance(outcome_model, OutcomeModel):
        if not outcome_model.design.index.equals(design.index):
            raise DataError("the outcome model was fit on a different design than the result")
        return outcome_model.predictions
    return outcome_model


def augment(result, outcome_model: OutcomeModel | xr.DataArray) -> pd.DataFrame:
    """Augmented CATTs (and the ATT in ``.attrs["att"]``) of a MAP or posterior result.

    Parameters
    ----------
    result
        A :class:`~hierps.calibrated.fit.MapResult` (its weights are held fixed: the interval
        carries the outcome model's uncertainty) or a posterior result with the ATT estimand
        (its per-draw weights, and Bayesian-bootstrap weights when it used them, are
        recomputed from the stored posterior with the recorded seed and paired draw by draw
        with the outcome-model draws; see :func:`hierps.effects.outcome.pair_draws`).
    outcome_model
        A fitted :class:`~hierps.effects.outcome.OutcomeModel` of the same design
        (:func:`hierps.effects.outcome.fit_outcome_model`) or its ``predictions``.

    Returns
    -------
    pandas.DataFrame
        By group: ``mean``, ``sd``, ``lower``, ``upper`` (90 % equal-tailed) of the augmented
        CATT and ``n_treated``; ``.attrs["att"]`` holds the same for the ATT.
    """
    if isinstance(result, MapResult):
        return augment_map(result, outcome_model)
    from hierps.effects.outcome import _summarize
    from hierps.mcmc.conventions import CI_PROB
    from hierps.posterior.draws import from_idata
    from hierps.posterior.result import PosteriorResult

    if not isinstance(result, PosteriorResult):
        raise ArgumentTypeError(
            f"expected a MapResult or PosteriorResult, not {type(result).__name__}"
        )
    if result.estimand != "att":
        raise ArgumentError("augmentation is implemented for the ATT estimand")
    design = result.design
    seed = result.idata["estimands"].attrs.get("random_seed")
    redone = from_idata(
        design,
        result.idata,
        uncertainty=result.uncertainty,
        random_seed=None if seed is None else int(seed),
        store_weights=True,
    )
    weights = redone.idata["weights"]
    draws = weights["weight_draws"].stack(sample=("chain", "draw")).transpose("sample", "obs")
    control = draws.to_numpy()
    treated = None
    if "bootstrap_weight" in weights:
        bootstrap = weights["bootstrap_weight"].stack(sample=("chain", "draw"))
        bootstrap = bootstrap.transpose("sample", "obs").to_numpy()
        control, treated = control * bootstrap, bootstrap
    effects = augmented_effects(design, control, _predictions(design, outcome_model), treated)
    table = pd.DataFrame(_summarize(effects["catt"], CI_PROB), index=design.groups)
    table["n_treated"] = design.treated_per_group.astype(int)
    att = _summarize(np.asarray(effects["att"])[:, None], CI_PROB)
    table.attrs["att"] = {key: float(value[0]) for key, value in att.items()}
    table.attrs["ci_prob"] = CI_PROB
    return table
