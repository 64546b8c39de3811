"""MAP mode: the mode of the calibrated-loss model, found by the block Newton solver.

The objective is exactly the negative log density (up to a constant) of
``build_pymc(design, loss="calibrated", <fixed scales>)`` in the parametrization
``u_j = sigma_alpha · alpha_offset_j``, ``delta_jk = sigma_beta_k · beta_offset_jk`` (the map
is linear with a constant Jacobian, so the modes coincide)::

    f(θ) = Σ_controls exp(η_i) − Σ_treated η_i + a0²/2s0² + |γ|²/2σγ² + |μ|²/2σμ²
           + Σ_j u_j²/2σα² + Σ_j |δ_j|²/2σβ²

:func:`hierarchical_problem` lays the design out as a
:class:`~hierps.calibrated.problem.CalibratedProblem` and
:func:`hierps.calibrated.newton.newton_solve` minimizes it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hierps.arguments import check_integer, check_number
from hierps.calibrated.arms import ESTIMANDS, Arm, arms_of
from hierps.calibrated.deviations import DEVIATIONS, deviation_solver
from hierps.calibrated.hierarchy import hierarchical_problem, relative_to_largest
from hierps.calibrated.newton import NewtonTrace, newton_solve
from hierps.calibrated.problem import CalibratedProblem
from hierps.design.build import Design
from hierps.design.hyperparameters import MapHyperparameters, given_scales
from hierps.effects.estimands import GroupSums, att_from_catt, catt_from_weights, kish_ess
from hierps.effects.inestimable import excluded_treated, warn_inestimable
from hierps.exceptions import (
    ArgumentError,
    ArgumentTypeError,
    ConvergenceError,
    check_choice,
    warn,
)

if TYPE_CHECKING:
    import xarray as xr

    from hierps.calibrated.empirical_bayes import ScaleSelection

__all__ = ["MapResult", "fit_map", "hierarchical_problem"]

EXTREME_WEIGHT_SHARE = 0.5
#: The scales that ``"auto"`` may estimate.
AUTO_SCALES = ("sigma_alpha", "sigma_beta")
#: Names of the group and overall effect of each estimand.
EFFECT_NAMES = {"att": ("catt", "att"), "atc": ("catc", "atc"), "ate": ("cate", "ate")}


def fit_map(
    design: Design,
    sigma_alpha: float | str | None = None,
    sigma_beta: float | np.ndarray | str | None = None,
    sigma_mu_beta: float | None = None,
    sigma_gamma: float | None = None,
    sigma_intercept: float | None = None,
    estimand: str = "att",
    tol: float = 1e-8,
    max_iterations: int = 100,
    init: MapResult | None = None,
    deviations: str = "normal",
) -> MapResult:
    """Fit the calibrated-loss mode of the hierarchical model: balancing weights.

    Parameters
    ----------
    design
        The validated design.
    sigma_alpha, sigma_beta, sigma_mu_beta, sigma_gamma, sigma_intercept
        The fixed prior scales (see
        :class:`hierps.design.hyperparameters.MapHyperparameters` for the defaults).
        ``sigma_beta`` may be one value per varying slope. ``"auto"`` for ``sigma_alpha`` or
        ``sigma_beta`` estimates that scale from the data by empirical
        Bayes (:func:`hierps.calibrated.empirical_bayes.estimate_scales`).
    estimand
        ``"att"`` (controls weighted to the treated), ``"atc"`` (treated weighted to the
        controls) or ``"ate"`` (each arm weighted to the whole sample).
    tol
        Convergence: the largest absolute gradient entry of the objective.
    max_iterations
        Newton iterations before giving up with :class:`~hierps.exceptions.ConvergenceError`.
    init
        A previous result of the same estimand to start from (warm start along a path).
    deviations
        The prior of the group slope deviations: ``"normal"`` (Gaussian, scale
        ``sigma_beta``), ``"laplace"`` (Laplace, scale ``sigma_beta``: a box on each group's
        imbalance) or ``"low_rank"`` (nuclear norm over ``sigma_beta``: a spectral-norm ball on
        the matrix of group imbalances); see :mod:`hierps.calibrated.deviations`.

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
    check_choice("estimand", estimand, ESTIMANDS)
    check_choice("deviations", deviations, DEVIATIONS)
    tol = check_number("tol", tol)
    max_iterations = check_integer("max_iterations", max_iterations)
    if init is not None and not isinstance(init, MapResult):
        raise ArgumentTypeError(f"init must be a MapResult or None, not {type(init).__name__}")
    if init is not None and init.design.n_groups != design.n_groups:
        raise ArgumentError(
            f"init has {init.design.n_groups} groups but the design has {design.n_groups}: "
            f"warm starts need a fit of the same design"
        )
    given = given_scales(sigma_alpha, sigma_beta, sigma_mu_beta, sigma_gamma, sigma_intercept)
    if deviations != "normal" and any(isinstance(value, str) for value in given.values()):
        raise ArgumentError(
            f"deviations={deviations!r} needs numeric scales: 'auto' estimates them under "
            f"normal deviations only"
        )
    selection = None
    auto = [name for name, value in given.items() if isinstance(value, str) and value == "auto"]
    if auto:
        from hierps.calibrated.empirical_bayes import estimate_scales

        for name in auto:
            if name not in AUTO_SCALES:
                raise ArgumentError(
                    f"{name}='auto': only {' and '.join(AUTO_SCALES)} may be 'auto'"
                )
        fixed = {k: v for k, v in given.items() if k not in auto}
        selection = estimate_scales(design, auto, **fixed)
        given = {**fixed, **selection.scales}
    hyperparameters = MapHyperparameters.from_user(int(design.varying.sum()), **given)
    solve = newton_solve
    if deviations != "normal":
        solve = deviation_solver(design, hyperparameters, deviations)
    solved = []
    for index, arm in enumerate(arms_of(estimand)):
        problem = hierarchical_problem(design, hyperparameters, arm)
        start = (None, None)
        if init is not None and init.estimand == estimand:
            previous = init._solutions[index]
            if previous.theta_global.shape != (problem.n_global,) or previous.theta_local.shape != (
                design.n_groups,
                problem.n_local,
            ):
                raise ArgumentError(
                    "init is a fit of another design (other covariates or varying slopes): "
                    "warm starts need a fit of the same design"
                )
            start = (previous.theta_global, previous.theta_local)
        try:  # the solvers guard their own floating-point operations
            trace = solve(problem, *start, tol=tol, max_iterations=max_iterations)
        except np.linalg.LinAlgError as error:
            raise ConvergenceError(
                f"the MAP Newton system became singular ({error}) with prior scales "
                f"{_scales(hyperparameters)}: some groups cannot be balanced on every covariate "
                f"(too few units in the weighted arm); use a smaller sigma_beta or fewer "
                f"varying_slopes"
            ) from None
        if not trace.converged:
            if not np.isfinite(trace.max_gradient):
                raise ConvergenceError(
                    f"the MAP weights overflowed after {trace.iterations} Newton iterations "
                    f"with prior scales {_scales(hyperparameters)}: the balance they ask for is "
                    f"infeasible in some group; use a smaller sigma_beta or sigma_alpha"
                )
            raise ConvergenceError(
                f"the MAP Newton solver stopped after {trace.iterations} iterations with "
                f"largest gradient {trace.max_gradient:.3g} > tol={tol:g}; the data may be "
                f"(nearly) separable for these prior scales — try smaller sigma_beta / "
                f"sigma_alpha, a larger tol, or more max_iterations"
            )
        if not np.all(np.isfinite(trace.control_weights)):
            raise ConvergenceError("the MAP weights overflowed; try smaller prior scales")
        solved.append((arm, problem, trace))
    result = MapResult(design, hyperparameters, solved, estimand=estimand, selection=selection)
    result._warn_extreme_weights()
    warn_inestimable(design, estimand)
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
        Series on the frame's index: every unit's analysis weight. With the ATT, treated
        units weigh 1 and controls their odds ``exp(η)``; with the ATC the roles swap; with
        the ATE both arms carry weights. Base weights, if the model has them, are included
        (``weights = base weight × balancing_weights``).
    estimand
        ``"att"``, ``"atc"`` or ``"ate"``.
    converged, max_gradient, iterations, objective
        Solver report (for the ATE: the worse of its two problems, summed objectives).
    hyperparameters
        The prior scales the weights were fitted at.
    selection
        How ``"auto"`` scales were chosen (an
        :class:`~hierps.calibrated.empirical_bayes.ScaleSelection`), else ``None``.
    deviations, kkt
        The prior of the slope deviations and, unless ``"normal"``, the optimality residuals
        of each weighted arm's non-smooth problem, by arm name (docs/math.md §19).
    """

    def __init__(
        self,
        design: Design,
        hyperparameters: MapHyperparameters,
        solved: list[tuple[Arm, CalibratedProblem, NewtonTrace]],
        *,
        estimand: str,
        selection: ScaleSelection | None = None,
    ) -> None:
        self.design = design
        self.hyperparameters = hyperparameters
        self.estimand = estimand
        self.selection = selection
        traces = [trace for _, _, trace in solved]
        self.converged = all(trace.converged for trace in traces)
        self.max_gradient = max(trace.max_gradient for trace in traces)
        self.iterations = max(trace.iterations for trace in traces)
        self.objective = float(sum(trace.objective for trace in traces))
        self._solutions = traces
        self._arms = [arm for arm, _, _ in solved]
        self._theta_global = traces[0].theta_global
        self._theta_local = traces[0].theta_local
        self.deviations = getattr(traces[0], "deviations", "normal")
        self.kkt = {arm.name: getattr(t, "kkt", {}) for arm, _, t in solved}
        base = design.unit_weights
        weights = base.copy()
        # Within-group weights relative to the group's largest, per weighted arm: exp(η) may
        # underflow to 0 for every unit of a group where balance is nearly infeasible, but the
        # Hájek effects, the ESS and the weight shares only need ratios, which stay exact.
        # The arm that is not reweighted keeps its base weights.
        self._arm_weights = base.copy()
        self._relative_weights = np.zeros(design.n_units)  # 0 on units not reweighted
        self._totals = []
        for arm, problem, trace in solved:
            weights[problem.order] = trace.control_weights
            relative, totals = relative_to_largest(design, problem, trace)
            self._relative_weights[problem.order] = relative
            self._arm_weights[problem.order] = relative
            self._totals.append((arm, totals))
        self.weights = pd.Series(weights, index=design.index, name="weight")
        self._effects = None

    @property
    def balancing_weights(self) -> pd.Series:
        """The weights without the base weights (:attr:`weights` over the base weight).

        With integer base weights these are the weights each replicated row would get.
        """
        values = self.weights.to_numpy() / self.design.unit_weights
        return pd.Series(values, index=self.design.index, name="balancing_weight")

    @functools.cached_property
    def _group_sums(self) -> GroupSums:
        return GroupSums(self.design.group_codes, self.design.n_groups)

    def __repr__(self) -> str:
        name = self.estimand.upper()
        if self.design.outcome is not None:
            effect = f"{name} {self.overall_effect:.4g}"
        else:
            effect = f"{name} weights (no outcome)"
        return (
            f"MapResult: {effect}; {self.design.n_groups} groups; converged in "
            f"{self.iterations} Newton iterations (max |gradient| {self.max_gradient:.2g})"
        )

    @property
    def coefficients(self) -> xr.Dataset:
        """The dual coefficients on the standardized scale, with named dims.

        With the ATT they are those of the propensity model (log odds of treatment); with
        the ATC those of the log odds of control; with the ATE this is the problem of the
        controls, and :meth:`arm_coefficients` gives either arm's.
        """
        return self.arm_coefficients(self._arms[0].name)

    def arm_coefficients(self, arm: str) -> xr.Dataset:
        """The dual coefficients of the problem that weights ``arm`` (``"control"`` or
        ``"treated"``)."""
        names = [a.name for a in self._arms]
        if arm not in names:
            raise ValueError(
                f"arm={arm!r}: the {self.estimand.upper()} weights {' and '.join(names)} only"
            )
        solution = self._solutions[names.index(arm)]
        import xarray as xr  # only this view needs xarray: MAP fits import it lazily

        d = self.design
        n_group_cov = len(d.group_names)
        theta, theta_local = solution.theta_global, solution.theta_local
        varying = d.varying_names
        delta = np.zeros((d.n_groups, len(d.unit_names)))
        delta[:, d.varying] = theta_local[:, 1:]
        mu = theta[1 + n_group_cov :]
        gamma = theta[1 : 1 + n_group_cov]
        alpha = theta[0] + d.group_matrix @ gamma + theta_local[:, 0]
        return xr.Dataset(
            {
                "intercept": ((), theta[0]),
                "gamma": (("group_covariate",), gamma),
                "mu_beta": (("unit_covariate",), mu),
                "alpha": (("group",), alpha),
                "alpha_deviation": (("group",), theta_local[:, 0]),
                "beta": (("group", "unit_covariate"), mu + delta),
                "beta_deviation": (("group", "varying_covariate"), theta_local[:, 1:]),
            },
            coords={
                "group": d.groups.to_numpy(),  # 1-d, also for tuple labels
                "unit_covariate": list(d.unit_names),
                "varying_covariate": list(varying),
                "group_covariate": list(d.group_names),
            },
            attrs={
                "scale": f"logit scale, covariates standardized ({d.standardize})",
                "estimand": self.estimand,
                "weighted_arm": arm,
                **{k: str(v) for k, v in self.hyperparameters.as_dict().items()},
            },
        )

    def _compute_effects(self) -> dict[str, np.ndarray]:
        if self.design.outcome is None:
            raise ArgumentError("the model has no outcome column: give outcome= to hierps.Model")
        if self._effects is None:
            d = self.design
            weights = self._arm_weights  # relative on reweighted arms, base weights elsewhere
            effects = catt_from_weights(
                d.outcome, d.treatment, self._group_sums, weights, treated_weights=weights
            )
            # Each group's share of the overall effect: its (base-weighted) treated units for
            # the ATT, its controls for the ATC, all its units for the ATE.
            base = d.unit_weights
            if self.estimand == "att":
                share = self._group_sums(np.where(d.treatment == 1, base, 0.0))
            elif self.estimand == "atc":
                share = self._group_sums(np.where(d.treatment == 0, base, 0.0))
            else:
                share = self._group_sums(base)
            effects["group_share"] = share
            self._effects = effects
        return self._effects

    def _names(self, requested: str) -> tuple[str, str]:
        names = EFFECT_NAMES[self.estimand]
        if requested != self.estimand:
            raise ValueError(
                f"this fit targets the {self.estimand.upper()}: use .{names[0]} and "
                f".{names[1]} (or .group_effects and .overall_effect), or refit with "
                f"estimand={requested!r}"
            )
        return names

    @property
    def group_effects(self) -> pd.DataFrame:
        """Group effects of the fitted estimand (CATT, CATC or CATE by group).

        Columns: ``estimate``; ``n_treated``, ``n_control`` (unit counts);
        ``weight_sum`` and ``ess``: the sum and Kish effective sample size of the weights of
        the reweighted arm in the group (both arms for the ATE: ``weight_sum_control``,
        ``ess_control``, ``weight_sum_treated``, ``ess_treated``); ``base_weight``: the
        group's share in the overall effect (its base-weighted treated, control or total
        count) when the model has base weights. NaN where a group lacks an arm.
        """
        effects = self._compute_effects()
        d = self.design
        n_treated = d.treated_per_group
        table = pd.DataFrame(
            {
                "estimate": effects["catt"],
                "n_treated": n_treated.astype(int),
                "n_control": (d.units_per_group - n_treated).astype(int),
            },
            index=d.groups,
        )
        weights = self.weights.to_numpy()
        for arm in self._arms:
            suffix = "" if len(self._arms) == 1 else f"_{arm.name}"
            in_arm = d.treatment == arm.weighted
            table[f"weight_sum{suffix}"] = self._group_sums(np.where(in_arm, weights, 0.0))
            table[f"ess{suffix}"] = kish_ess(
                np.where(in_arm, self._relative_weights, 0.0), self._group_sums
            )
        if d.base_weights is not None:
            table["base_weight"] = effects["group_share"]
        table.attrs["estimand"] = self.estimand
        return table

    @property
    def overall_effect(self) -> float:
        """The overall effect of the fitted estimand: the share-weighted mean of the
        estimable group effects (see :attr:`group_effects`)."""
        effects = self._compute_effects()
        return float(att_from_catt(effects["catt"], effects["group_share"]))

    @property
    def catt(self) -> pd.DataFrame:
        """Group effects on the treated (``estimand="att"``); see :attr:`group_effects`."""
        self._names("att")
        return self.group_effects

    @property
    def n_excluded(self) -> int:
        """Units of the target population in groups that lack an arm (with the ATT, treated
        units in groups without controls): the overall effect leaves them out (see the warning
        issued by the fit)."""
        return excluded_treated(self.design, self.estimand)

    @property
    def att(self) -> float:
        """The overall effect on the treated: the treated-weighted mean of the group CATTs."""
        self._names("att")
        return self.overall_effect

    @property
    def catc(self) -> pd.DataFrame:
        """Group effects on the controls (``estimand="atc"``)."""
        self._names("atc")
        return self.group_effects

    @property
    def atc(self) -> float:
        """The overall effect on the controls: the control-weighted mean of the CATCs."""
        self._names("atc")
        return self.overall_effect

    @property
    def cate(self) -> pd.DataFrame:
        """Group average effects (``estimand="ate"``)."""
        self._names("ate")
        return self.group_effects

    @property
    def ate(self) -> float:
        """The average effect: the group-size-weighted mean of the CATEs."""
        self._names("ate")
        return self.overall_effect

    @property
    def relative_weights(self) -> pd.Series:
        """Each reweighted unit's weight over the largest weight of its arm in its group (0
        on units that are not reweighted: the treated with the ATT).

        Group effects, effective sample sizes and standard errors depend on the weights only
        up to a factor per group and arm; these ratios stay exact where ``exp(η)`` underflows
        for a whole group (exact balance there nearly infeasible), unlike :attr:`weights`.
        Base weights are included.
        """
        return pd.Series(self._relative_weights, index=self.design.index, name="relative_weight")

    @property
    def group_ess(self) -> pd.Series:
        """Kish effective sample size of the weights of the reweighted units in each group."""
        return pd.Series(
            kish_ess(self._relative_weights, self._group_sums),
            index=self.design.groups,
            name="ess",
        )

    @property
    def ess(self) -> float:
        """Kish effective sample size of all weights of the reweighted units."""
        reweighted = np.zeros(self.design.n_units, dtype=bool)
        for arm in self._arms:
            reweighted |= self.design.treatment == arm.weighted
        return float(kish_ess(self.weights.to_numpy()[reweighted]))

    def save(self, path: str | Path) -> Path:
        """Write the result to one netCDF file, whole or not at all; :func:`hierps.load` reads
        it back as a :class:`MapResult` (design included, so no data frame is needed)."""
        from hierps.workflow.storage import save_result

        return save_result(self, path)

    def balance(self) -> pd.DataFrame:
        """Covariate balance before and after weighting, globally and within each group.

        See :func:`hierps.balance.statistics.balance_frame` for the columns.
        """
        from hierps.balance.statistics import balance_frame

        return balance_frame(self.design, self.weights.to_numpy(), estimand=self.estimand)

    def _warn_extreme_weights(self) -> None:
        for arm, totals in self._totals:
            self._warn_extreme_arm(arm, totals)

    def _warn_extreme_arm(self, arm: Arm, totals: dict[str, np.ndarray]) -> None:
        d = self.design
        share = totals["share"]
        weight_sum, n_control = totals["weight"], totals["count"]
        extreme = (share > EXTREME_WEIGHT_SHARE) & (n_control >= 2)
        if not extreme.any():
            return
        labels = d.groups.tolist()
        groups = np.flatnonzero(extreme)  # one control alone is not an extreme share
        worst = groups[np.argsort(-share[groups], kind="stable")][:5]
        table = ", ".join(f"{labels[j]!r}: {share[j]:.0%}" for j in worst)
        vanishing = [labels[j] for j in np.flatnonzero(extreme & (weight_sum < 1e-8))]
        note = (
            f"; the weights of {_short(vanishing)} vanish (exact balance there is nearly "
            f"infeasible): their effects are computed from the relative weights"
            if vanishing
            else ""
        )
        warn(
            f"{int(extreme.sum())} group(s) have one {arm.name} unit carrying more than "
            f"{EXTREME_WEIGHT_SHARE:.0%} of the group's {arm.name} weight (largest shares: "
            f"{table}){note}; their effects rest on very few units (see fit.group_effects) — "
            f"a smaller sigma_beta trades within-group balance for effective sample size"
        )


def _short(labels: list) -> str:
    shown = ", ".join(repr(label) for label in labels[:5])
    return shown + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
