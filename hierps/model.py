"""The one PyMC definition of the hierarchical logistic propensity model (both modes)."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from hierps.data import Design
from hierps.hyperparameters import FIXED_SCALE_DEFAULTS, HYPERPRIOR_SCALES, check_fixed

__all__ = ["LOSSES", "build_pymc", "coords_of"]

LOSSES = ("bernoulli", "calibrated")


def coords_of(design: Design) -> dict[str, list]:
    """The named dimensions shared by the PyMC model, the MAP result and the posterior."""
    return {
        "group": list(design.groups),
        "unit_covariate": list(design.unit_names),
        "varying_covariate": list(design.varying_names),
        "group_covariate": list(design.group_names),
        "obs": list(design.index),
    }


def build_pymc(design: Design, loss: str = "bernoulli", **fixed: float) -> pm.Model:
    """Build the hierarchical logistic propensity model in PyMC.

    ::

        logit π_i = alpha[j] + x_i' beta[j]
        alpha_j   = intercept + v_j' gamma + sigma_alpha · alpha_offset_j
        beta_jk   = mu_beta_k + sigma_beta_k · beta_offset_jk   (varying slopes only)

    Non-centred; the offsets are standard normal. Data live in ``pm.Data`` containers so a
    compiled model can be reused with ``pm.set_data``.

    Parameters
    ----------
    design
        The validated design.
    loss
        ``"bernoulli"``: the treatment is Bernoulli(π) (posterior mode).
        ``"calibrated"``: the likelihood is replaced by the calibrated loss
        ``Σ_controls exp(η) − Σ_treated η`` as a ``pm.Potential``; the mode of this model
        gives the balancing weights ``exp(η)`` of the controls.
    **fixed
        Hyperparameters to fix at a number: ``sigma_alpha``, ``sigma_beta`` (one number or
        one per varying slope), ``sigma_intercept``, ``sigma_gamma``, ``sigma_mu_beta``.
        ``sigma_alpha`` and ``sigma_beta`` left out get half-normal hyperpriors; the other
        three are fixed scales with defaults ``2.5, 1, 1``.

    Returns
    -------
    pymc.Model
    """
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not one of {', '.join(LOSSES)}")
    varying_index = np.flatnonzero(design.varying)
    values = check_fixed(fixed, len(varying_index))
    scales = {**FIXED_SCALE_DEFAULTS, **values}
    coords = coords_of(design)
    has_group_covariates = len(design.group_names) > 0
    has_unit_covariates = len(design.unit_names) > 0
    has_varying = len(varying_index) > 0

    with pm.Model(coords=coords) as model:
        group_index = pm.Data("group_index", design.group_codes, dims="obs")
        treatment = pm.Data("treatment", design.treatment.astype("int64"), dims="obs")

        intercept = pm.Normal("intercept", 0.0, scales["sigma_intercept"])
        group_mean = intercept
        if has_group_covariates:
            group_design = pm.Data(
                "group_design", design.group_matrix, dims=("group", "group_covariate")
            )
            gamma = pm.Normal("gamma", 0.0, scales["sigma_gamma"], dims="group_covariate")
            group_mean = intercept + pt.dot(group_design, gamma)
        sigma_alpha = _scale(values, "sigma_alpha", dims=None)
        alpha_offset = pm.Normal("alpha_offset", 0.0, 1.0, dims="group")
        alpha = pm.Deterministic("alpha", group_mean + sigma_alpha * alpha_offset, dims="group")
        eta = alpha[group_index]

        if has_unit_covariates:
            unit_design = pm.Data("unit_design", design.unit_matrix, dims=("obs", "unit_covariate"))
            mu_beta = pm.Normal("mu_beta", 0.0, scales["sigma_mu_beta"], dims="unit_covariate")
            if has_varying:
                sigma_beta = _scale(values, "sigma_beta", dims="varying_covariate")
                beta_offset = pm.Normal(
                    "beta_offset", 0.0, 1.0, dims=("group", "varying_covariate")
                )
                deviation = pt.zeros((len(design.groups), len(design.unit_names)))
                deviation = pt.set_subtensor(deviation[:, varying_index], sigma_beta * beta_offset)
                beta = pm.Deterministic(
                    "beta", mu_beta + deviation, dims=("group", "unit_covariate")
                )
            else:
                beta = pm.Deterministic(
                    "beta",
                    pt.broadcast_to(mu_beta, (len(design.groups), len(design.unit_names))),
                    dims=("group", "unit_covariate"),
                )
            eta = eta + (unit_design * beta[group_index]).sum(axis=-1)

        if loss == "bernoulli":
            pm.Bernoulli("treated", logit_p=eta, observed=treatment, dims="obs")
        else:
            # switch, not (1 - t) * exp(eta): a treated unit's exp(eta) may overflow to inf.
            control_odds = pt.switch(pt.eq(treatment, 1), 0.0, pt.exp(eta))
            pm.Potential("calibrated_loss", -(control_odds.sum() - (treatment * eta).sum()))
    return model


def _scale(values: dict, name: str, dims: str | None) -> pt.TensorVariable | float:
    if name in values:
        value = values[name]
        return value if np.ndim(value) == 0 else pt.as_tensor_variable(np.asarray(value))
    return pm.HalfNormal(name, HYPERPRIOR_SCALES[name], dims=dims)
