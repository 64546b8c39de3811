"""The one PyMC definition of the hierarchical logistic propensity model (both modes).

The likelihood is evaluated on *covariate patterns* rather than on units: units of one group
with identical covariate rows share their linear predictor ``η``, so the Bernoulli
log-likelihood of the ``m`` units of a pattern, ``k`` of them treated, is
``k·η − m·log(1 + exp(η))`` and the calibrated loss is ``(m − k)·exp(η) − k·η``. Both are
exactly the per-unit sums, regrouped. With discrete covariates a group has few patterns
(learning mindsets: 10,391 students, 1,434 patterns), and every gradient evaluation of the
sampler touches patterns instead of units; with continuous covariates every unit is its own
pattern and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from hierps.design.build import Design
from hierps.design.hyperparameters import FIXED_SCALE_DEFAULTS, HYPERPRIOR_SCALES, check_fixed
from hierps.exceptions import ArgumentError
from hierps.pymc_coding import (
    CODINGS,
    Coding,
    coding_of,
    identified_deviations,
    identified_normal,
)
from hierps.pymc_deviations import check_deviations, structured_deviations

__all__ = ["LOSSES", "Patterns", "build_pymc", "compress", "coords_of", "pattern_data"]

LOSSES = ("bernoulli", "calibrated")


@dataclass(frozen=True)
class Patterns:
    """The units of a design collapsed to distinct (group, covariate row) patterns.

    Patterns are sorted by group, then by covariate row.

    Attributes
    ----------
    group
        ``(p,)`` group code of each pattern.
    design
        ``(p, k)`` the covariate row shared by the pattern's units.
    units
        ``(p,)`` number of units with the pattern (≥ 1).
    treated
        ``(p,)`` number of them that are treated.
    of_unit
        ``(n,)`` the pattern of every unit, so ``design[of_unit]`` is the unit matrix.
    """

    group: np.ndarray
    design: np.ndarray
    units: np.ndarray
    treated: np.ndarray
    of_unit: np.ndarray

    @property
    def controls(self) -> np.ndarray:
        """``(p,)`` number of control units with the pattern."""
        return self.units - self.treated

    def __len__(self) -> int:
        return len(self.group)


def compress(design: Design) -> Patterns:
    """Collapse the units of ``design`` into (group, covariate row) patterns with counts.

    Rows are matched exactly (no rounding): standardizing maps equal raw values to equal
    floats, so units that share a raw covariate row always share a pattern.
    """
    key = np.column_stack([design.group_codes.astype(float), design.unit_matrix])
    # np.unique sorts the rows, so the patterns come out grouped by group code.
    rows, of_unit = np.unique(key, axis=0, return_inverse=True)
    of_unit = of_unit.reshape(-1)
    units = np.bincount(of_unit, minlength=len(rows))
    treated = np.bincount(of_unit, weights=design.treatment, minlength=len(rows))
    return Patterns(
        group=rows[:, 0].astype("int64"),
        design=np.ascontiguousarray(rows[:, 1:]),
        units=units.astype("int64"),
        treated=np.rint(treated).astype("int64"),
        of_unit=of_unit.astype("int64"),
    )


def pattern_data(design: Design) -> dict[str, np.ndarray]:
    """Values of every ``pm.Data`` container of :func:`build_pymc` for ``design``.

    Pass them to ``pm.set_data(pattern_data(new_design), coords=coords_of(new_design))`` to
    reuse a built model on other data with the same groups and covariates: the likelihood
    reads the pattern containers, which must change together with the unit containers. (The
    identified coding of categorical covariates is built from the first design's column
    scales; on other data it remains a valid model but not exactly that coding.)
    """
    patterns = compress(design)
    values = {
        "group_index": design.group_codes,
        "treatment": design.treatment.astype("int64"),
        "pattern_group": patterns.group,
        "pattern_units": patterns.units,
        "pattern_treated": patterns.treated,
    }
    if design.base_weights is not None:
        values.update(_weighted_counts(design, patterns))
    if len(design.group_names) > 0:
        values["group_design"] = design.group_matrix
    if len(design.unit_names) > 0:
        values["unit_design"] = design.unit_matrix
        values["pattern_design"] = patterns.design
    return values


def _weighted_counts(design: Design, patterns: Patterns) -> dict[str, np.ndarray]:
    """Σ b over each pattern's units and over its treated units (base weights ``b``)."""
    base = design.unit_weights
    n = len(patterns)
    return {
        "pattern_unit_weight": np.bincount(patterns.of_unit, weights=base, minlength=n),
        "pattern_treated_weight": np.bincount(
            patterns.of_unit, weights=base * design.treatment, minlength=n
        ),
    }


