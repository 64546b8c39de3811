"""Sampler diagnostics drawn by ArviZ: trace and rank plots of the hyperparameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from hierps.exceptions import ArgumentError
from hierps.mcmc.diagnosis import idata_of

__all__ = ["plot_trace"]


def plot_trace(
    result: Any,
    var_names: Sequence[str] = ("sigma_alpha", "sigma_beta", "intercept"),
    kind: str = "trace",
) -> tuple[Figure, np.ndarray]:
    """Trace (or rank) plots of the hyperparameters, drawn by ArviZ.

    Parameters
    ----------
    result
        A posterior result (with ``.idata``) or its DataTree.
    var_names
        Posterior variables to show; those not in the posterior (a scale fixed at a number)
        are skipped.
    kind
        ``"trace"``: marginal densities and traces per chain (``arviz.plot_trace_dist``);
        ``"rank"``: fractional-rank ECDF differences per chain (``arviz.plot_rank_dist``).

    Returns
    -------
    (matplotlib.figure.Figure, numpy.ndarray of Axes)
    """
    import arviz as az

    idata = idata_of(result)
    posterior = idata["posterior"]
    present = [name for name in var_names if name in posterior.data_vars]
    if not present:
        raise ArgumentError(
            f"none of {list(var_names)} is in the posterior (fixed scales are not sampled); "
            f"it has {sorted(map(str, posterior.data_vars))}"
        )
    plotters = {"trace": az.plot_trace_dist, "rank": az.plot_rank_dist}
    if kind not in plotters:
        raise ArgumentError(f"kind={kind!r} is not one of 'trace', 'rank'")
    collection = plotters[kind](idata, var_names=present, backend="matplotlib")
    figure = collection.viz["figure"].item()
    return figure, np.asarray(figure.axes)
