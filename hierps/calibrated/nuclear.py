"""The exact finish of the nuclear-norm MAP: rank changes and tangent Newton steps.

:mod:`hierps.calibrated.proximal` follows the smoothed optima down to ``ε = 10⁻³``; from there
:func:`nuclear_finish` reaches the exact optimum (docs/math.md §19). With every ``δ_j`` in a row
space ``span(V)`` of dimension ``r`` the penalty is the nuclear norm of a full-rank ``J × r``
matrix, which is smooth, and the solver's Newton method solves that problem exactly. The
optimality conditions left decide the next move: a direction where the imbalance breaks the
bound joins ``V``, a collapsed one leaves, and otherwise a Newton step in the tangent space of
the rank-``r`` matrices moves ``V``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hierps.calibrated.deviations import InBasis
from hierps.calibrated.newton import (
    _gradient,
    _newton_direction,
    pair_conjugate_gradients,
    pair_dot,
)

if TYPE_CHECKING:
    from hierps.calibrated.proximal import _Solver, _State

__all__ = ["nuclear_finish"]

# A singular value counts as active above about 7 ε.
NUCLEAR_SLOPE = 1e-2
# Rounds of the nuclear-norm finish (exact solve on a row space, then a change of rank or a
# tangent step).
NUCLEAR_ROUNDS = 12
# The smoothing whose curvature the tangent steps use (only its curvature across the two
# subspaces acts: the steps are projected on the tangent space).
TANGENT_SMOOTHING = 1e-6
# The relative residual of the tangent steps' conjugate gradients: their gradients are
# already small, so this keeps the convergence fast without solving to rounding.
TANGENT_FORCING = 1e-4
# Conjugate-gradient iterations of a tangent step.
TANGENT_CG_ITERATIONS = 500


def _project(free: np.ndarray | None, local: np.ndarray) -> np.ndarray:
    """Each group's local vector projected by its ``free`` projector (J, K, K)."""
    if free is None:
        return local
    return (free @ local[:, :, None])[:, :, 0]


def _worst(kkt: dict[str, float]) -> float:
    return max(kkt["smooth_gradient"], kkt["stationarity"], kkt["dual_feasibility"])


def nuclear_finish(solver: _Solver, state: _State, epsilon: float):
    """Exact nuclear-norm optimum on the row space of the smoothed deviations.

    The smoothed optimum's large singular values give a rank ``r`` and the covariate
    directions ``V`` (d × r). With every ``δ_j`` in ``span(V)``, ``Δ = C V'`` and the
    penalty is ``‖C‖_*``, smooth where ``C`` has rank ``r``: Newton (conjugate gradients
    on its exact Hessian) solves that problem to ``tol``. Then, by the optimality
    conditions left:

    - the imbalance outside both subspaces breaks the bound (``‖W‖_2 > 1``): the rank is
      too low, and its top singular direction joins ``V``;
    - the exact solve let a singular value of ``C`` fall to 0: the rank is too high;
    - otherwise ``V`` is off (the smoothing leaves it off by about ``ε``): the mixed
      blocks ``U'R(I − VV')``, ``(I − UU')RV`` are not 0. Newton steps on the exact
      gradient in the tangent space of the rank-``r`` matrices, then the exact solve on the
      new row space, converge quadratically.
    """
    _, sigma, _ = np.linalg.svd(state.delta, full_matrices=False)
    rank = int(np.count_nonzero(sigma / np.hypot(sigma, epsilon) >= 1.0 - NUCLEAR_SLOPE))
    best = None
    for _ in range(NUCLEAR_ROUNDS):
        v = np.linalg.svd(state.delta, full_matrices=False)[2][:rank].T
        free = np.zeros((solver.problem.n_local, solver.problem.n_local))
        free[0, 0] = 1.0
        free[1:, 1:] = v @ v.T
        free = np.broadcast_to(free, (solver.problem.n_groups, *free.shape))
        theta_local = state.theta_local.copy()
        theta_local[:, 1:] = state.delta @ v @ v.T
        start = solver.state(state.theta_global, theta_local, 0.0)
        solved = solver.minimize(start, 0.0, solver.tol, free=free, basis=v)
        if solved is None:  # the weakest direction cannot be held: try without it
            if rank == 0:
                return best
            rank -= 1
            continue
        state, kkt = solver._report(solved)
        if best is None or _worst(kkt) < _worst(best[1]):
            best = (state, kkt)
        if _worst(kkt) <= solver.tol:
            break
        if kkt["active"] < rank:
            rank = int(kkt["active"])
        elif kkt["dual_feasibility"] > solver.tol:
            state = _widen(solver, state, rank)
            rank += 1
        else:
            state = _tangent_step(solver, state, rank)
    return best


def _widen(solver: _Solver, state: _State, rank: int) -> _State:
    """Add the direction along which the imbalance breaks the bound to the deviations."""
    u, sigma, vt = np.linalg.svd(state.delta, full_matrices=False)
    ur, vr = u[:, :rank], vt[:rank].T
    outside = solver.imbalance(state)
    outside = outside - ur @ (ur.T @ outside)
    outside = outside - (outside @ vr) @ vr.T
    p, _, qt = np.linalg.svd(outside, full_matrices=False)
    # Moving Δ by −κ p q' lowers the objective at rate ‖R⊥‖ − 1/b > 0; the exact solve
    # then finds the size, from a start well away from the kink at 0.
    size = 0.1 * (sigma[0] if rank else 1.0)
    theta_local = state.theta_local.copy()
    theta_local[:, 1:] -= size * np.outer(p[:, 0], qt[0])
    return solver.state(state.theta_global, theta_local, 0.0)