def coords_of(design: Design, patterns: Patterns | None = None) -> dict[str, list]:
    """The named dimensions shared by the PyMC model, the MAP result and the posterior.

    ``pattern`` (numbered from 0) is the likelihood's dimension; pass the design's
    :class:`Patterns` when they are at hand, otherwise they are computed.
    """
    n_patterns = len(patterns if patterns is not None else compress(design))
    coords = {
        "group": list(design.groups),
        "unit_covariate": list(design.unit_names),
        "varying_covariate": list(design.varying_names),
        "group_covariate": list(design.group_names),
        # A design whose units stay on a cluster (hierps.scale) has cells but no `obs`.
        "obs": list(design.index) if hasattr(design, "index") else None,
        "pattern": list(range(n_patterns)),
    }
    return {name: values for name, values in coords.items() if values is not None}


def _coefficients(
    model: pm.Model, name: str, scale: float, blocks: Coding | None, level: str
) -> pt.TensorVariable:
    """Normal coefficients of the ``level`` ("unit" or "group") covariates; with categorical
    blocks, each block's levels in the identified coding (see
    :func:`hierps.pymc_coding.identified_normal`)."""
    dim = f"{level}_covariate"
    level_blocks = [] if blocks is None else getattr(blocks, level)
    if not level_blocks:
        return pm.Normal(name, 0.0, scale, dims=dim)
    model.add_coord(f"{level}_contrast", getattr(blocks, f"{level}_free"))
    n = len(model.coords[dim])
    return identified_normal(name, scale, n, level_blocks, dims=(dim, f"{level}_contrast"))


