"""Structured priors of the group slope deviations in the PyMC model.

The group slopes are ``beta_j = mu_beta + delta_j`` over the varying covariates. The default
prior of the deviations, independent normals with scale ``sigma_beta``, is built in
:mod:`hierps.pymc_model`; this module builds the others (``docs/posterior.md`` §
"Structured deviations", ``docs/math.md`` §19 for the balance criterion each buys at the
MAP):

``"laplace"``
    ``delta_jk ~ Laplace(0, b)`` with ``b = sigma_beta``: most schools differ from the
    global slopes on few covariates. Under the Bernoulli likelihood it is sampled as the
    normal scale mixture ``delta = b · sqrt(2 e) · z``, ``e ~ Exponential(1)``,
    ``z ~ N(0, 1)`` (non-centred; the centred Laplace has a kink at 0 that NUTS crosses
    badly). Under the calibrated loss the model keeps the Laplace density itself, so that its
    log density is the MAP objective of ``fit_map(deviations="laplace")``.
``"low_rank"``
    Bernoulli likelihood: a ``K``-factor model ``delta_j = L f_j``, ``f_j ~ N(0, I_K)``, with
    ``L`` (varying covariates × ``K``) lower triangular with a positive diagonal — the usual
    identification of a factor model (it fixes rotation and sign): free entries
    ``N(0, s²)``, diagonal half-normal with scale ``s``; ``s = sigma_beta`` when it is fixed,
    otherwise 1, the scale of the normal deviations' hyperprior (the loadings are the scale
    of the deviations, ``Σ = L L'``; no second scale on top). Calibrated loss:
    the deviation matrix ``Δ`` itself with the nuclear-norm penalty ``‖Δ‖_* / b`` (a
    ``pm.Potential`` on a flat ``Δ``), the log density of ``fit_map(deviations="low_rank")``.
    The factor model is a posterior-mode structure; its mode is not the nuclear-norm MAP.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from hierps.design.hyperparameters import HYPERPRIOR_SCALES
from hierps.exceptions import ArgumentError, ArgumentTypeError

__all__ = ["DEVIATIONS", "check_deviations", "structured_deviations"]

#: The priors of the group slope deviations.
DEVIATIONS = ("normal", "laplace", "low_rank")
_DIMS = ("group", "varying_covariate")


def check_deviations(deviations: object, rank: object, n_varying: int) -> int | None:
    """Check ``deviations`` and ``rank`` against each other and the number of varying
    slopes; returns the rank (``None`` unless ``deviations="low_rank"``)."""
    if not isinstance(deviations, str) or deviations not in DEVIATIONS:
        valid = ", ".join(repr(name) for name in DEVIATIONS)
        raise ArgumentError(f"deviations={deviations!r} is not one of {valid}")
    if deviations != "low_rank":
        if rank is not None:
            raise ArgumentError(
                f"rank={rank!r} applies to deviations='low_rank' only, not {deviations!r}"
            )
        return None
    if n_varying == 0:
        raise ArgumentError("deviations='low_rank': the model has no varying slopes")
    if rank is None:
        raise ArgumentError(
            f"deviations='low_rank' needs rank=K, the number of factors (1 to {n_varying})"
        )
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise ArgumentTypeError(f"rank must be an integer, not {type(rank).__name__}")
    if not 1 <= rank <= n_varying:
        raise ArgumentError(
            f"rank={rank} must be between 1 and the number of varying slopes ({n_varying})"
        )
    return int(rank)


def structured_deviations(
    model: pm.Model,
    deviations: str,
    loss: str,
    values: dict,
    n_varying: int,
    rank: int | None,
) -> pt.TensorVariable:
    """The deviations ``delta`` (groups × varying covariates) under a structured prior.

    ``values`` holds the hyperparameters fixed at numbers; without ``sigma_beta`` there the
    scale ``b`` gets the half-normal hyperprior of the normal deviations (one per varying
    covariate for ``"laplace"``, one shared by the loadings for ``"low_rank"``).
    """
    if deviations == "laplace":
        scale = _scale(values, "varying_covariate")
        if loss == "calibrated":
            return pm.Laplace("beta_deviation", 0.0, scale, dims=_DIMS)
        mixing = pm.Exponential("beta_mixing", 1.0, dims=_DIMS)
        offset = pm.Normal("beta_offset", 0.0, 1.0, dims=_DIMS)
        return scale * pt.sqrt(2.0 * mixing) * offset
    if np.ndim(values.get("sigma_beta", 0.0)) > 0:
        raise ArgumentError(
            "deviations='low_rank' takes one sigma_beta (a number), not one per slope"
        )
    if loss == "calibrated":
        scale = _scale(values, None)
        deviation = pm.Flat("beta_deviation", dims=_DIMS)
        singular_values = pt.linalg.svd(deviation, compute_uv=False)
        pm.Potential("nuclear_penalty", -singular_values.sum() / scale)
        return deviation
    # The loadings carry the scale of the deviations themselves (Σ = L L'): a hyperprior on
    # sigma_beta on top of them would be a second, redundant scale (a funnel). Without a
    # fixed sigma_beta their priors have the scale of that hyperprior.
    scale = values.get("sigma_beta", HYPERPRIOR_SCALES["sigma_beta"])
    rank = 1 if rank is None else rank  # check_deviations requires it for "low_rank"
    model.add_coord("factor", np.arange(rank))
    rows, columns = np.tril_indices(n_varying, k=-1, m=rank)
    free = pm.Normal("loadings_lower", 0.0, scale, shape=len(rows))
    diagonal = pm.HalfNormal("loadings_diagonal", scale, dims="factor")
    loadings = pt.zeros((n_varying, rank))
    loadings = pt.set_subtensor(loadings[np.arange(rank), np.arange(rank)], diagonal)
    if len(rows):
        loadings = pt.set_subtensor(loadings[rows, columns], free)
    loadings = pm.Deterministic("loadings", loadings, dims=("varying_covariate", "factor"))
    scores = pm.Normal("factor_scores", 0.0, 1.0, dims=("group", "factor"))
    # A broadcast product summed, not pt.dot (numba lowers Dot to a large BLAS wrapper).
    return (scores[:, None, :] * loadings[None, :, :]).sum(axis=-1)


def _scale(values: dict, dims: str | None) -> pt.TensorVariable | float:
    if "sigma_beta" in values:
        value = values["sigma_beta"]
        return value if np.ndim(value) == 0 else pt.as_tensor_variable(np.asarray(value))
    return pm.HalfNormal("sigma_beta", HYPERPRIOR_SCALES["sigma_beta"], dims=dims)
