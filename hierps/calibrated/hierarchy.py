"""The hierarchical model laid out for the solver, and per-group weight totals of a solution.

:func:`hierarchical_problem` turns a design and its prior scales into the calibrated-loss problem
of one weighted arm (docs/math.md §5–§9); :func:`relative_to_largest` reads a solution's weights
relative to each group's largest, with the totals the effects and warnings need.
"""

from __future__ import annotations

import numpy as np

from hierps.calibrated.arms import Arm, arm_layout, arms_of
from hierps.calibrated.newton import NewtonTrace
from hierps.calibrated.problem import CalibratedProblem, _problem
from hierps.design.build import Design
from hierps.design.hyperparameters import MapHyperparameters

__all__ = ["PRECISION_BOUNDS", "hierarchical_problem", "relative_to_largest"]

# Prior precisions are held within [1e-8, 1e12] (scales 1e-6 … 1e4 on standardized
# covariates): beyond them the balance a scale buys differs from its limit (complete or no
# pooling) by about the solver's tolerance, and the Newton blocks only lose digits or turn
# singular.
PRECISION_BOUNDS = (1e-8, 1e12)


def relative_to_largest(
    design: Design, problem: CalibratedProblem, trace: NewtonTrace
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each weighted unit's weight over its group's largest, and per-group totals."""
    # The weighted units come in runs of one group each: per-group reductions are reduceat's.
    codes = design.group_codes[problem.order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else []
    groups = codes[starts]

    def per_group(reduce: np.ufunc, values: np.ndarray, empty: float) -> np.ndarray:
        out = np.full(design.n_groups, empty)
        if len(groups):
            out[groups] = reduce.reduceat(values, starts)
        return out

    largest = per_group(np.maximum, trace.control_eta, -np.inf)
    relative = np.exp(trace.control_eta - np.where(np.isfinite(largest), largest, 0.0)[codes])
    # The largest share of a group's weight on one unit, from the balancing weights alone
    # (base weights are how many units a row stands for, not a concentration of weight).
    base = design.unit_weights[problem.order]
    balancing = relative / base
    top = per_group(np.maximum, balancing, 0.0)
    totals = {
        "count": per_group(np.add, np.ones(len(codes)), 0.0),
        "share": np.divide(
            top,
            per_group(np.add, balancing, 0.0),
            out=np.zeros(design.n_groups),
            where=top > 0,
        ),
        "weight": per_group(np.add, trace.control_weights, 0.0),
    }
    return relative, totals


def hierarchical_problem(
    design: Design, hyperparameters: MapHyperparameters, arm: Arm | None = None
) -> CalibratedProblem:
    """Lay out the hierarchical model of a design for the Newton solver.

    ``arm`` chooses the weighted units and their target (see
    :mod:`hierps.calibrated.arms`); by default the ATT's controls and treated.
    """
    layout = arm_layout(design, arms_of("att")[0] if arm is None else arm)
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
