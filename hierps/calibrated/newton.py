"""The block-structured Newton method for the calibrated-loss objective.

With prior precisions ``P_g`` of the global coefficients ``(a0, γ, μ)`` and ``P_l`` of each
group's local deviations ``(u_j, δ_j)``, the solver minimizes::

    f(θ) = Σ_controls exp(η_i) − Σ_treated η_i + θ_global' P_g θ_global / 2
           + Σ_j θ_local_j' P_l θ_local_j / 2

over a :class:`~hierps.calibrated.problem.CalibratedProblem`. The Hessian has one block per
group for ``(u_j, δ_j)``, a small global block for ``(a0, γ, μ)`` and their coupling; Newton
steps solve it by the Schur complement on the global block, with batched Cholesky factors of
the local blocks. Each step minimizes the objective roughly along the Newton direction (the
exponential loss makes full steps too short or too long far from the optimum); near the
optimum, steps reuse the last factorization while they keep contracting the gradient fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController

from hierps.calibrated.problem import CalibratedProblem

__all__ = ["NewtonTrace", "newton_solve", "objective"]

# The solver's matrices are small (one block per group): threaded BLAS only adds overhead,
# several-fold on a busy machine, so its calls run on one thread.
_BLAS = ThreadpoolController()
ARMIJO = 1e-4
# The line search stops refining once |φ'(t)| ≤ CURVATURE·|φ'(0)| (a strong Wolfe condition).
CURVATURE = 0.01
LINE_SEARCH_STEPS = 30
# Once a Newton step cuts the largest gradient by this factor, the Hessian has settled:
# later steps reuse its factorization while each cuts the gradient by as much again.
CHORD = 0.03


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


def starting_point(
    problem: CalibratedProblem, theta_global: np.ndarray | None, theta_local: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the given coefficients (local ones in the problem's group order), or the
    default start: weights summing to the treated count, a0 = log(n1 / n0) (both counts carry
    the base weights, if any), everything else 0."""
    if theta_global is None:
        theta_global = np.zeros(problem.n_global)
        n_treated = problem.treated_moments[:, 0].sum()
        n_controls = problem.layout.gram[:, 0, 0].sum()
        theta_global[0] = np.log(n_treated / n_controls) if n_controls > 0 else 0.0
    if theta_local is None:
        theta_local = np.zeros((problem.n_groups, problem.n_local))
    theta_local = np.array(theta_local, dtype=float)[problem.group_order]
    return np.array(theta_global, dtype=float), theta_local


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
        From :func:`hierps.calibrated.problem.make_problem` or
        :func:`hierps.calibrated.hierarchy.hierarchical_problem`.
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
    theta_global, theta_local = starting_point(problem, theta_global, theta_local)
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


Pair = tuple[np.ndarray, np.ndarray]


def pair_dot(a: Pair, b: Pair) -> float:
    """The inner product of two (global, local) coefficient pairs."""
    return float(a[0] @ b[0] + np.sum(a[1] * b[1]))


def pair_conjugate_gradients(
    apply: Callable[[Pair], Pair],
    precondition: Callable[[Pair], Pair],
    x: Pair,
    residual: Pair,
    target: float,
    max_iterations: int,
    deflate: Callable[[Pair], Pair] | None = None,
) -> tuple[Pair, int]:
    """Preconditioned conjugate gradients on (global, local) pairs from ``x`` with its
    ``residual``, until the residual norm is at most ``target`` or the curvature fails.

    ``deflate`` projects the search directions (a deflated method: the caller has solved the
    system exactly on a subspace). Returns the solution and the iterations taken.
    """
    z = precondition(residual)
    p = z if deflate is None else deflate(z)
    rz = pair_dot(residual, z)
    iterations = 0
    for _ in range(max_iterations):
        if np.sqrt(pair_dot(residual, residual)) <= target:
            break
        iterations += 1
        hp = apply(p)
        curvature = pair_dot(p, hp)
        if not curvature > 0:
            break
        alpha = rz / curvature
        x = (x[0] + alpha * p[0], x[1] + alpha * p[1])
        residual = (residual[0] - alpha * hp[0], residual[1] - alpha * hp[1])
        z = precondition(residual)
        rz, previous = pair_dot(residual, z), rz
        direction = z if deflate is None else deflate(z)
        p = (direction[0] + rz / previous * p[0], direction[1] + rz / previous * p[1])
    return x, iterations