def build_pymc(
    design: Design,
    loss: str = "bernoulli",
    coding: str | None = None,
    patterns: Patterns | None = None,
    deviations: str = "normal",
    rank: int | None = None,
    **fixed: float,
) -> pm.Model:
    """Build the hierarchical logistic propensity model in PyMC.

    ::

        logit π_i = alpha[j] + x_i' beta[j]
        alpha_j   = intercept + v_j' gamma + sigma_alpha · alpha_offset_j
        beta_jk   = mu_beta_k + sigma_beta_k · beta_offset_jk   (varying slopes only)

    Non-centred; the offsets are standard normal. Data live in ``pm.Data`` containers: the
    unit-level ``group_index``, ``treatment`` and ``unit_design`` (dim ``obs``) record the
    sample and land in ``constant_data``; the likelihood reads their compressed form,
    ``pattern_group``, ``pattern_design``, ``pattern_units`` and ``pattern_treated`` (dim
    ``pattern``, see :func:`compress`). To reuse a compiled model on other data, set them all
    with :func:`pattern_data`.

    Parameters
    ----------
    design
        The validated design.
    loss
        ``"bernoulli"``: the treatment is Bernoulli(π) (posterior mode); the observed
        variable ``treated`` is the number of treated units of each pattern, with the
        log-likelihood ``Σ_i [T_i log π_i + (1 − T_i) log(1 − π_i)]`` of the units (no
        binomial coefficients), and a Binomial for prior and posterior predictive draws.
        ``"calibrated"``: the likelihood is replaced by the calibrated loss
        ``Σ_controls exp(η) − Σ_treated η`` as a ``pm.Potential``; the mode of this model
        gives the balancing weights ``exp(η)`` of the controls.
        With base weights in the design, every unit's term is multiplied by its weight (a
        pseudo-likelihood, as a ``pm.Potential`` named ``weighted_likelihood`` or
        ``calibrated_loss``; no predictive draws).
    patterns
        The design's :class:`Patterns`, when computed elsewhere (a Dask design's cells,
        :func:`hierps.scale.dask_cells.cells_of`); the unit-level containers are then left
        out if the design holds no unit rows.
    coding
        How categorical covariates enter. ``"identified"`` (default with the Bernoulli
        likelihood): every level keeps its coefficient in ``mu_beta``, ``gamma`` and ``beta``,
        but only the ``K − 1`` coordinates a categorical's levels identify are sampled
        (``mu_beta_contrast``, ``gamma_contrast``, and ``beta_offset`` over
        ``varying_contrast``); for fixed scales every propensity has exactly the
        distribution it has under the all-levels model (see :mod:`hierps.design.coding`).
        With the hyperprior, ``sigma_beta`` has one entry per varying covariate (dim
        ``varying_scale``): a categorical's levels share one, the SD of the group deviations
        of every level on the logit scale. ``"full"`` (default with the calibrated loss):
        independent coefficients and scales for all levels, the parameterization the MAP
        solver works in. Designs without categorical covariates are the same either way.
    deviations
        The prior of the group slope deviations ``beta_j − mu_beta``: ``"normal"`` (above),
        ``"laplace"`` (sparse: Laplace with scale ``sigma_beta``) or ``"low_rank"`` (a
        ``rank``-factor model; with the calibrated loss the nuclear-norm penalty of the MAP);
        see :mod:`hierps.pymc_deviations`. Not with categorical varying slopes in the
        identified coding.
    rank
        The number of factors ``K`` of ``deviations="low_rank"`` (1 to the number of varying
        slopes).
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
        raise ArgumentError(f"loss={loss!r} is not one of {', '.join(LOSSES)}")
    if coding is None:
        coding = "identified" if loss == "bernoulli" else "full"
    if coding not in CODINGS:
        raise ArgumentError(f"coding={coding!r} is not one of {', '.join(CODINGS)}")
    # A Dask design keeps its unit rows on the workers, where the identified coding's column
    # statistics are not available: its posterior codes every level (docs/scale.md §5).
    identified = coding == "identified" and hasattr(design, "unit_matrix")
    blocks = coding_of(design) if identified else None
    varying_index = np.flatnonzero(design.varying)
    rank = check_deviations(deviations, rank, len(varying_index))
    if deviations != "normal" and blocks is not None and blocks.varying:
        raise ArgumentError(
            f"deviations={deviations!r} with categorical varying slopes needs coding='full' "
            f"(the identified coding is built for normal deviations)"
        )
    values = check_fixed(fixed, len(varying_index))
    scales = {**FIXED_SCALE_DEFAULTS, **values}
    patterns = compress(design) if patterns is None else patterns
    coords = coords_of(design, patterns)
    n_groups, n_unit = len(design.groups), len(design.unit_names)
    has_group_covariates = len(design.group_names) > 0
    unit_level = "obs" in coords

    with pm.Model(coords=coords) as model:
        # The unit-level record; the likelihood below reads the pattern containers.
        if unit_level:
            pm.Data("group_index", design.group_codes, dims="obs")
            pm.Data("treatment", design.treatment.astype("int64"), dims="obs")
        pattern_group = pm.Data("pattern_group", patterns.group, dims="pattern")
        pattern_units = pm.Data("pattern_units", patterns.units, dims="pattern")
        pattern_treated = pm.Data("pattern_treated", patterns.treated, dims="pattern")

        intercept = pm.Normal("intercept", 0.0, scales["sigma_intercept"])
        group_mean = intercept
        if has_group_covariates:
            group_design = pm.Data(
                "group_design", design.group_matrix, dims=("group", "group_covariate")
            )
            gamma = _coefficients(model, "gamma", scales["sigma_gamma"], blocks, "group")
            # A broadcast product summed, not pt.dot: numba lowers Dot to a BLAS call whose
            # wrapper code is large, and nutpie re-links and re-optimizes the whole logp
            # graph in every process, so Dot alone costs seconds of compilation per fit.
            group_mean = intercept + (group_design * gamma).sum(axis=-1)
        sigma_alpha = _scale(values, "sigma_alpha", dims=None)
        alpha_offset = pm.Normal("alpha_offset", 0.0, 1.0, dims="group")
        alpha = pm.Deterministic("alpha", group_mean + sigma_alpha * alpha_offset, dims="group")
        eta = alpha[pattern_group]

        if n_unit > 0:
            if unit_level:
                pm.Data("unit_design", design.unit_matrix, dims=("obs", "unit_covariate"))
            pattern_design = pm.Data(
                "pattern_design", patterns.design, dims=("pattern", "unit_covariate")
            )
            mu_beta = _coefficients(model, "mu_beta", scales["sigma_mu_beta"], blocks, "unit")
            if len(varying_index) > 0 and deviations != "normal":
                scaled = structured_deviations(
                    model, deviations, loss, values, len(varying_index), rank
                )
            elif len(varying_index) > 0:
                if blocks is not None and blocks.varying and "sigma_beta" not in values:
                    # One scale per covariate; a categorical's is the SD of the level deviations
                    # on the logit scale (see hierps.pymc_coding.Coding).
                    model.add_coord("varying_scale", blocks.varying_scales)
                    shared = pm.HalfNormal(
                        "sigma_beta", HYPERPRIOR_SCALES["sigma_beta"], dims="varying_scale"
                    )
                    sigma_beta = shared[blocks.scale_index] * blocks.scale_multiplier
                else:
                    sigma_beta = _scale(values, "sigma_beta", dims="varying_covariate")
                if blocks is not None and blocks.varying:
                    model.add_coord("varying_contrast", blocks.varying_free)
                    beta_offset = pm.Normal(
                        "beta_offset", 0.0, 1.0, dims=("group", "varying_contrast")
                    )
                    scaled = identified_deviations(
                        beta_offset, sigma_beta, len(varying_index), blocks.varying
                    )
                else:
                    beta_offset = pm.Normal(
                        "beta_offset", 0.0, 1.0, dims=("group", "varying_covariate")
                    )
                    scaled = sigma_beta * beta_offset
            if len(varying_index) == n_unit:
                # Every slope varies: no scatter into a zero matrix (a smaller gradient graph).
                beta_value = mu_beta + scaled
            elif len(varying_index) > 0:
                deviation = pt.zeros((n_groups, n_unit))
                deviation = pt.set_subtensor(deviation[:, varying_index], scaled)
                beta_value = mu_beta + deviation
            else:
                beta_value = pt.broadcast_to(mu_beta, (n_groups, n_unit))
            beta = pm.Deterministic("beta", beta_value, dims=("group", "unit_covariate"))
            eta = eta + (pattern_design * beta[pattern_group]).sum(axis=-1)

        if design.base_weights is not None:
            # Base weights make the likelihood a pseudo-likelihood: every unit's term times
            # its weight, i.e. the pattern formulas with weighted counts. It is a Potential
            # (no predictive draws): weighted counts are not counts.
            counts = _weighted_counts(design, patterns)
            unit_weight = pm.Data(
                "pattern_unit_weight", counts["pattern_unit_weight"], dims="pattern"
            )
            treated_weight = pm.Data(
                "pattern_treated_weight", counts["pattern_treated_weight"], dims="pattern"
            )
            if loss == "bernoulli":
                pm.Potential(
                    "weighted_likelihood",
                    _bernoulli_units_logp(treated_weight, eta, unit_weight).sum(),
                )
            else:
                controls = unit_weight - treated_weight
                safe_eta = pt.switch(pt.gt(controls, 0), eta, 0.0)
                pm.Potential(
                    "calibrated_loss",
                    -((controls * pt.exp(safe_eta)).sum() - (treated_weight * eta).sum()),
                )
        elif loss == "bernoulli":
            pm.CustomDist(
                "treated",
                eta,
                pattern_units,
                dist=_binomial,
                logp=_bernoulli_units_logp,
                observed=pattern_treated,
                dims="pattern",
            )
        else:
            controls = pattern_units - pattern_treated
            # exp of η only where the pattern has controls: a pattern of treated units only
            # may have η large enough for exp(η) to overflow, and 0 · inf is NaN in the
            # value and in the gradient alike.
            safe_eta = pt.switch(pt.gt(controls, 0), eta, 0.0)
            pm.Potential(
                "calibrated_loss",
                -((controls * pt.exp(safe_eta)).sum() - (pattern_treated * eta).sum()),
            )
    return model


def _bernoulli_units_logp(
    treated: pt.TensorVariable, eta: pt.TensorVariable, units: pt.TensorVariable
) -> pt.TensorVariable:
    """Σ over a pattern's units of the Bernoulli log-likelihood: ``k·η − m·log(1 + e^η)``.

    ``log π = η − log(1 + e^η)`` and ``log(1 − π) = −log(1 + e^η)``, so the ``k`` treated and
    ``m − k`` control units add up to this; unlike the Binomial log-pmf it has no
    ``log C(m, k)``, so the model's density is the per-unit Bernoulli density exactly.
    """
    return treated * eta - units * pt.softplus(eta)


def _binomial(
    eta: pt.TensorVariable, units: pt.TensorVariable, size: tuple[int, ...] | None
) -> pt.TensorVariable:
    """Random draws of the treated count of each pattern (prior and posterior predictive)."""
    return pm.Binomial.dist(n=units, logit_p=eta, size=size)


def _scale(values: dict, name: str, dims: str | None) -> pt.TensorVariable | float:
    if name in values:
        value = values[name]
        return value if np.ndim(value) == 0 else pt.as_tensor_variable(np.asarray(value))
    return pm.HalfNormal(name, HYPERPRIOR_SCALES[name], dims=dims)
