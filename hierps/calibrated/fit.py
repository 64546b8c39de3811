"""MAP mode: the mode of the calibrated-loss model, found by the block Newton solver.

The objective is exactly the negative log density (up to a constant) of
``build_pymc(design, loss="calibrated", <fixed scales>)`` in the parametrization
``u_j = sigma_alpha · alpha_offset_j``, ``delta_jk = sigma_beta_k · beta_offset_jk`` (the map
is linear with a constant Jacobian, so the modes coincide)::

    f(θ) = Σ_controls exp(η_i) − Σ_treated η_i + a0²/2s0² + |γ|²/2σγ² + |μ|²/2σμ²
           + Σ_j u_j²/2σα² + Σ_j |δ_j|²/2σβ²

:func:`hierarchical_problem` lays the design out as a
:class:`~hierps.calibrated_problem.CalibratedProblem` and :func:`hierps.newton.newton_solve`
minimizes it.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from hierps.arguments import check_integer, check_number
from hierps.calibrated.newton import NewtonTrace, newton_solve
from hierps.calibrated.problem import _LAYOUTS, CalibratedProblem, _problem, lay_out_controls
from hierps.design.build import Design
from hierps.design.hyperparameters import MapHyperparameters
from hierps.effects.estimands import GroupSums, att_from_catt, catt_from_weights, kish_ess
from hierps.effects.inestimable import excluded_treated, warn_inestimable
from hierps.exceptions import ArgumentError, ArgumentTypeError, ConvergenceError, HierpsWarning

__all__ = ["MapResult", "fit_map", "hierarchical_problem"]

EXTREME_WEIGHT_SHARE = 0.5
# Prior precisions are held within [1e-8, 1e12] (scales 1e-6 … 1e4 on standardized
# covariates): beyond them the balance a scale buys differs from its limit (complete or no
# pooling) by about the solver's tolerance, and the Newton blocks only lose digits or turn
# singular.
PRECISION_BOUNDS = (1e-8, 1e12)


def hierarchical_problem(design: Design, hyperparameters: MapHyperparameters) -> CalibratedProblem:
    """Lay out the hierarchical model of a design for the Newton solver."""
    layout = _LAYOUTS.get(design)
    if layout is None:
        layout = _LAYOUTS[design] = lay_out_controls(
            design.unit_matrix, design.treatment == 1, design.group_codes, design.n_groups
        )
    n_unit = len(design.unit_names)
    n_group_cov = len(design.group_names)
    varying_index = np.flatnonzero(design.varying)
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
    prior_global = np.clip(prior_global, *PRECISION_BOUNDS)
    prior_local = np.clip(prior_local, *PRECISION_BOUNDS)
    return _problem(
        layout,
        design.group_matrix,
        np.concatenate([[0], 1 + varying_index]),
        prior_global,
        prior_local,
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

    Raises
    ------
    ConvergenceError
        The solver did not reach ``tol``; the message says which prior scale to change.

    Warns
    -----
    HierpsWarning
        Groups whose CATT cannot be estimated (no controls or no treated units), named in one
        warning with the number of treated units the ATT leaves out; groups where one control
        carries most of the weight.

    Notes
    -----
    Prior scales below 1e-6 or above 1e4 act as 1e-6 and 1e4: on standardized covariates
    these already are complete and no pooling to about the solver's tolerance, and more extreme
    values would only make the Newton blocks singular. The result reports the scales given.

    The solver's layout of the controls (a padded copy of their covariates) is kept with the
    design for as long as the design lives, so that refits with other prior scales skip it.
    """
    tol = check_number("tol", tol)
    max_iterations = check_integer("max_iterations", max_iterations)
    if init is not None and not isinstance(init, MapResult):
        raise ArgumentTypeError(f"init must be a MapResult or None, not {type(init).__name__}")
    if init is not None and init.design.n_groups != design.n_groups:
        raise ArgumentError(
            f"init has {init.design.n_groups} groups but the design has {design.n_groups}: "
            f"warm starts need a fit of the same design"
        )
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
    if init is not None and (
        init._theta_global.shape != (problem.n_global,)
        or init._theta_local.shape != (design.n_groups, problem.n_local)
    ):
        raise ArgumentError(
            "init is a fit of another design (other covariates or varying slopes): warm "
            "starts need a fit of the same design"
        )
    start = (None, None) if init is None else (init._theta_global, init._theta_local)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            trace = newton_solve(problem, *start, tol=tol, max_iterations=max_iterations)
    except np.linalg.LinAlgError as error:
        raise ConvergenceError(
            f"the MAP Newton system became singular ({error}) with prior scales "
            f"{_scales(hyperparameters)}: some groups cannot be balanced on every covariate "
            f"(too few controls); use a smaller sigma_beta or fewer varying_slopes"
        ) from None
    if not trace.converged:
        if not np.isfinite(trace.max_gradient):
            raise ConvergenceError(
                f"the MAP weights overflowed after {trace.iterations} Newton iterations with "
                f"prior scales {_scales(hyperparameters)}: the balance they ask for is "
                f"infeasible in some group; use a smaller sigma_beta or sigma_alpha"
            )
        raise ConvergenceError(
            f"the MAP Newton solver stopped after {trace.iterations} iterations with largest "
            f"gradient {trace.max_gradient:.3g} > tol={tol:g}; the data may be (nearly) "
            f"separable for these prior scales — try smaller sigma_beta / sigma_alpha, a "
            f"larger tol, or more max_iterations"
        )
    if not np.all(np.isfinite(trace.control_weights)):
        raise ConvergenceError("the MAP weights overflowed; try smaller prior scales")
    result = MapResult(design, hyperparameters, problem, trace)
    result._warn_extreme_weights()
    warn_inestimable(design, "att")
    return result


