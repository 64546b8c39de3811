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
Schur complement on the global block, with batched Cholesky factors of the local blocks.
All data-dependent work is the per-group moment matrix ``M_j = Σ_{controls in j} w_i z_i
z_i'`` and the predictors ``η``: the controls are laid out once per design in buckets of
groups of similar size, zero-padded to a common width, so that both are a few batched matrix
products rather than one small product per group. Each step minimizes the objective roughly
along the Newton direction (the exponential loss makes full steps too short or too long far
from the optimum); near the optimum, steps reuse the last factorization while they keep
contracting the gradient fast.
"""

from __future__ import annotations

import functools
import itertools
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
from threadpoolctl import ThreadpoolController

from hierps.data import Design
from hierps.estimands import GroupSums, att_from_catt, catt_from_weights, kish_ess
from hierps.exceptions import ConvergenceError, HierpsWarning
from hierps.hyperparameters import MapHyperparameters

__all__ = ["MapResult", "fit_map", "hierarchical_problem", "newton_solve", "objective"]

# A bucket holds groups whose control counts are within this factor of its smallest (the
# padding costs at most that much extra work) and at most CHUNK_ROWS padded rows, which
# bounds the temporaries of the batched products.
BUCKET_GROWTH = 1.5
CHUNK_ROWS = 1 << 16
# The solver's matrices are small (one block per group): threaded BLAS only adds overhead,
# several-fold on a busy machine, so its calls run on one thread.
_BLAS = ThreadpoolController()
EXTREME_WEIGHT_SHARE = 0.5
ARMIJO = 1e-4
# The line search stops refining once |φ'(t)| ≤ CURVATURE·|φ'(0)| (a strong Wolfe condition).
CURVATURE = 0.01
LINE_SEARCH_STEPS = 30
# Once a Newton step cuts the largest gradient by this factor, the Hessian has settled:
# later steps reuse its factorization while each cuts the gradient by as much again.
CHORD = 0.03


@dataclass(frozen=True, eq=False)
class Bucket:
    """Consecutive groups of similar control counts, their controls padded to one width."""

    groups: slice  # the bucket's groups, in the solver's order
    rows: slice  # their span of the padded control vector, group after group
    z: np.ndarray  # (J_b, D, width): z' of each group's controls, zero columns as padding

    @property
    def z_rows(self) -> np.ndarray:
        """``(J_b, width, D)`` view of ``z``."""
        return self.z.transpose(0, 2, 1)


@dataclass(frozen=True, eq=False)
class ControlLayout:
    """Everything the solver needs from the unit rows: the controls in padded buckets.

    The solver numbers the groups by control count (groups without controls last), so that
    each bucket's groups are a slice; ``group_order`` maps them back to the input codes.
    """

    buckets: tuple[Bucket, ...]
    group_order: np.ndarray  # (J,) input code of each solver group
    slots: np.ndarray  # (n_controls,) position of each control in the padded vector
    order: np.ndarray  # (n_controls,) its row in the input, in the same order as slots
    padding: np.ndarray  # (n_padded,) η offset: 0 at controls, -inf at padding (w = 0)
    treated_moments: np.ndarray  # (J, D): Σ_treated z per group, in the solver's order
    gram: np.ndarray  # (J, D, D): Σ_controls z z' per group


@dataclass(frozen=True, eq=False)
class CalibratedProblem:
    """The calibrated-loss problem in the solver's layout.

    Global coefficients are ``(a0, γ, μ)``: group ``j``'s coefficients on ``z = (1, x)`` are
    ``(a0 + v_j'γ, μ)`` plus its local deviations ``(u_j, δ_j)`` on the ``z`` entries
    ``local_index``. With no groups of interest (one group, no local entries) the problem is
    a plain regularized calibration on the columns of ``x``. Per-group arrays are in the
    layout's group order.
    """

    layout: ControlLayout
    intercept_design: np.ndarray  # (J, 1 + p): (1, v_j), so that α_j = (1, v_j)·(a0, γ) + u_j
    local_index: np.ndarray  # (K,) indices into z
    prior_global: np.ndarray  # (G,) prior precisions
    prior_local: np.ndarray  # (K,) prior precisions

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return self.layout.buckets

    @property
    def group_order(self) -> np.ndarray:
        return self.layout.group_order

    @property
    def slots(self) -> np.ndarray:
        return self.layout.slots

    @property
    def order(self) -> np.ndarray:
        return self.layout.order

    @property
    def padding(self) -> np.ndarray:
        return self.layout.padding

    @property
    def treated_moments(self) -> np.ndarray:
        return self.layout.treated_moments

    @property
    def n_groups(self) -> int:
        return self.treated_moments.shape[0]

    @property
    def dimension(self) -> int:
        return self.treated_moments.shape[1]

    @property
    def n_global(self) -> int:
        return len(self.prior_global)

    @property
    def n_local(self) -> int:
        return len(self.local_index)

    @functools.cached_property
    def all_local(self) -> bool:
        """Whether every entry of ``z`` has per-group deviations, in order (B = I)."""
        return self.n_local == self.dimension and bool(
            np.all(self.local_index == np.arange(self.dimension))
        )


# Layouts of the designs fitted so far: a pooling path or a tuning grid refits one design
# many times, and the layout depends on its rows only. Entries go with their designs.
_LAYOUTS: weakref.WeakKeyDictionary[Design, ControlLayout] = weakref.WeakKeyDictionary()


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
    return _problem(
        layout,
        design.group_matrix,
        np.concatenate([[0], 1 + varying_index]),
        prior_global,
        prior_local,
    )


def _problem(layout, group_design, local_index, prior_global, prior_local) -> CalibratedProblem:
    n_groups = len(layout.group_order)
    group_design = np.asarray(group_design, dtype=float).reshape(n_groups, -1)
    return CalibratedProblem(
        layout=layout,
        intercept_design=np.column_stack([np.ones(n_groups), group_design[layout.group_order]]),
        local_index=np.asarray(local_index, dtype=np.int64),
        prior_global=np.asarray(prior_global, dtype=float),
        prior_local=np.asarray(prior_local, dtype=float),
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
    """Lay out a calibrated-loss problem for the Newton solver.

    Parameters
    ----------
    z_all
        ``(n, D)``: ``z = (1, x)`` of every unit; the first column must be the constant 1.
    treatment
        ``(n,)``: 1 for treated units, 0 for controls.
    codes
        ``(n,)``: group code of every unit, in ``0 .. J − 1``.
    group_design
        ``(J, p)``: the group covariates ``v_j``.
    local_index
        ``(K,)``: the entries of ``z`` with per-group deviations (may be empty).
    prior_global, prior_local
        Prior precisions of ``(a0, γ, μ)`` and of each group's deviations.

    Returns
    -------
    CalibratedProblem
    """
    if not np.all(z_all[:, 0] == 1.0):
        raise ValueError("the first column of z_all must be the constant 1")
    treated = np.asarray(treatment) == 1
    layout = lay_out_controls(z_all[:, 1:], treated, codes, len(group_design))
    return _problem(layout, group_design, local_index, prior_global, prior_local)


def lay_out_controls(
    x: np.ndarray, treated: np.ndarray, codes: np.ndarray, n_groups: int
) -> ControlLayout:
    """Lay out the controls of ``z = (1, x)`` in padded buckets of groups of similar size.

    Parameters
    ----------
    x
        ``(n, D − 1)``: the unit covariates of every unit.
    treated
        ``(n,)`` booleans.
    codes
        ``(n,)``: group code of every unit, in ``0 .. n_groups − 1``.
    n_groups
        The number of groups.

    Returns
    -------
    ControlLayout
    """
    control_rows = np.flatnonzero(~treated)
    control_codes = codes[control_rows]
    counts = np.bincount(control_codes, minlength=n_groups)
    group_order = np.argsort(counts, kind="stable")
    n_empty = int(np.count_nonzero(counts == 0))
    group_order = np.r_[group_order[n_empty:], group_order[:n_empty]]  # empty groups last
    sizes = counts[group_order]
    cuts = _bucket_cuts(sizes[: n_groups - n_empty])
    widths = np.zeros(n_groups, dtype=np.int64)  # per solver group
    for start, stop in itertools.pairwise(cuts):
        widths[start:stop] = sizes[stop - 1]
    group_start = np.cumsum(widths) - widths
    rank = np.empty(n_groups, dtype=np.int64)
    rank[group_order] = np.arange(n_groups)
    control_ranks = rank[control_codes]
    by_rank = np.argsort(control_ranks, kind="stable")
    order, sorted_ranks = control_rows[by_rank], control_ranks[by_rank]
    first_of_group = np.cumsum(sizes) - sizes
    slots = group_start[sorted_ranks] + np.arange(len(order)) - first_of_group[sorted_ranks]

    padding = np.full(int(widths.sum()), -np.inf)
    padding[slots] = 0.0
    source = np.zeros(len(padding), dtype=np.int64)
    source[slots] = order
    gathered = np.take(x, source, axis=0)
    gathered[np.flatnonzero(np.isinf(padding))] = 0.0
    dimension = 1 + x.shape[1]
    buckets = []
    for start, stop in itertools.pairwise(cuts):
        n_bucket, width = stop - start, int(widths[start])
        rows = slice(int(group_start[start]), int(group_start[start]) + n_bucket * width)
        z = np.empty((n_bucket, dimension, width))
        z[:, 0] = np.exp(padding[rows]).reshape(n_bucket, width)  # 1, or 0 at padding
        z[:, 1:] = gathered[rows].reshape(n_bucket, width, dimension - 1).transpose(0, 2, 1)
        buckets.append(Bucket(slice(start, stop), rows, z))

    treated_moments = np.empty((n_groups, dimension))
    treated_moments[:, 0] = np.bincount(rank[codes[treated]], minlength=n_groups)
    # Σ_T x per group as one sparse product: np.add.at is an order of magnitude slower.
    indicator = sp.csc_array(
        (treated.astype(float), rank[codes], np.arange(len(codes) + 1)),
        shape=(n_groups, len(codes)),
    )
    treated_moments[:, 1:] = indicator @ x
    gram = np.zeros((n_groups, dimension, dimension))
    for bucket in buckets:
        np.matmul(bucket.z, bucket.z_rows, out=gram[bucket.groups])
    return ControlLayout(tuple(buckets), group_order, slots, order, padding, treated_moments, gram)


def _bucket_cuts(sizes) -> list[int]:
    """Cut increasing group sizes into runs within BUCKET_GROWTH and CHUNK_ROWS padded rows."""
    sizes = sizes.tolist()  # plain ints: NumPy scalars make this loop slow
    cuts = [0]
    for i in range(1, len(sizes)):
        first = cuts[-1]
        if sizes[i] > BUCKET_GROWTH * sizes[first] or (i + 1 - first) * sizes[i] > CHUNK_ROWS:
            cuts.append(i)
    return [*cuts, len(sizes)] if sizes else [0]


def group_coefficients(
    problem: CalibratedProblem, theta_global: np.ndarray, theta_local: np.ndarray | None = None
) -> np.ndarray:
    """``c_j = A_j' θ_global + B' θ_local_j``: each group's coefficients on ``z`` (J, D)."""
    n_intercept = problem.intercept_design.shape[1]
    coefficients = np.empty((problem.n_groups, problem.dimension))
    coefficients[:, 0] = problem.intercept_design @ theta_global[:n_intercept]
    coefficients[:, 1:] = theta_global[n_intercept:]
    if theta_local is not None and problem.all_local:
        coefficients += theta_local
    elif theta_local is not None and problem.n_local:
        coefficients[:, problem.local_index] += theta_local
    return coefficients


def _sum_to_global(problem: CalibratedProblem, per_group: np.ndarray) -> np.ndarray:
    """``Σ_j A_j x_j`` for per-group vectors on ``z`` (J, D): the adjoint of the global part
    of :func:`group_coefficients`."""
    intercept = problem.intercept_design.T @ per_group[:, 0]
    return np.concatenate([intercept, per_group[:, 1:].sum(axis=0)])


def _global_quadratic(problem: CalibratedProblem, moments: np.ndarray) -> np.ndarray:
    """``Σ_j A_j M_j A_j' + diag(prior_global)`` for per-group matrices on ``z`` (J, D, D).

    ``A_j`` maps ``(a0, γ, μ)`` to ``z`` as ``[(1, v_j) e_0'; (0 I)]``: the blocks are
    written out, so no (J, G, D) array is ever formed.
    """
    design = problem.intercept_design
    q = design.shape[1]
    quadratic = np.empty((problem.n_global, problem.n_global))
    quadratic[:q, :q] = (design.T * moments[:, 0, 0]) @ design
    quadratic[:q, q:] = design.T @ moments[:, 0, 1:]
    quadratic[q:, :q] = quadratic[:q, q:].T
    quadratic[q:, q:] = moments[:, 1:, 1:].sum(axis=0)
    quadratic.flat[:: problem.n_global + 1] += problem.prior_global
    return quadratic


def _padded_products(problem: CalibratedProblem, coefficients: np.ndarray) -> np.ndarray:
    """``z_i · c_j`` at every slot of the padded control vector (0 at padding)."""
    products = np.empty(len(problem.padding))
    for bucket in problem.buckets:
        out = products[bucket.rows].reshape(bucket.z.shape[0], 1, -1)
        np.matmul(coefficients[bucket.groups, None, :], bucket.z, out=out)
    return products


def linear_predictor(problem: CalibratedProblem, coefficients: np.ndarray) -> np.ndarray:
    """η of every slot of the padded control vector: ``-inf`` at padding, so ``exp(η) = 0``."""
    return _padded_products(problem, coefficients) + problem.padding


def accumulate_moments(problem: CalibratedProblem, w: np.ndarray) -> np.ndarray:
    """``M_j = Σ_{controls in j} w z z'`` for every group (J, D, D), from padded weights."""
    moments = np.zeros((problem.n_groups, problem.dimension, problem.dimension))
    for bucket in problem.buckets:
        weighted = bucket.z * w[bucket.rows].reshape(bucket.z.shape[0], 1, -1)
        np.matmul(weighted, bucket.z_rows, out=moments[bucket.groups])
    return moments


def _first_moments(problem: CalibratedProblem, w: np.ndarray) -> np.ndarray:
    """``Σ_{controls in j} w z`` for every group (J, D): all the gradient needs."""
    first = np.zeros((problem.n_groups, problem.dimension))
    for bucket in problem.buckets:
        weights = w[bucket.rows].reshape(bucket.z.shape[0], -1, 1)
        np.matmul(bucket.z, weights, out=first[bucket.groups, :, None])
    return first


@dataclass
class NewtonTrace:
    """Outcome of the Newton iterations."""

    theta_global: np.ndarray
    theta_local: np.ndarray  # (J, K) in the input's group order
    objective: float
    max_gradient: float
    iterations: int
    converged: bool
    control_weights: np.ndarray  # in the order of problem.order
    history: list[float] = field(default_factory=list)
    control_eta: np.ndarray | None = None  # log weights, same order (exact where w underflows)


def _objective(problem, theta_global, theta_local, weight_total) -> float:
    coefficients = group_coefficients(problem, theta_global, theta_local)
    treated_eta = float(np.sum(problem.treated_moments * coefficients))
    penalty = 0.5 * (
        np.sum(problem.prior_global * theta_global**2)
        + np.sum(problem.prior_local * theta_local**2)
    )
    return weight_total - treated_eta + penalty


def objective(
    problem: CalibratedProblem, theta_global: np.ndarray, theta_local: np.ndarray
) -> float:
    """The calibrated-loss objective with its prior penalties at any parameter value.

    ``theta_local`` is ``(J, K)`` in the input's group order.
    """
    theta_local = np.asarray(theta_local, dtype=float).reshape(problem.n_groups, problem.n_local)
    theta_local = theta_local[problem.group_order]
    eta = linear_predictor(problem, group_coefficients(problem, theta_global, theta_local))
    with np.errstate(over="ignore"):
        return _objective(problem, theta_global, theta_local, float(np.exp(eta).sum()))


def _gradient(problem, theta_global, theta_local, first_moments):
    """Gradients of the global and local coefficients from ``Σ_C w z`` per group."""
    imbalance = first_moments - problem.treated_moments  # Σ_C w z − Σ_T z per group
    gradient_global = _sum_to_global(problem, imbalance) + problem.prior_global * theta_global
    local = imbalance if problem.all_local else imbalance[:, problem.local_index]
    return gradient_global, local + problem.prior_local * theta_local


def _inverse_lower(factor: np.ndarray) -> np.ndarray:
    """Inverses of a stack of lower-triangular matrices (J, K, K) by forward substitution.

    Row ``k`` of every inverse at once, ``X_k,<k = −(R_k,<k / R_kk) X_<k,<k``: K batched
    products are several times cheaper than LAPACK's triangular solves, whose per-matrix
    overhead dominates at this size.
    """
    reciprocal = 1.0 / np.diagonal(factor, axis1=1, axis2=2)
    scaled = factor * -reciprocal[:, :, None]
    inverse = np.zeros_like(factor)
    np.einsum("jkk->jk", inverse)[...] = reciprocal
    for k in range(1, factor.shape[-1]):
        np.matmul(scaled[:, k, None, :k], inverse[:, :k, :k], out=inverse[:, k, None, :k])
    return inverse


def _spd_inverse(blocks: np.ndarray) -> np.ndarray:
    """Inverses of a stack of symmetric positive definite matrices, ``R⁻ᵀ R⁻¹``."""
    try:
        inverse_factor = _inverse_lower(np.linalg.cholesky(blocks))
    except np.linalg.LinAlgError:  # rounding broke the positive definiteness: LU instead
        return np.linalg.inv(blocks)
    # A contiguous transpose: matmul takes a slow path on transposed views.
    return np.ascontiguousarray(inverse_factor.transpose(0, 2, 1)) @ inverse_factor


@dataclass(frozen=True)
class Factorization:
    """The block Newton system at one point, reduced to what any right-hand side needs.

    With the local block ``L_j = B M_j B' + P_l`` and the coupling ``N_j = B M_j`` (the
    global-local Hessian block is ``N_j A_j'``), the Schur complement of the local blocks is
    the global quadratic form of the residual moments ``M_j − N_j' L_j⁻¹ N_j``. When every
    entry of ``z`` is local (``B = I``), ``N_j = L_j − P_l`` and the residual moments are
    ``P_l − P_l L_j⁻¹ P_l``: ``L_j⁻¹`` is all that is kept.
    """

    local_inverse: np.ndarray  # L_j⁻¹ (J, K, K)
    schur_inverse: np.ndarray  # (G, G)
    solved_coupling: np.ndarray | None = None  # L_j⁻¹ N_j (J, K, D) unless B = I
    coupling_transpose: np.ndarray | None = None  # N_j' (J, D, K) unless B = I


def _factorize(problem: CalibratedProblem, moments: np.ndarray) -> Factorization:
    if problem.n_local == 0:
        empty = np.zeros((problem.n_groups, 0, 0))
        return Factorization(empty, np.linalg.inv(_global_quadratic(problem, moments)))
    local, prior = problem.local_index, problem.prior_local
    block = moments if problem.all_local else moments[:, local][:, :, local]
    local_inverse = _spd_inverse(block + np.diag(prior))
    if problem.all_local:
        residual = local_inverse * -np.outer(prior, prior)
        residual.reshape(len(residual), -1)[:, :: problem.n_local + 1] += prior
        return Factorization(local_inverse, np.linalg.inv(_global_quadratic(problem, residual)))
    coupling, coupling_transpose = moments[:, local, :], moments[:, :, local]
    solved_coupling = local_inverse @ coupling
    residual = moments - coupling_transpose @ solved_coupling
    schur_inverse = np.linalg.inv(_global_quadratic(problem, residual))
    return Factorization(local_inverse, schur_inverse, solved_coupling, coupling_transpose)


def _newton_direction(problem, factorization, gradient_global, gradient_local):
    """Solve the block Newton system by the Schur complement on the global block.

    ``Δθ_global = S⁻¹ (Σ_j A_j N_j' L_j⁻¹ g_j − g_global)`` and
    ``δ_j = −L_j⁻¹ (g_j + N_j A_j' Δθ_global)``.
    """
    f = factorization
    if problem.n_local == 0:
        return -f.schur_inverse @ gradient_global, np.zeros((problem.n_groups, 0))
    solved_gradient = (f.local_inverse @ gradient_local[:, :, None])[:, :, 0]  # L_j⁻¹ g_j
    if f.solved_coupling is None:  # N_j = L_j − P_l
        prior = problem.prior_local
        rhs = _sum_to_global(problem, gradient_local - prior * solved_gradient)
        step_global = f.schur_inverse @ (rhs - gradient_global)
        pushed = group_coefficients(problem, step_global)
        correction = f.local_inverse @ (gradient_local - prior * pushed)[:, :, None]
        return step_global, -(pushed + correction[:, :, 0])
    rhs = _sum_to_global(problem, (f.coupling_transpose @ solved_gradient[:, :, None])[:, :, 0])
    step_global = f.schur_inverse @ (rhs - gradient_global)
    pushed = group_coefficients(problem, step_global)[:, :, None]
    return step_global, -(solved_gradient + (f.solved_coupling @ pushed)[:, :, 0])


def newton_solve(
    problem: CalibratedProblem,
    theta_global: np.ndarray | None = None,
    theta_local: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iterations: int = 100,
) -> NewtonTrace:
    """Minimize the calibrated-loss objective by damped Newton steps.

    Parameters
    ----------
    problem
        From :func:`make_problem` or :func:`hierarchical_problem`.
    theta_global, theta_local
        Starting point (``theta_local`` ``(J, K)`` in the input's group order); by default
        ``a0 = log(n_treated / n_controls)`` and the rest 0.
    tol
        Stop when the largest absolute gradient entry is at most ``tol``.
    max_iterations
        Newton steps before giving up (the trace then reports ``converged=False``).

    Returns
    -------
    NewtonTrace
    """
    if theta_global is None:
        theta_global = np.zeros(problem.n_global)
        # Start with the weights summing to the treated count: a0 = log(n1 / n0).
        n_treated = problem.treated_moments[:, 0].sum()
        theta_global[0] = np.log(n_treated / max(len(problem.order), 1))
    if theta_local is None:
        theta_local = np.zeros((problem.n_groups, problem.n_local))
    theta_global = np.array(theta_global, dtype=float)
    theta_local = np.asarray(theta_local, dtype=float)[problem.group_order]
    with _BLAS.limit(limits=1, user_api="blas"):
        trace = _newton_iterations(problem, theta_global, theta_local, tol, max_iterations)
    in_input_order = np.empty_like(trace.theta_local)
    in_input_order[problem.group_order] = trace.theta_local
    trace.theta_local = in_input_order
    return trace


def _newton_iterations(problem, theta_global, theta_local, tol, max_iterations) -> NewtonTrace:
    # At the default start every control has η = a0: the moments are the Gram matrices.
    uniform = not (np.any(theta_global[1:]) or np.any(theta_local))
    if uniform:
        eta = problem.padding + theta_global[0]
    else:
        eta = linear_predictor(problem, group_coefficients(problem, theta_global, theta_local))
    with np.errstate(over="ignore"):
        w = np.exp(eta)
    objective = _objective(problem, theta_global, theta_local, w.sum())
    history = [objective]
    max_gradient = np.inf
    converged = contracted = False
    factorization = None
    for iteration in range(max_iterations + 1):
        # Once a step has cut the largest gradient by CHORD, the Hessian has settled: the
        # gradient alone decides between convergence and a chord step that reuses the last
        # factorization, for as long as the steps keep contracting as fast.
        settled = contracted
        if iteration == 0 and uniform:
            moments = problem.layout.gram * np.exp(theta_global[0])
        else:
            moments = None if settled else accumulate_moments(problem, w)
        first = _first_moments(problem, w) if settled else moments[:, :, 0]
        gradient_global, gradient_local = _gradient(problem, theta_global, theta_local, first)
        largest = float(
            max(np.abs(gradient_global).max(initial=0.0), np.abs(gradient_local).max(initial=0.0))
        )
        contracted, max_gradient = iteration > 0 and largest <= CHORD * max_gradient, largest
        if max_gradient <= tol:
            converged = True
            break
        if iteration == max_iterations:
            break
        if settled and not contracted:
            settled, moments = False, accumulate_moments(problem, w)
        if not settled:
            factorization = _factorize(problem, moments)
        step_global, step_local = _newton_direction(
            problem, factorization, gradient_global, gradient_local
        )
        step_eta = _padded_products(problem, group_coefficients(problem, step_global, step_local))
        slope = float(gradient_global @ step_global + np.sum(gradient_local * step_local))
        step, w, objective = _line_search(
            problem, (step_global, step_local), w, eta, step_eta, objective, slope
        )
        if step == 0.0 and settled:
            contracted = False  # the reused factorization failed: take a fresh one
            continue
        if step == 0.0:
            # No further descent is possible in floating point: report where we are.
            break
        theta_global = theta_global + step * step_global
        theta_local = theta_local + step * step_local
        eta = eta + step * step_eta
        history.append(objective)
    # The line searches update the objective incrementally: report it evaluated afresh.
    objective = _objective(problem, theta_global, theta_local, w.sum())
    return NewtonTrace(
        theta_global,
        theta_local,
        objective,
        max_gradient,
        iteration,
        converged,
        w[problem.slots],
        history,
        eta[problem.slots],
    )


def _line_search(problem, step, w, eta, step_eta, objective, slope):
    """Step length along a descent direction, the weights and objective there (t = 0: none).

    ``φ(t) = f(θ + tΔ)`` is convex and costs one exponential per control: safeguarded Newton
    steps on ``φ'`` bring ``t`` near the line minimum (Newton steps of the exponential loss
    are often 20–30% short, or far too long from a poor start, and a rough line minimum
    saves whole iterations); the Armijo test, with backtracking, then guards the decrease.
    """
    step_global, step_local = step
    curvature = float(
        problem.prior_global @ step_global**2 + np.sum(problem.prior_local * step_local**2)
    )
    # Along the line only Σ_C w changes non-linearly: the treated and prior terms are
    # quadratic in t, so φ(t) = φ(0) + Σ w(t) − Σ w(0) + offset·t + curvature·t²/2.
    weight_total = w.sum()
    offset = slope - float(w @ step_eta)

    def value(t: float, trial_w: np.ndarray) -> float:
        return objective + (trial_w.sum() - weight_total) + t * (offset + 0.5 * curvature * t)

    # When the predicted decrease is below the rounding error of the objective, the
    # Armijo test compares noise; near the optimum the full Newton step is right.
    trust_full_step = -slope <= 1e-11 * max(1.0, abs(objective))
    t, low, high = 1.0, 0.0, np.inf
    for _ in range(LINE_SEARCH_STEPS):
        with np.errstate(over="ignore", invalid="ignore"):
            trial_w = np.exp(eta + t * step_eta)
            weighted = trial_w * step_eta
            derivative = weighted.sum() + offset + curvature * t
        if trust_full_step or abs(derivative) <= CURVATURE * -slope:
            break
        if derivative < 0:
            low = t
        else:  # also when the weights overflowed (nan or inf)
            high = t
        with np.errstate(over="ignore", invalid="ignore"):
            t = t - derivative / (weighted @ step_eta + curvature)
        if not low < t < high:
            t = 0.5 * (low + high) if np.isfinite(high) else 2.0 * low
    else:
        with np.errstate(over="ignore"):
            trial_w = np.exp(eta + t * step_eta)
    while t >= 1e-12:
        trial = value(t, trial_w)
        if trust_full_step or trial <= objective + ARMIJO * t * slope:
            return t, trial_w, trial
        t *= 0.5
        with np.errstate(over="ignore"):
            trial_w = np.exp(eta + t * step_eta)
    return 0.0, w, objective


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

    Notes
    -----
    The solver's layout of the controls (a padded copy of their covariates) is kept with the
    design for as long as the design lives, so that refits with other prior scales skip it.
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


def _short(labels: list) -> str:
    shown = ", ".join(repr(label) for label in labels[:5])
    return shown + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