def _tangent_step(solver: _Solver, state: _State, rank: int) -> _State:
    """A Newton step on the exact gradient in the tangent space of the rank-r matrices.

    The curvature is that of the smoothing at ``ε = TANGENT_SMOOTHING`` at the point whose
    small singular values are those the smoothed optimum would have: with the imbalance
    outside both subspaces ``R⊥ = −W/b``, the singular values ``t`` of ``W`` give
    ``σ = ε t/√(1 − t²)``. Their curvature across the subspaces is the second-order term
    that makes these steps converge quadratically.
    """
    epsilon = TANGENT_SMOOTHING
    u, sigma, vt = np.linalg.svd(state.delta, full_matrices=False)
    ur, vr, sr = u[:, :rank], vt[:rank].T, sigma[:rank]
    gradient_global, gradient_local = _gradient(
        solver.problem, state.theta_global, state.theta_local, state.moments[:, :, 0]
    )
    imbalance = gradient_local[:, 1:].copy()
    # Orthonormal complements of both subspaces, and W in their coordinates.
    left = np.linalg.qr(ur, mode="complete")[0][:, rank:]
    right = np.linalg.qr(vr, mode="complete")[0][:, rank:]
    uw, tw, vwt = np.linalg.svd(-solver.penalty.scale[0] * (left.T @ imbalance @ right))
    m = min(imbalance.shape) - rank
    slope = np.minimum(tw[:m], 1.0 - 1e-12)
    svd = (
        np.hstack([ur, left @ uw[:, :m]]),
        np.concatenate([sr, epsilon * slope / np.sqrt(1.0 - slope**2)]),
        np.hstack([vr, right @ vwt[:m].T]).T,
    )
    delta = (svd[0] * svd[1]) @ svd[2]
    model = solver.penalty.smoothed(delta, epsilon, svd)
    # R + U V'/b, without its part outside both subspaces (a subgradient's W absorbs it).
    exact = imbalance + solver.penalty.inverse_scale[0] * (ur @ vr.T)
    outside = exact - ur @ (ur.T @ exact)
    gradient_local[:, 1:] = exact - (outside - (outside @ vr) @ vr.T)
    step = _tangent_direction(solver, state, model, (gradient_global, gradient_local), ur, vr)
    return solver.state(state.theta_global + step[0], state.theta_local + step[1], 0.0)


def _tangent_direction(solver: _Solver, state: _State, model, gradient, ur, vr):
    """Solve the Newton system on the tangent space by deflated conjugate gradients.

    On the tangent space the smoothing's ``1/ε`` curvature never acts, and the system is
    well conditioned. The exact solve on the row space (``δ_j ∈ span(V)``, per group)
    preconditions it; the directions it misses, ``U Φ V⊥'`` (rotations of the row space,
    which couple the groups), are few (``r (d − r)``) and are solved exactly by deflation
    (Saad, Yeung, Erhel & Guyomarc'h 2000).
    """
    problem = solver.problem
    inner = InBasis(solver.penalty.smoothed(state.delta @ vr, 0.0), vr)
    free = np.zeros((problem.n_local, problem.n_local))
    free[0, 0] = 1.0
    free[1:, 1:] = vr @ vr.T
    free = np.broadcast_to(free, (problem.n_groups, *free.shape))
    factorization = solver._factorize(state.moments, inner.blocks, free)

    def project(vector):
        delta = vector[1][:, 1:]
        outside = delta - ur @ (ur.T @ delta)
        local = vector[1].copy()
        local[:, 1:] = delta - (outside - (outside @ vr) @ vr.T)
        return vector[0], local

    def apply(vector):
        return project(solver._hessian_product(state, model, project(vector), None))

    def precondition(residual):
        step = _newton_direction(problem, factorization, -residual[0], -residual[1])
        return step[0], _project(free, step[1])

    right = np.linalg.qr(vr, mode="complete")[0][:, vr.shape[1] :]
    n_rotations = ur.shape[1] * right.shape[1]
    basis = np.zeros((n_rotations, *state.theta_local.shape))
    # Explicit shapes: at full rank there are no rotations, and -1 cannot be inferred from 0.
    rotations = np.einsum("jk,dm->kmjd", ur, right)
    basis[:, :, 1:] = rotations.reshape(n_rotations, ur.shape[0], right.shape[0])
    images = [apply((np.zeros(problem.n_global), y)) for y in basis]
    image_global = np.array([image[0] for image in images]).reshape(n_rotations, problem.n_global)
    image_local = np.array([image[1] for image in images]).reshape(basis.shape)
    coarse = np.einsum("njk,mjk->nm", basis, image_local)  # Y' A Y (Y has no global part)

    def deflate(z):  # z − Y E⁻¹ (AY)' z
        if not n_rotations:
            return z
        weights = image_global @ z[0] + np.einsum("njk,jk->n", image_local, z[1])
        c = np.linalg.solve(coarse, weights)
        return z[0], z[1] - np.tensordot(c, basis, axes=1)

    b = project((-gradient[0], -gradient[1]))
    x = (np.zeros_like(b[0]), np.zeros_like(b[1]))
    if n_rotations:
        c = np.linalg.solve(coarse, np.einsum("njk,jk->n", basis, b[1]))
        x = (x[0], np.tensordot(c, basis, axes=1))
    product = apply(x)
    residual = (b[0] - product[0], b[1] - product[1])
    target = TANGENT_FORCING * np.sqrt(pair_dot(b, b))
    x, iterations = pair_conjugate_gradients(
        apply,
        precondition,
        x,
        residual,
        max(target, 1e-3 * solver.tol),
        TANGENT_CG_ITERATIONS,
        deflate,
    )
    solver.cg_iterations += iterations
    return x
