"""MAP weights next to the full posterior: does the balancing-weights point sit in the interval?"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hierps.exceptions import ArgumentError, ArgumentTypeError

if TYPE_CHECKING:
    from hierps.calibrated.fit import MapResult
    from hierps.posterior.result import PosteriorResult

__all__ = ["compare"]


def compare(map_result: MapResult, posterior_result: PosteriorResult) -> pd.DataFrame:
    """Group effects of a MAP fit and of a posterior of the same estimand, side by side.

    Parameters
    ----------
    map_result
        A :class:`hierps.calibrated.fit.MapResult` (``Model.fit_map``).
    posterior_result
        A :class:`hierps.posterior.result.PosteriorResult` of the same data and the same estimand
        (``Model.sample(estimand=...)``: ATT, ATC or ATE).

    Returns
    -------
    pandas.DataFrame
        One row per group: ``map`` (the MAP group effect), ``posterior_mean``, ``lower`` and
        ``upper`` (the posterior's equal-tailed interval, 90 % by default) and
        ``map_in_interval`` (nullable boolean; ``<NA>`` where either effect is NaN).
        ``attrs`` holds ``weight_correlation``, the Pearson correlation over the reweighted
        units (controls for the ATT, treated for the ATC, all for the ATE) of the MAP weights
        with the posterior-mean weights, ``ci_prob``, the posterior's ``uncertainty`` and the
        ``estimand``.
    """
    # Imported here so that `import hierps` does not pull in PyMC through this module.
    from hierps.calibrated.fit import MapResult
    from hierps.posterior.result import PosteriorResult

    if not isinstance(map_result, MapResult):
        raise ArgumentTypeError(f"map_result must be a MapResult, not {type(map_result).__name__}")
    if not isinstance(posterior_result, PosteriorResult):
        raise ArgumentTypeError(
            f"posterior_result must be a PosteriorResult, not {type(posterior_result).__name__}"
        )
    estimand = map_result.estimand
    if posterior_result.estimand != estimand:
        raise ArgumentError(
            f"the posterior estimated the {posterior_result.estimand.upper()} but the MAP "
            f"weights target the {estimand.upper()}: sample with estimand={estimand!r} or fit "
            f"the MAP with estimand={posterior_result.estimand!r}"
        )
    map_design, design = map_result.design, posterior_result.design
    same_units = map_design.index.equals(design.index) and np.array_equal(
        map_design.treatment, design.treatment
    )
    if not (same_units and map_design.groups.equals(design.groups)):
        raise ArgumentError(
            "the MAP fit and the posterior were computed on different data (their units, "
            "treatment or groups differ)"
        )

    posterior = posterior_result.group_effects
    map_catt = map_result.group_effects["estimate"].to_numpy()
    lower, upper = posterior["lower"].to_numpy(), posterior["upper"].to_numpy()
    known = np.isfinite(map_catt) & np.isfinite(lower) & np.isfinite(upper)
    inside = pd.array(np.where(known, (lower <= map_catt) & (map_catt <= upper), False))
    inside[~known] = pd.NA
    table = pd.DataFrame(
        {
            "map": map_catt,
            "posterior_mean": posterior["mean"].to_numpy(),
            "lower": lower,
            "upper": upper,
            "map_in_interval": inside,
        },
        index=design.groups,
    )
    if estimand == "att":
        controls = design.treatment == 0
    elif estimand == "atc":
        controls = design.treatment == 1
    else:
        controls = np.ones(design.n_units, dtype=bool)
    table.attrs = {
        "estimand": estimand,
        "weight_correlation": float(
            np.corrcoef(
                map_result.weights.to_numpy()[controls],
                posterior_result.weights.to_numpy()[controls],
            )[0, 1]
        ),
        "ci_prob": float(posterior_result.idata["estimands"].attrs["ci_prob"]),
        "uncertainty": posterior_result.uncertainty,
    }
    return table