def _scales(hyperparameters: MapHyperparameters) -> str:
    return ", ".join(
        f"{name}={np.asarray(value).tolist()}" for name, value in hyperparameters.as_dict().items()
    )


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
        # Log weights of the controls (NaN on treated units), exact where exp underflows.
        self._eta = np.full(design.n_units, np.nan)
        self._eta[problem.order] = trace.control_eta
        weights = np.ones(design.n_units)
        weights[problem.order] = trace.control_weights
        self.weights = pd.Series(weights, index=design.index, name="weight")
        self._effects = None
        # The controls come in runs of one group each: per-group reductions are reduceat's.
        codes = design.group_codes[problem.order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else []
        groups = codes[starts]

        def per_group(reduce: np.ufunc, values: np.ndarray, empty: float) -> np.ndarray:
            out = np.full(design.n_groups, empty)
            if len(groups):
                out[groups] = reduce.reduceat(values, starts)
            return out

        # Within-group weights relative to the group's largest: exp(η) may underflow to 0 for
        # every control of a group where balance is nearly infeasible, but the Hájek CATT,
        # the ESS and the weight shares only need ratios, which stay exact.
        largest = per_group(np.maximum, trace.control_eta, -np.inf)
        relative = np.exp(trace.control_eta - np.where(np.isfinite(largest), largest, 0.0)[codes])
        self._relative_weights = np.zeros(design.n_units)  # 0 on treated units
        self._relative_weights[problem.order] = relative
        self._control_totals = {
            "count": per_group(np.add, np.ones(len(codes)), 0.0),
            "relative": per_group(np.add, relative, 0.0),
            "weight": per_group(np.add, trace.control_weights, 0.0),
        }

    @functools.cached_property
    def _group_sums(self) -> GroupSums:
        return GroupSums(self.design.group_codes, self.design.n_groups)

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
                "group": _label_array(d.groups),
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
            raise ArgumentError("the model has no outcome column: give outcome= to hierps.Model")
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
    def n_excluded(self) -> int:
        """Treated units in groups without controls: the ATT leaves them out (see the warning
        issued by the fit)."""
        return excluded_treated(self.design, "att")

    @property
    def att(self) -> float:
        """The overall effect on the treated: the treated-weighted mean of the estimable group
        CATTs; :attr:`n_excluded` counts the treated units it leaves out."""
        effects = self._compute_effects()
        return float(att_from_catt(effects["catt"], effects["treated_weight"]))

    @property
    def relative_weights(self) -> pd.Series:
        """Each control's weight over the largest control weight of its group (treated 0).

        Group effects, effective sample sizes and standard errors depend on the weights only
        up to a factor per group; these ratios stay exact where ``exp(η)`` underflows for a
        whole group (exact balance there nearly infeasible), unlike :attr:`weights`.
        """
        return pd.Series(self._relative_weights, index=self.design.index, name="relative_weight")

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

    def save(self, path: str | Path) -> Path:
        """Write the result to one netCDF file, whole or not at all; :func:`hierps.load` reads
        it back as a :class:`MapResult` (design included, so no data frame is needed)."""
        from hierps.workflow.storage import save_result

        return save_result(self, path)

    def balance(self) -> pd.DataFrame:
        """Covariate balance before and after weighting, globally and within each group.

        See :func:`hierps.balance.balance_frame` for the columns.
        """
        from hierps.balance.statistics import balance_frame

        return balance_frame(self.design, self.weights.to_numpy())

    def _warn_extreme_weights(self) -> None:
        d = self.design
        total = self._control_totals["relative"]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, 1.0 / total, 0.0)  # the largest relative weight is 1
        weight_sum, n_control = self._control_totals["weight"], self._control_totals["count"]
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


def _label_array(labels: pd.Index) -> np.ndarray:
    """Labels as a 1-d array, also when they are tuples (xarray would read those as rows)."""
    if isinstance(labels.dtype, np.dtype) and labels.dtype != object:
        return labels.to_numpy()
    array = np.empty(len(labels), dtype=object)
    array[:] = list(labels)
    return array


def _short(labels: list) -> str:
    shown = ", ".join(repr(label) for label in labels[:5])
    return shown + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
