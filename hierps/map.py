"""MAP mode: the mode of the calibrated-loss model, found by a block-structured Newton method.

The objective is exactly the negative log density (up to a constant) of
``build_pymc(design, loss="calibrated", <fixed scales>)`` in the parametrization
``u_j = sigma_alpha · alpha_offset_j``, ``delta_jk = sigma_beta_k · beta_offset_jk`` (the map
is linear with a constant Jacobian, so the modes coincide)::

    f(θ) = Σ_controls exp(η_i) − Σ_treated η_i + a0²/2s0² + |γ|²/2σγ² + |μ|²/2σμ²
           + Σ_j u_j²/2σα² + Σ_j |δ_j|²/2σβ²

Every unit's linear predictor is ``η_i = c_j · z_i`` with ``z_i = (1, x_i)`` and the group's
coefficients ``c_j = (α_j, β_j)``. The Hessian has one block per group for ``(u_j, δ_j)``,
a small global block for ``(a0, γ, μ)`` and their coupling; Newton steps solve it by the
Schur complement on the global block. All data-dependent work is the per-group moment
matrix ``M_j = Σ_{controls in j} w_i z_i z_i'``, accumulated by one additive kernel over
row chunks.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from threadpoolctl import ThreadpoolController

from hierps.data import Design
from hierps.estimands import GroupSums, att_from_catt, catt_from_weights, kish_ess
from hierps.exceptions import ConvergenceError, HierpsWarning
from hierps.hyperparameters import MapHyperparameters

__all__ = ["MapResult", "fit_map", "hierarchical_problem", "newton_solve", "objective"]

CHUNK_ROWS = 1 << 16
# The solver's matrices are small (one block per group): threaded BLAS only adds overhead,
# several-fold on a busy machine, so its calls run on one thread.
_BLAS = ThreadpoolController()
EXTREME_WEIGHT_SHARE = 0.5


@dataclass(frozen=True, eq=False)
class CalibratedProblem:
    """The calibrated-loss problem in the solver's layout (controls sorted by group).

    Global coefficients are ``(a0, γ, μ)``: group ``j``'s coefficients on ``z = (1, x)`` are
    ``(a0 + v_j'γ, μ)`` plus its local deviations ``(u_j, δ_j)`` on the ``z`` entries
    ``local_index``. With no groups of interest (one group, no local entries) the problem is
    a plain regularized calibration on the columns of ``x``.
    """

    z: np.ndarray  # (n_controls, D): (1, x) of the controls, sorted by group
    codes: np.ndarray  # (n_controls,) group code of each control, sorted
    segment_starts: np.ndarray  # first row of each group's run of controls
    segment_groups: np.ndarray  # the group of each run
    treated_moments: np.ndarray  # (J, D): Σ_treated z per group
    group_design: np.ndarray  # (J, p): v_j
    local_index: np.ndarray  # (K,) indices into z
    prior_global: np.ndarray  # (G,) prior precisions
    prior_local: np.ndarray  # (K,) prior precisions
    order: np.ndarray  # positions of the sorted controls in the original rows

    @property
    def n_groups(self) -> int:
        return self.treated_moments.shape[0]

    @property
    def n_global(self) -> int:
        return self.z.shape[1] + self.group_design.shape[1]

    @property
    def n_local(self) -> int:
        return len(self.local_index)


def hierarchical_problem(design: Design, hyperparameters: MapHyperparameters) -> CalibratedProblem:
    """Lay out the hierarchical model of a design for the Newton solver."""
    n_unit = len(design.unit_names)
    n_group_cov = len(design.group_names)
    varying_index = np.flatnonzero(design.varying)
    z_all = np.empty((design.n_units, 1 + n_unit))
    z_all[:, 0] = 1.0
    z_all[:, 1:] = design.unit_matrix
    h = hyperparameters
    sigma_beta = h.sigma_beta_vector(len(varying_index))
    prior_global = np.concatenate(
        [
            [h.sigma_intercept**-2],
            np.full(n_group_cov, h.sigma_gamma**-2),
            np.full(n_unit, h.sigma_mu_beta**-2),
        ]
    )
    prior_local = np.concatenate([[h.sigma_alpha**-2], sigma_beta**-2])
    return make_problem(
        z_all,
        design.treatment,
        design.group_codes,
        design.group_matrix,
        np.concatenate([[0], 1 + varying_index]),
        prior_global,
        prior_local,
    )


def make_problem(
    z_all: np.ndarray,
    treatment: np.ndarray,
    codes: np.ndarray,
    group_design: np.ndarray,
    local_index: np.ndarray,
    prior_global: np.ndarray,
    prior_local: np.ndarray,
) -> CalibratedProblem:
    """Sort the controls by group and precompute the treated moments."""
    treated = treatment == 1
    n_groups = group_design.shape[0]
    treated_moments = np.zeros((n_groups, z_all.shape[1]))
    np.add.at(treated_moments, codes[treated], z_all[treated])
    control_rows = np.flatnonzero(~treated)
    order = control_rows[np.argsort(codes[control_rows], kind="stable")]
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    return CalibratedProblem(
        z=np.ascontiguousarray(z_all[order]),
        codes=sorted_codes,
        segment_starts=starts,
        segment_groups=sorted_codes[starts],
        treated_moments=treated_moments,
        group_design=np.asarray(group_design, dtype=float).reshape(n_groups, -1),
        local_index=np.asarray(local_index),
        prior_global=prior_global,
        prior_local=prior_local,
        order=order,
    )


def group_coefficients(problem: CalibratedProblem, theta_global, theta_local) -> np.ndarray:
    """``c_j = A_j' θ_global + B' θ_local_j``: each group's coefficients on ``z`` (J, D)."""
    n_group_cov = problem.group_design.shape[1]
    coefficients = np.empty((problem.n_groups, problem.z.shape[1]))
    coefficients[:, 0] = theta_global[0] + problem.group_design @ theta_global[1 : 1 + n_group_cov]
    coefficients[:, 1:] = theta_global[1 + n_group_cov :]
    coefficients[:, problem.local_index] += theta_local
    return coefficients


def linear_predictor(problem: CalibratedProblem, coefficients: np.ndarray) -> np.ndarray:
    """η of every control (sorted order), chunk by chunk to bound memory."""
    eta = np.empty(len(problem.codes))
    for start in range(0, len(eta), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        eta[rows] = np.einsum("nd,nd->n", problem.z[rows], coefficients[problem.codes[rows]])
    return eta


def moment_kernel(z: np.ndarray, codes: np.ndarray, w: np.ndarray, n_groups: int) -> np.ndarray:
    """Additive kernel: ``Σ w z z'`` per group over a chunk of group-sorted rows (J, D, D).

    Partial results of disjoint chunks add up to the full moments, so the same driver can
    run over chunks of a larger-than-memory frame or over group-sharded partitions. One BLAS
    product per group run: far cheaper than materializing the n × D² outer products.
    """
    dimension = z.shape[1]
    moments = np.zeros((n_groups, dimension, dimension))
    if len(w) == 0:
        return moments
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
    weighted = z * w[:, None]
    for start, stop in itertools.pairwise(bounds):
        moments[codes[start]] = weighted[start:stop].T @ z[start:stop]
    return moments


def accumulate_moments(problem: CalibratedProblem, w: np.ndarray) -> np.ndarray:
    moments = np.zeros((problem.n_groups, problem.z.shape[1], problem.z.shape[1]))
    for start in range(0, len(w), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        moments += moment_kernel(problem.z[rows], problem.codes[rows], w[rows], problem.n_groups)
    return moments


@dataclass
class NewtonTrace:
    """Outcome of the Newton iterations."""

    theta_global: np.ndarray
    theta_local: np.ndarray
    objective: float
    max_gradient: float
    iterations: int
    converged: bool
    control_weights: np.ndarray  # sorted order
    history: list[float] = field(default_factory=list)
    control_eta: np.ndarray | None = None  # log weights, sorted order (exact where w underflows)


def _objective(problem, theta_global, theta_local, weight_total) -> float:
    coefficients = group_coefficients(problem, theta_global, theta_local)
    treated_eta = float(np.sum(problem.treated_moments * coefficients))
    penalty = 0.5 * (
        np.sum(problem.prior_global * theta_global**2)
        + np.sum(problem.prior_local * theta_local**2)
    )
    return weight_total - treated_eta + penalty


def objective(problem: CalibratedProblem, theta_global, theta_local) -> float:
    """The calibrated-loss objective with its prior penalties at any parameter value."""
    eta = linear_predictor(problem, group_coefficients(problem, theta_global, theta_local))
    with np.errstate(over="ignore"):
        return _objective(problem, theta_global, theta_local, float(np.exp(eta).sum()))


def _gradient_and_hessian(problem, theta_global, theta_local, moments):
    """Gradient and Hessian blocks from the per-group moments ``M_j = Σ w z z'``.

    The global coefficients act on ``z`` through ``A_j = [e_0; v_j e_0'; (0 I)]``; the blocks
    below are ``Σ_j A_j M_j A_j'`` and ``B M_j A_j'`` written out, so no (J, G, D) array is
    ever formed.
    """
    V, local = problem.group_design, problem.local_index
    imbalance = moments[:, :, 0] - problem.treated_moments  # Σ_C w z − Σ_T z per group
    gradient_global = np.concatenate(
        [[imbalance[:, 0].sum()], V.T @ imbalance[:, 0], imbalance[:, 1:].sum(axis=0)]
    )
    gradient_global += problem.prior_global * theta_global
    gradient_local = imbalance[:, local] + problem.prior_local * theta_local

    count = moments[:, 0, 0]  # Σ w per group
    first = moments[:, 0, 1:]  # Σ w x per group
    n_group_cov = V.shape[1]
    g, m = slice(1, 1 + n_group_cov), slice(1 + n_group_cov, None)
    hessian_global = np.empty((problem.n_global, problem.n_global))
    hessian_global[0, 0] = count.sum()
    hessian_global[0, g] = hessian_global[g, 0] = V.T @ count
    hessian_global[0, m] = hessian_global[m, 0] = first.sum(axis=0)
    hessian_global[g, g] = (V.T * count) @ V
    hessian_global[g, m] = V.T @ first
    hessian_global[m, g] = hessian_global[g, m].T
    hessian_global[m, m] = moments[:, 1:, 1:].sum(axis=0)
    hessian_global += np.diag(problem.prior_global)

    moments_local = moments[:, local, :]  # (J, K, D)
    hessian_local = moments_local[:, :, local] + np.diag(problem.prior_local)
    hessian_cross = np.concatenate(
        [
            moments_local[:, :, :1],
            moments_local[:, :, :1] * V[:, None, :],
            moments_local[:, :, 1:],
        ],
        axis=2,
    )
    return gradient_global, gradient_local, hessian_global, hessian_local, hessian_cross


def _newton_direction(gradient_global, gradient_local, hessian_global, hessian_local, cross):
    """Solve the block system by the Schur complement on the global block."""
    # One batched solve for both right-hand sides: L_j⁻¹ [C_j, g_j]  (J, K, G + 1).
    solved = np.linalg.solve(hessian_local, np.concatenate([cross, gradient_local[:, :, None]], 2))
    solved_cross, solved_gradient = solved[:, :, :-1], solved[:, :, -1]
    n_global = hessian_global.shape[0]
    stacked = cross.reshape(-1, n_global)  # rows (group, local)
    schur = hessian_global - stacked.T @ solved_cross.reshape(-1, n_global)
    rhs = -gradient_global + stacked.T @ solved_gradient.ravel()
    step_global = np.linalg.solve(schur, rhs)
    step_local = -solved_gradient - solved_cross @ step_global
    return step_global, step_local


def newton_solve(
    problem: CalibratedProblem,
    theta_global: np.ndarray | None = None,
    theta_local: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iterations: int = 100,
) -> NewtonTrace:
    """Minimize the calibrated-loss objective by damped Newton steps with backtracking.

    Stops when the largest absolute gradient entry is at most ``tol``.
    """
    with _BLAS.limit(limits=1, user_api="blas"):
        return _newton_iterations(problem, theta_global, theta_local, tol, max_iterations)


def _newton_iterations(problem, theta_global, theta_local, tol, max_iterations) -> NewtonTrace:
    if theta_global is None:
        theta_global = np.zeros(problem.n_global)
        # Start with the weights summing to the treated count: a0 = log(n1 / n0).
        n_treated = problem.treated_moments[:, 0].sum()
        theta_global[0] = np.log(n_treated / max(len(problem.codes), 1))
    if theta_local is None:
        theta_local = np.zeros((problem.n_groups, problem.n_local))
    theta_global = np.array(theta_global, dtype=float)
    theta_local = np.array(theta_local, dtype=float)

    coefficients = group_coefficients(problem, theta_global, theta_local)
    eta = linear_predictor(problem, coefficients)
    with np.errstate(over="ignore"):
        w = np.exp(eta)
    objective = _objective(problem, theta_global, theta_local, w.sum())
    history = [objective]
    max_gradient = np.inf
    for iteration in range(max_iterations + 1):
        moments = accumulate_moments(problem, w)
        gg, gl, hg, hl, hc = _gradient_and_hessian(problem, theta_global, theta_local, moments)
        max_gradient = float(max(np.abs(gg).max(initial=0.0), np.abs(gl).max(initial=0.0)))
        if max_gradient <= tol:
            return NewtonTrace(
                theta_global, theta_local, objective, max_gradient, iteration, True, w, history, eta
            )
        if iteration == max_iterations:
            break
        step_global, step_local = _newton_direction(gg, gl, hg, hl, hc)
        slope = float(gg @ step_global + np.sum(gl * step_local))
        step_eta = linear_predictor(problem, group_coefficients(problem, step_global, step_local))
        step = 1.0
        # When the predicted decrease is below the rounding error of the objective, the
        # Armijo test compares noise; near the optimum the full Newton step is right.
        trust_full_step = -slope <= 1e-11 * max(1.0, abs(objective))
        while True:
            trial_global = theta_global + step * step_global
            trial_local = theta_local + step * step_local
            trial_eta = eta + step * step_eta
            with np.errstate(over="ignore"):
                trial_w = np.exp(trial_eta)
            trial_objective = _objective(problem, trial_global, trial_local, trial_w.sum())
            if trust_full_step or trial_objective <= objective + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                break
        if step < 1e-12:
            # No further descent is possible in floating point: report where we are.
            break
        theta_global, theta_local, eta, w = trial_global, trial_local, trial_eta, trial_w
        objective = trial_objective
        history.append(objective)
    return NewtonTrace(
        theta_global, theta_local, objective, max_gradient, iteration, False, w, history, eta
    )


def fit_map(
    design: Design,
    sigma_alpha: float | None = None,
    sigma_beta: float | np.ndarray | None = None,
    sigma_mu_beta: float | None = None,
    sigma_gamma: float | None = None,
    sigma_intercept: float | None = None,
    tol: float = 1e-8,
    max_iterations: int = 100,
    init: MapResult | None = None,
) -> MapResult:
    """Fit the calibrated-loss mode of the hierarchical model: balancing weights.

    Parameters
    ----------
    design
        The validated design.
    sigma_alpha, sigma_beta, sigma_mu_beta, sigma_gamma, sigma_intercept
        The fixed prior scales (see :class:`hierps.hyperparameters.MapHyperparameters` for the
        defaults). ``sigma_beta`` may be one value per varying slope.
    tol
        Convergence: the largest absolute gradient entry of the objective.
    max_iterations
        Newton iterations before giving up with :class:`~hierps.exceptions.ConvergenceError`.
    init
        A previous result to start from (warm start along a pooling path).

    Returns
    -------
    MapResult
    """
    given = {
        "sigma_alpha": sigma_alpha,
        "sigma_beta": sigma_beta,
        "sigma_mu_beta": sigma_mu_beta,
        "sigma_gamma": sigma_gamma,
        "sigma_intercept": sigma_intercept,
    }
    hyperparameters = MapHyperparameters.from_user(
        int(design.varying.sum()), **{k: v for k, v in given.items() if v is not None}
    )
    problem = hierarchical_problem(design, hyperparameters)
    start = (None, None) if init is None else (init._theta_global, init._theta_local)
    trace = newton_solve(problem, *start, tol=tol, max_iterations=max_iterations)
    if not trace.converged:
        raise ConvergenceError(
            f"the MAP Newton solver stopped after {trace.iterations} iterations with largest "
            f"gradient {trace.max_gradient:.3g} > tol={tol:g}; the data may be (nearly) "
            f"separable for these prior scales — try smaller sigma_beta / sigma_alpha"
        )
    if not np.all(np.isfinite(trace.control_weights)):
        raise ConvergenceError("the MAP weights overflowed; try smaller prior scales")
    result = MapResult(design, hyperparameters, problem, trace)
    result._warn_extreme_weights()
    return result


class MapResult:
    """Balancing weights from the calibrated-loss mode, with the estimands they imply.

    Attributes
    ----------
    weights
        Series on the frame's index: treated units 1, controls their odds ``exp(η)``.
    converged, max_gradient, iterations, objective
        Solver report.
    hyperparameters
        The fixed prior scales.
    """

    def __init__(self, design: Design, hyperparameters, problem, trace: NewtonTrace) -> None:
        self.design = design
        self.hyperparameters = hyperparameters
        self.converged = trace.converged
        self.max_gradient = trace.max_gradient
        self.iterations = trace.iterations
        self.objective = trace.objective
        self._theta_global = trace.theta_global
        self._theta_local = trace.theta_local
        weights = np.ones(design.n_units)
        weights[problem.order] = trace.control_weights
        self.weights = pd.Series(weights, index=design.index, name="weight")
        self._group_sums = GroupSums(design.group_codes, design.n_groups)
        self._effects = None
        # Within-group weights relative to the group's largest: exp(η) may underflow to 0 for
        # every control of a group where balance is nearly infeasible, but the Hájek CATT,
        # the ESS and the weight shares only need ratios, which stay exact.
        log_weights = np.full(design.n_units, -np.inf)
        log_weights[problem.order] = trace.control_eta
        largest = np.full(design.n_groups, -np.inf)
        np.maximum.at(largest, design.group_codes, log_weights)
        offset = np.where(np.isfinite(largest), largest, 0.0)[design.group_codes]
        self._relative_weights = np.exp(log_weights - offset)  # 0 on treated units

    def __repr__(self) -> str:
        att = f"{self.att:.4g}" if self.design.outcome is not None else "(no outcome)"
        return (
            f"MapResult: ATT {att}; {self.design.n_groups} groups; converged in "
            f"{self.iterations} Newton iterations (max |gradient| {self.max_gradient:.2g})"
        )

    @property
    def coefficients(self) -> xr.Dataset:
        """The dual coefficients on the standardized scale, with named dims."""
        d = self.design
        n_group_cov = len(d.group_names)
        theta = self._theta_global
        varying = d.varying_names
        delta = np.zeros((d.n_groups, len(d.unit_names)))
        delta[:, d.varying] = self._theta_local[:, 1:]
        mu = theta[1 + n_group_cov :]
        gamma = theta[1 : 1 + n_group_cov]
        alpha = theta[0] + d.group_matrix @ gamma + self._theta_local[:, 0]
        return xr.Dataset(
            {
                "intercept": ((), theta[0]),
                "gamma": (("group_covariate",), gamma),
                "mu_beta": (("unit_covariate",), mu),
                "alpha": (("group",), alpha),
                "alpha_deviation": (("group",), self._theta_local[:, 0]),
                "beta": (("group", "unit_covariate"), mu + delta),
                "beta_deviation": (("group", "varying_covariate"), self._theta_local[:, 1:]),
            },
            coords={
                "group": list(d.groups),
                "unit_covariate": list(d.unit_names),
                "varying_covariate": list(varying),
                "group_covariate": list(d.group_names),
            },
            attrs={
                "scale": f"logit scale, covariates standardized ({d.standardize})",
                **{k: str(v) for k, v in self.hyperparameters.as_dict().items()},
            },
        )

    def _compute_effects(self) -> dict[str, np.ndarray]:
        if self.design.outcome is None:
            raise ValueError("the model has no outcome column: give outcome= to hierps.Model")
        if self._effects is None:
            self._effects = catt_from_weights(
                self.design.outcome,
                self.design.treatment,
                self._group_sums,
                self._relative_weights,
            )
        return self._effects

    @property
    def catt(self) -> pd.DataFrame:
        """Group effects on the treated, with counts, weight sums and Kish ESS of controls."""
        effects = self._compute_effects()
        d = self.design
        n_treated = d.treated_per_group
        return pd.DataFrame(
            {
                "estimate": effects["catt"],
                "n_treated": n_treated.astype(int),
                "n_control": (d.units_per_group - n_treated).astype(int),
                "weight_sum": self._group_sums(
                    np.where(d.treatment == 0, self.weights.to_numpy(), 0.0)
                ),
                "ess": self.group_ess.to_numpy(),
            },
            index=d.groups,
        )

    @property
    def att(self) -> float:
        """The overall effect on the treated: the treated-weighted mean of the group CATTs."""
        effects = self._compute_effects()
        return float(att_from_catt(effects["catt"], effects["treated_weight"]))

    @property
    def group_ess(self) -> pd.Series:
        """Kish effective sample size of the control weights in each group."""
        return pd.Series(
            kish_ess(self._relative_weights, self._group_sums),
            index=self.design.groups,
            name="ess",
        )

    @property
    def ess(self) -> float:
        """Kish effective sample size of all control weights."""
        return float(kish_ess(self.weights.to_numpy()[self.design.treatment == 0]))

    def balance(self) -> pd.DataFrame:
        """Covariate balance before and after weighting, globally and within each group.

        See :func:`hierps.balance.balance_frame` for the columns.
        """
        from hierps.balance import balance_frame

        return balance_frame(self.design, self.weights.to_numpy())

    def _warn_extreme_weights(self) -> None:
        d = self.design
        total = self._group_sums(self._relative_weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, 1.0 / total, 0.0)  # the largest relative weight is 1
        weight_sum = self._group_sums(np.where(d.treatment == 0, self.weights.to_numpy(), 0.0))
        n_control = d.units_per_group - d.treated_per_group
        extreme = (share > EXTREME_WEIGHT_SHARE) & (n_control >= 2)
        if not extreme.any():
            return
        labels = d.groups.tolist()
        worst = np.argsort(-share)[: min(5, int(extreme.sum()))]
        table = ", ".join(f"{labels[j]!r}: {share[j]:.0%}" for j in worst)
        vanishing = [labels[j] for j in np.flatnonzero(extreme & (weight_sum < 1e-8))]
        note = (
            f"; the weights of {_short(vanishing)} vanish (exact balance there is nearly "
            f"infeasible): their CATTs are computed from the relative weights"
            if vanishing
            else ""
        )
        warnings.warn(
            f"{int(extreme.sum())} group(s) have one control carrying more than "
            f"{EXTREME_WEIGHT_SHARE:.0%} of the group's control weight (largest shares: "
            f"{table}){note}; their CATTs rest on very few controls (see fit.catt['ess']) — "
            f"a smaller sigma_beta trades within-group balance for effective sample size",
            HierpsWarning,
            stacklevel=3,
        )


def _short(labels: list) -> str:
    shown = ", ".join(repr(label) for label in labels[:5])
    return shown + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
