"""Empirical-Bayes group-level scales: ``sigma_alpha`` and ``sigma_beta`` chosen by the data.

The scales of the hierarchy say how much the groups' propensity models differ. The data speak
to that through the *Bernoulli* hierarchical model (the propensity model of posterior mode):
its marginal likelihood ``p(T | σ_α, σ_β)``, with every coefficient integrated out, is largest
at the scales that best describe how the groups' treatment assignment varies. As
``lme4::glmer`` does, it is approximated by Laplace's method at the mode ``θ̂`` of the
penalized log-likelihood::

    log p(T | σ) ≈ ℓ(θ̂) − θ̂'Pθ̂/2 + log det P / 2 − log det H(θ̂) / 2

with the prior precisions ``P`` and the Hessian ``H`` of the negative log posterior. ``H`` has
the block structure of the calibrated-loss solver (one block per group for ``(u_j, δ_j)``, a
small global block and their coupling), so the mode is found by the same block Newton steps and
``log det H`` is the sum of the log determinants of the group blocks plus that of the Schur
complement. The scales maximize this approximation over ``log σ``; the calibrated-loss MAP is
then solved at them. Unlike maximizing the joint MAP over ``σ`` (which degenerates at
``σ → 0``), the marginal likelihood accounts for the volume of the coefficients it integrates
out. With base weights the log-likelihood is weighted (a pseudo-likelihood).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from hierps.calibrated.newton import (
    _BLAS,
    _factorize,
    _first_moments,
    _gradient,
    _newton_direction,
    _padded_products,
    accumulate_moments,
    group_coefficients,
)
from hierps.calibrated.problem import (
    CalibratedProblem,
    ControlLayout,
    _problem,
    lay_out_controls,
)
from hierps.design.build import Design
from hierps.design.hyperparameters import MapHyperparameters
from hierps.exceptions import ConvergenceError

__all__ = ["SCALE_BOUNDS", "ScaleSelection", "estimate_scales", "laplace_log_marginal"]

#: Range searched for each scale (logit scale per standardized covariate): from complete
#: pooling for practical purposes to no pooling for practical purposes.
SCALE_BOUNDS = (1e-3, 1e2)


@dataclass(frozen=True)
class ScaleSelection:
    """How ``"auto"`` scales were chosen.

    Attributes
    ----------
    scales
        The chosen value of each estimated scale.
    log_marginal_likelihood
        The Laplace approximation of ``log p(T | σ)`` there.
    method
        A one-line description of the method.
    evaluations
        Marginal-likelihood evaluations (each one Bernoulli mode).
    at_bound
        Scales that ended at an end of :data:`SCALE_BOUNDS` (the likelihood prefers even less
        or more pooling than the range allows).
    """

    scales: dict[str, float]
    log_marginal_likelihood: float
    method: str
    evaluations: int
    at_bound: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "log_marginal_likelihood": self.log_marginal_likelihood,
            "evaluations": self.evaluations,
            "at_bound": list(self.at_bound),
            **self.scales,
        }


@dataclass(frozen=True, eq=False)
class _BernoulliData:
    """The units collapsed to (group, covariate row) patterns with (base-weighted) counts,
    laid out like the solver's controls: padded buckets of groups of similar size, in which
    the per-group moments are batched matrix products."""

    layout: ControlLayout
    units: np.ndarray  # (n_padded,) Σ b over each pattern's units, 0 at padding
    treated: np.ndarray  # (n_padded,) Σ b over its treated units, 0 at padding


# The pattern layout of each design fitted with "auto" so far (it depends on the rows only).
_DATA: weakref.WeakKeyDictionary[Design, _BernoulliData] = weakref.WeakKeyDictionary()


def _bernoulli_data(design: Design) -> _BernoulliData:
    if design not in _DATA:
        _DATA[design] = _lay_out_patterns(design)
    return _DATA[design]


def _lay_out_patterns(design: Design) -> _BernoulliData:
    key = np.ascontiguousarray(
        np.column_stack([design.group_codes.astype(float), design.unit_matrix])
    )
    # Unique rows through a bytes view: much faster than np.unique(axis=0). The order of the
    # patterns does not matter, and rows equal as numbers but not as bytes (0.0 and -0.0)
    # merely stay two patterns: the likelihood is the same.
    as_bytes = key.view(np.dtype((np.void, key.dtype.itemsize * key.shape[1]))).ravel()
    _, first, of_unit = np.unique(as_bytes, return_index=True, return_inverse=True)
    rows = key[first]
    of_unit = of_unit.reshape(-1)
    base = design.unit_weights
    units = np.bincount(of_unit, weights=base, minlength=len(rows))
    treated = np.bincount(of_unit, weights=base * design.treatment, minlength=len(rows))
    group = rows[:, 0].astype(np.int64)
    every = np.ones(len(rows), dtype=bool)
    layout = lay_out_controls(rows[:, 1:], ~every, group, design.n_groups, weighted=every)
    padded_units = np.zeros(len(layout.padding))
    padded_units[layout.slots] = units[layout.order]
    padded_treated = np.zeros(len(layout.padding))
    padded_treated[layout.slots] = treated[layout.order]
    # The targets of the Bernoulli score: Σ k z per group (solver order).
    z = np.column_stack([np.ones(len(rows)), rows[:, 1:]])
    target = np.zeros((design.n_groups, z.shape[1]))
    np.add.at(target, group, treated[:, None] * z)
    layout = dataclasses.replace(layout, treated_moments=target[layout.group_order])
    return _BernoulliData(layout, padded_units, padded_treated)


def _bernoulli_problem(
    design: Design, data: _BernoulliData, hyperparameters: MapHyperparameters
) -> CalibratedProblem:
    from hierps.calibrated.hierarchy import hierarchical_problem

    # The priors of the MAP problem, on the layout of all patterns.
    priors = hierarchical_problem(design, hyperparameters)
    return _problem(
        data.layout,
        design.group_matrix,
        priors.local_index,
        priors.prior_global,
        priors.prior_local,
    )


def _softplus(eta: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, eta)


@dataclass
class _Mode:
    theta_global: np.ndarray
    theta_local: np.ndarray  # in the solver's group order
    log_marginal: float
    gradient: np.ndarray | None = None  # d log p(T | σ) / d log σ, one per scale asked for


def _log_scale_gradient(
    problem: CalibratedProblem,
    data: _BernoulliData,
    factorization,
    moments: np.ndarray,
    theta_local: np.ndarray,
    eta: np.ndarray,
    masks: Sequence[np.ndarray],
) -> np.ndarray:
    """The exact gradient of the Laplace approximation with respect to the log scales.

    For a scale σ_s whose prior precisions ``P_s`` are the local entries ``mask``
    (``∂P/∂ρ = −2 P_s``, ``ρ = log σ_s``)::

        dL/dρ = θ̂'P_sθ̂ − n_s + tr(H⁻¹P_s) − ½ Σ_i ℓ‴_i (g_i'θ̂_ρ) g_i'H⁻¹g_i,

    ``θ̂_ρ = 2 H⁻¹ P_s θ̂`` the move of the mode, ``ℓ‴_i = m_i π_i(1 − π_i)(1 − 2π_i)`` and
    ``g_i'H⁻¹g_i`` each pattern's leverage. Block inversion gives both the diagonal of ``H⁻¹``
    and the leverages from the group blocks ``L_j⁻¹`` and the Schur complement ``S⁻¹``:
    ``g'H⁻¹g = b'L_j⁻¹b + q'S⁻¹q`` with ``b = Bz``, ``q = A_j (z − N_j'L_j⁻¹ b)``.
    """
    local = problem.local_index
    local_inverse, schur_inverse = factorization.local_inverse, factorization.schur_inverse
    coupling = moments[:, local, :]  # N_j = B M_j (J, K, D)
    design = problem.intercept_design  # (J, 1 + p)
    # C_j = N_j A_j' (J, K, G): the coupling of group j's deviations with the globals.
    cross = np.concatenate([coupling[:, :, :1] * design[:, None, :], coupling[:, :, 1:]], axis=2)
    solved = local_inverse @ cross  # L_j⁻¹ C_j
    inverse_diagonal = np.diagonal(local_inverse, axis1=1, axis2=2) + np.sum(
        (solved @ schur_inverse) * solved, axis=2
    )
    # Leverages bucket by bucket, as batched products over each group's padded patterns.
    leverage = np.empty(len(data.units))
    for bucket in problem.buckets:
        groups = bucket.groups
        b = bucket.z[:, local, :]  # (J_b, K, width)
        t = local_inverse[groups] @ b
        r = bucket.z - np.ascontiguousarray(coupling[groups].transpose(0, 2, 1)) @ t
        q = np.concatenate([r[:, :1, :] * design[groups][:, :, None], r[:, 1:, :]], axis=1)
        leverage[bucket.rows] = (
            np.sum(b * t, axis=1) + np.sum(q * (schur_inverse @ q), axis=1)
        ).reshape(-1)
    pi = 0.5 * (1.0 + np.tanh(0.5 * eta))
    third = data.units * pi * (1.0 - pi) * (1.0 - 2.0 * pi)
    prior = problem.prior_local
    out = []
    for mask in masks:
        pulled = np.where(mask, prior * theta_local, 0.0)  # P_s θ̂ (local entries only)
        move_global, move_local = _newton_direction(
            problem, factorization, np.zeros(problem.n_global), -2.0 * pulled
        )
        move_eta = _padded_products(problem, group_coefficients(problem, move_global, move_local))
        out.append(
            float(np.sum(pulled * theta_local))
            - problem.n_groups * int(mask.sum())
            + float(np.sum(inverse_diagonal[:, mask] * prior[mask]))
            - 0.5 * float(np.sum(third * move_eta * leverage))
        )
    return np.array(out)


def _laplace(
    problem,
    data: _BernoulliData,
    start: _Mode | None,
    tol: float = 1e-7,
    masks: Sequence[np.ndarray] = (),
) -> _Mode:
    """The Bernoulli mode by damped block Newton steps, and the Laplace approximation."""
    if start is None:
        theta_global = np.zeros(problem.n_global)
        rate = data.treated.sum() / data.units.sum()
        theta_global[0] = np.log(rate / (1 - rate))
        theta_local = np.zeros((problem.n_groups, problem.n_local))
    else:
        theta_global, theta_local = start.theta_global.copy(), start.theta_local.copy()

    def penalty(theta_global, theta_local) -> float:
        return 0.5 * float(
            problem.prior_global @ theta_global**2 + np.sum(problem.prior_local * theta_local**2)
        )

    def likelihood_loss(eta) -> float:
        return float(data.units @ _softplus(eta) - data.treated @ eta)

    eta = _padded_products(problem, group_coefficients(problem, theta_global, theta_local))
    loss = likelihood_loss(eta) + penalty(theta_global, theta_local)
    scale = max(1.0, float(data.units.sum()))
    for _ in range(100):
        pi = 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic function without overflow
        first = _first_moments(problem, data.units * pi)
        gradient_global, gradient_local = _gradient(problem, theta_global, theta_local, first)
        moments = accumulate_moments(problem, data.units * pi * (1.0 - pi))
        factorization = _factorize(problem, moments)
        largest = max(
            np.abs(gradient_global).max(initial=0.0), np.abs(gradient_local).max(initial=0.0)
        )
        if largest <= tol * np.sqrt(scale):
            break
        step_global, step_local = _newton_direction(
            problem, factorization, gradient_global, gradient_local
        )
        slope = gradient_global @ step_global + np.sum(gradient_local * step_local)
        if -slope <= 1e-13 * max(1.0, abs(loss)):  # the Newton decrement is at rounding level
            break
        step_eta = _padded_products(problem, group_coefficients(problem, step_global, step_local))
        t = 1.0
        while t > 1e-10:
            trial_global = theta_global + t * step_global
            trial_local = theta_local + t * step_local
            trial_eta = eta + t * step_eta
            trial = likelihood_loss(trial_eta) + penalty(trial_global, trial_local)
            if trial <= loss + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        theta_global, theta_local, eta, loss = trial_global, trial_local, trial_eta, trial
    else:
        raise ConvergenceError("the Bernoulli mode of the empirical-Bayes step did not converge")
    # log det H = Σ_j log det L_j + log det S: from the inverses the factorization keeps.
    log_det = -np.linalg.slogdet(factorization.schur_inverse)[1]
    if problem.n_local:
        log_det -= np.linalg.slogdet(factorization.local_inverse)[1].sum()
    log_det_prior = (
        np.log(problem.prior_global).sum() + problem.n_groups * np.log(problem.prior_local).sum()
    )
    log_marginal = -loss + 0.5 * log_det_prior - 0.5 * log_det
    gradient = None
    if masks:
        gradient = _log_scale_gradient(
            problem, data, factorization, moments, theta_local, eta, masks
        )
    return _Mode(theta_global, theta_local, float(log_marginal), gradient)


def laplace_log_marginal(design: Design, **scales: float) -> float:
    """The Laplace approximation of ``log p(T | scales)`` of the Bernoulli model.

    ``scales`` are the prior scales of :class:`~hierps.design.hyperparameters.MapHyperparameters`
    (defaults for those left out).
    """
    hyperparameters = MapHyperparameters.from_user(int(design.varying.sum()), **scales)
    data = _bernoulli_data(design)
    with _BLAS.limit(limits=1, user_api="blas"):
        return _laplace(_bernoulli_problem(design, data, hyperparameters), data, None).log_marginal


def estimate_scales(
    design: Design, names: Sequence[str], **fixed: float | np.ndarray
) -> ScaleSelection:
    """Estimate group-level scales by maximizing the Laplace marginal likelihood.

    Parameters
    ----------
    design
        The validated design.
    names
        The scales to estimate: ``"sigma_alpha"`` and/or ``"sigma_beta"`` (one value shared
        by every varying slope, the slopes being standardized).
    **fixed
        The other prior scales, held at these values (defaults for those left out).

    Returns
    -------
    ScaleSelection
    """
    unknown = set(names) - {"sigma_alpha", "sigma_beta"}
    if unknown:
        raise ValueError(f"only sigma_alpha and sigma_beta can be estimated, not {sorted(unknown)}")
    # In a fixed order (the grid below starts sigma_alpha at one value, sigma_beta on a grid);
    # without varying slopes there is no sigma_beta to estimate.
    names = [
        name
        for name in ("sigma_alpha", "sigma_beta")
        if name in names and (name == "sigma_alpha" or design.varying.any())
    ]
    if not names:
        raise ValueError("there is no scale to estimate: the model has no varying slopes")
    data = _bernoulli_data(design)
    n_varying = int(design.varying.sum())
    n_local = 1 + n_varying
    # The local prior entries each scale sets: the group intercepts, or every varying slope.
    masks = [
        np.arange(n_local) == 0 if name == "sigma_alpha" else np.arange(n_local) > 0
        for name in names
    ]
    low, high = np.log(SCALE_BOUNDS)
    cache: dict[tuple[float, ...], tuple[float, np.ndarray]] = {}
    last: list[_Mode | None] = [None]

    def negative(log_scales: np.ndarray) -> tuple[float, np.ndarray]:
        key = tuple(np.round(log_scales, 12))
        if key not in cache:
            values: Mapping[str, float] = dict(zip(names, np.exp(log_scales), strict=True))
            hyperparameters = MapHyperparameters.from_user(n_varying, **fixed, **values)
            problem = _bernoulli_problem(design, data, hyperparameters)
            mode = _laplace(problem, data, last[0], masks=masks)
            last[0] = mode  # warm start the next evaluation
            cache[key] = (-mode.log_marginal, -mode.gradient)
        return cache[key]

    with _BLAS.limit(limits=1, user_api="blas"):
        # Quasi-Newton steps on the log scales with the exact gradient, from σ_α = 1 and
        # σ_β = 0.3 (the middle of the pooling path on a log scale); log σ to ~1e-3 is far
        # finer than the weights can tell apart.
        start = np.array([0.0 if name == "sigma_alpha" else np.log(0.3) for name in names])
        found = scipy.optimize.minimize(
            negative,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=[(low, high)] * len(names),
            options={"ftol": 1e-10, "gtol": 1e-3},
        )
    optimum = np.clip(found.x, low, high)
    at_bound = tuple(
        name
        for name, value in zip(names, optimum, strict=True)
        if value <= low + 1e-3 or value >= high - 1e-3
    )
    return ScaleSelection(
        scales={name: float(np.exp(value)) for name, value in zip(names, optimum, strict=True)},
        log_marginal_likelihood=-float(found.fun),
        method=(
            "empirical Bayes: Laplace-approximate marginal likelihood of the Bernoulli "
            "hierarchical propensity model, maximized over the log scales (L-BFGS-B, exact "
            "gradient)"
        ),
        evaluations=len(cache),
        at_bound=at_bound,
    )
