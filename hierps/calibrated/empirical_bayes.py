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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from hierps.calibrated.newton import (
    _BLAS,
    _factorize,
    _gradient,
    _newton_direction,
    group_coefficients,
)
from hierps.calibrated.problem import CalibratedProblem, ControlLayout, _problem
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
    """The units collapsed to (group, covariate row) patterns with (base-weighted) counts."""

    problem_layout: ControlLayout
    z: np.ndarray  # (p, D): (1, x) of each pattern
    group: np.ndarray  # (p,)
    units: np.ndarray  # (p,) Σ b over the pattern's units
    treated: np.ndarray  # (p,) Σ b over its treated units
    indicator: sp.csr_array  # (J, p)


def _bernoulli_data(design: Design) -> _BernoulliData:
    key = np.column_stack([design.group_codes.astype(float), design.unit_matrix])
    rows, of_unit = np.unique(key, axis=0, return_inverse=True)
    of_unit = of_unit.reshape(-1)
    base = design.unit_weights
    units = np.bincount(of_unit, weights=base, minlength=len(rows))
    treated = np.bincount(of_unit, weights=base * design.treatment, minlength=len(rows))
    group = rows[:, 0].astype(np.int64)
    z = np.column_stack([np.ones(len(rows)), rows[:, 1:]])
    n_groups = design.n_groups
    indicator = sp.csr_array(
        (np.ones(len(rows)), (group, np.arange(len(rows)))), shape=(n_groups, len(rows))
    )
    # A layout without controls: only its group order and target moments Σ k z are used.
    layout = ControlLayout(
        buckets=(),
        group_order=np.arange(n_groups),
        slots=np.zeros(0, dtype=np.int64),
        order=np.zeros(0, dtype=np.int64),
        padding=np.zeros(0),
        treated_moments=indicator @ (treated[:, None] * z),
        gram=np.zeros((n_groups, z.shape[1], z.shape[1])),
    )
    return _BernoulliData(layout, z, group, units, treated, indicator)


def _bernoulli_problem(
    design: Design, data: _BernoulliData, hyperparameters: MapHyperparameters
) -> CalibratedProblem:
    from hierps.calibrated.fit import hierarchical_problem

    # The priors of the MAP problem, on a layout of all patterns.
    priors = hierarchical_problem(design, hyperparameters)
    return _problem(
        data.problem_layout,
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
    theta_local: np.ndarray
    log_marginal: float


def _laplace(problem, data: _BernoulliData, start: _Mode | None, tol: float = 1e-9) -> _Mode:
    """The Bernoulli mode by damped block Newton steps, and the Laplace approximation."""
    if start is None:
        theta_global = np.zeros(problem.n_global)
        rate = data.treated.sum() / data.units.sum()
        theta_global[0] = np.log(rate / (1 - rate))
        theta_local = np.zeros((problem.n_groups, problem.n_local))
    else:
        theta_global, theta_local = start.theta_global.copy(), start.theta_local.copy()

    def evaluate(theta_global, theta_local):
        coefficients = group_coefficients(problem, theta_global, theta_local)
        eta = np.einsum("pd,pd->p", data.z, coefficients[data.group])
        penalty = 0.5 * (
            problem.prior_global @ theta_global**2 + np.sum(problem.prior_local * theta_local**2)
        )
        loss = data.units @ _softplus(eta) - data.treated @ eta + penalty
        return loss, eta

    loss, eta = evaluate(theta_global, theta_local)
    factorization = None
    for _ in range(100):
        pi = 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic function without overflow
        first = data.indicator @ ((data.units * pi)[:, None] * data.z)
        gradient_global, gradient_local = _gradient(problem, theta_global, theta_local, first)
        curvature = data.units * pi * (1.0 - pi)
        moments = (data.indicator @ (curvature[:, None, None] * data.z[:, :, None] * data.z[:, None, :]).reshape(len(pi), -1)).reshape(problem.n_groups, problem.dimension, problem.dimension)  # fmt: skip
        factorization = _factorize(problem, moments)
        largest = max(np.abs(gradient_global).max(initial=0.0), np.abs(gradient_local).max(initial=0.0))
        if largest <= tol * max(1.0, data.units.sum()) ** 0.5:
            break
        step_global, step_local = _newton_direction(
            problem, factorization, gradient_global, gradient_local
        )
        slope = gradient_global @ step_global + np.sum(gradient_local * step_local)
        if -slope <= 1e-13 * max(1.0, abs(loss)):  # the Newton decrement is at rounding level
            break
        t = 1.0
        while t > 1e-10:
            trial = evaluate(theta_global + t * step_global, theta_local + t * step_local)
            if trial[0] <= loss + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        theta_global = theta_global + t * step_global
        theta_local = theta_local + t * step_local
        loss, eta = trial
    else:
        raise ConvergenceError("the Bernoulli mode of the empirical-Bayes step did not converge")
    # log det H = Σ_j log det L_j + log det S: from the inverses the factorization keeps.
    log_det = -np.linalg.slogdet(factorization.schur_inverse)[1]
    if problem.n_local:
        log_det -= np.linalg.slogdet(factorization.local_inverse)[1].sum()
    log_det_prior = np.log(problem.prior_global).sum() + problem.n_groups * np.log(
        problem.prior_local
    ).sum()
    log_marginal = -loss + 0.5 * log_det_prior - 0.5 * log_det
    return _Mode(theta_global, theta_local, float(log_marginal))


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
    names = [name for name in names if not (name == "sigma_beta" and not design.varying.any())]
    data = _bernoulli_data(design)
    n_varying = int(design.varying.sum())
    low, high = np.log(SCALE_BOUNDS)
    cache: dict[tuple[float, ...], float] = {}
    last: list[_Mode | None] = [None]

    def negative(log_scales: np.ndarray) -> float:
        key = tuple(np.round(log_scales, 12))
        if key not in cache:
            values: Mapping[str, float] = dict(zip(names, np.exp(log_scales), strict=True))
            hyperparameters = MapHyperparameters.from_user(n_varying, **fixed, **values)
            problem = _bernoulli_problem(design, data, hyperparameters)
            mode = _laplace(problem, data, last[0])
            last[0] = mode  # warm start the next evaluation
            cache[key] = -mode.log_marginal
        return cache[key]

    if not names:
        raise ValueError("there is no scale to estimate: the model has no varying slopes")
    with _BLAS.limit(limits=1, user_api="blas"):
        # A coarse grid first: the marginal likelihood may be flat or have its maximum at a
        # bound, where a local search from one start can stall.
        grid = np.log([0.01, 0.1, 0.3, 1.0, 3.0])
        if len(names) == 1:
            starts = [np.array([g]) for g in grid]
        else:
            starts = [np.array([a, b]) for a in grid[1:] for b in grid]
        best = min(starts, key=negative)
        found = scipy.optimize.minimize(
            negative,
            best,
            method="L-BFGS-B",
            bounds=[(low, high)] * len(names),
            options={"eps": 1e-4},
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
            "hierarchical propensity model, maximized over log scale"
        ),
        evaluations=len(cache),
        at_bound=at_bound,
    )
