"""Balancing weights from natstrat-style constraints: each constraint column is a prior.

A constraint matrix from :func:`hierps.generate_constraints` is a propensity design. Fitting the
calibrated loss on it, with each column's coefficient given prior variance
``scale × importance``, gives entropy-balancing weights that balance every column softly, the
more exactly the larger its importance (docs/math.md §16). The hierarchical model is the special
case ``. ~ 1 + school``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hierps.calibrated.newton import newton_solve
from hierps.calibrated.problem import make_problem
from hierps.effects.estimands import kish_ess
from hierps.exceptions import ArgumentError, ArgumentTypeError, ConvergenceError, DataError
from hierps.natstrat.constraints import Constraints

__all__ = ["ConstraintFit", "constraint_weights"]


class ConstraintFit:
    """Weights balancing a constraint matrix, with the balance of every constraint column."""

    def __init__(self, weights, treatment, X, importances, coefficients, trace) -> None:
        self.weights: pd.Series = weights
        self.coefficients: pd.Series = coefficients
        self.converged: bool = trace.converged
        self.iterations: int = trace.iterations
        self.max_gradient: float = trace.max_gradient
        self.objective: float = trace.objective
        self._treatment = treatment
        self._X = X
        self._importances = importances

    def __repr__(self) -> str:
        return (
            f"ConstraintFit: {self._X.shape[1]} constraints, control ESS {self.ess:.1f}; "
            f"converged in {self.iterations} Newton iterations"
        )

    @property
    def ess(self) -> float:
        """Kish effective sample size of the control weights."""
        return float(kish_ess(self.weights.to_numpy()[self._treatment == 0]))

    def balance(self) -> pd.DataFrame:
        """Per constraint column: treated total, control totals before and after weighting.

        ``control_total_before`` rescales the unweighted controls to the treated count;
        ``imbalance = control_total_after − treated_total`` is what the column's prior buys:
        ``−coefficient / (scale × importance)`` at the optimum.
        """
        X = self._X.fillna(0.0).to_numpy()
        treated = self._treatment == 1
        w = np.where(treated, 0.0, self.weights.to_numpy())
        treated_total = X[treated].sum(axis=0)
        scale = treated.sum() / (~treated).sum()
        table = pd.DataFrame(
            {
                "importance": self._importances.to_numpy(),
                "treated_total": treated_total,
                "control_total_before": scale * X[~treated].sum(axis=0),
                "control_total_after": w @ X,
            },
            index=self._X.columns.rename("constraint"),
        )
        table["imbalance"] = table["control_total_after"] - table["treated_total"]
        return table


def constraint_weights(
    constraints: Constraints,
    z: pd.Series | np.ndarray,
    scale: float = 1.0,
    sigma_intercept: float = 2.5,
    treated: object = 1,
    tol: float = 1e-8,
    max_iterations: int = 100,
) -> ConstraintFit:
    """Calibrated-loss balancing weights on a natstrat constraint matrix.

    Parameters
    ----------
    constraints
        The result of :func:`hierps.generate_constraints` (``.X`` and ``.importances``).
    z
        The treatment, as given to ``generate_constraints``, with exactly two groups (for more,
        pass the rows of ``treated`` and one other group).
    scale
        Prior variance per unit of importance: column ``c`` gets variance
        ``scale × importance_c``. Columns of importance 0 are not balanced (coefficient 0).
    sigma_intercept
        Prior SD of the intercept, which buys the sum-to-n_treated balance of the weights.
    treated
        The value of ``z`` that marks treated units.
    tol, max_iterations
        Newton convergence criterion (largest absolute gradient) and iteration limit.

    Returns
    -------
    ConstraintFit
        ``.weights`` (treated 1, controls ``exp(η)``) on ``constraints.X.index``, ``.balance()``.

    Raises
    ------
    DataError
        If ``z`` has missing values, more than two groups, or no treated or no control units,
        or its length differs from the constraints'.
    """
    if not isinstance(constraints, Constraints):
        raise ArgumentTypeError(
            f"constraints must be the result of hierps.generate_constraints, not "
            f"{type(constraints).__name__}"
        )
    if not (np.isfinite(scale) and scale > 0):
        raise ArgumentError(f"scale must be positive and finite, not {scale!r}")
    X, importances = constraints.X, constraints.importances.reindex(constraints.X.columns)
    z_values = np.asarray(z)
    if len(z_values) != len(X):
        raise DataError(f"z has {len(z_values)} entries but the constraints have {len(X)} rows")
    missing = pd.isna(z_values)
    if missing.any():
        raise DataError(f"z has {int(missing.sum())} missing values")
    levels = pd.unique(z_values)
    if len(levels) > 2:
        # The calibrated loss weights one control group to the treated; pooling the others
        # would balance their mixture, not each group (natstrat's pairwise comparisons).
        shown = sorted(levels.tolist(), key=str)
        raise DataError(
            f"z has {len(levels)} treatment groups ({shown[:10]}); constraint_weights needs two, "
            f"the treated and one control group: pass the rows of two groups "
            f"(Constraints(constraints.X[rows], constraints.importances) and z[rows])"
        )
    treatment = (z_values == treated).astype(np.int8)
    if treatment.sum() in (0, len(treatment)):
        raise DataError(f"z needs both treated units (z == {treated!r}) and controls")
    active = importances.to_numpy() > 0
    values = X.loc[:, active].fillna(0.0).to_numpy(dtype=float)
    z_all = np.column_stack([np.ones(len(X)), values])
    prior_global = np.concatenate(
        [[sigma_intercept**-2], 1.0 / (scale * importances.to_numpy()[active])]
    )
    problem = make_problem(
        z_all,
        treatment,
        np.zeros(len(X), dtype=np.int64),
        np.zeros((1, 0)),
        np.array([], dtype=np.int64),
        prior_global,
        np.array([]),
    )
    trace = newton_solve(problem, tol=tol, max_iterations=max_iterations)
    if not trace.converged:
        raise ConvergenceError(
            f"the constraint weights did not converge in {trace.iterations} iterations "
            f"(largest gradient {trace.max_gradient:.3g}); lower scale or the largest importances"
        )
    weights = np.ones(len(X))
    weights[problem.order] = trace.control_weights
    coefficients = pd.Series(0.0, index=X.columns, name="coefficient")
    coefficients[X.columns[active]] = trace.theta_global[1:]
    return ConstraintFit(
        pd.Series(weights, index=X.index, name="weight"),
        treatment,
        X,
        importances,
        coefficients,
        trace,
    )
