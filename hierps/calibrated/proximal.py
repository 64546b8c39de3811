"""MAP mode with Laplace or nuclear-norm slope deviations (docs/math.md §19).

The calibrated loss with the Gaussian priors of :mod:`hierps.calibrated.newton`, except on the
slope deviations ``Δ``, whose penalty (:mod:`hierps.calibrated.deviations`) is convex but not
differentiable where entries of ``Δ`` (Laplace) or its singular values (nuclear norm) vanish —
exactly where the balance bound binds. The solver smooths ``|·|`` to ``√(·² + ε²)`` and follows
the smoothed optima down a geometric sequence of ``ε`` with damped Newton steps on the block
structure of the Newton solver (the penalty's per-group Hessian blocks join the local blocks;
for the nuclear norm, whose Hessian couples the groups, conjugate gradients preconditioned by
that block solve). The finish is exact: an active set with fixed signs (Laplace), or an exact
solve on a row space of the deviations with rank changes and tangent Newton steps (nuclear
norm). :func:`proximal_solve` reports the KKT residuals of the non-smooth problem and names
the groups whose bound cannot be met when the mode does not exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hierps.calibrated.deviations import (
    InBasis,
    Penalty,
    SignedLinear,
    Smoothed,
    kkt_residuals,
    raise_without_mode,
    refuse_empty_groups,
)
from hierps.calibrated.newton import (
    _BLAS,
    Factorization,
    NewtonTrace,
    _global_quadratic,
    _gradient,
    _newton_direction,
    _objective,
    _padded_products,
    _spd_inverse,
    _sum_to_global,
    accumulate_moments,
    group_coefficients,
    linear_predictor,
    pair_conjugate_gradients,
    pair_dot,
    starting_point,
)
from hierps.calibrated.nuclear import _project, nuclear_finish
from hierps.calibrated.problem import CalibratedProblem
from hierps.exceptions import ArgumentError

__all__ = ["ProximalTrace", "proximal_solve"]

ARMIJO = 1e-4
# The smoothing starts at ε = 0.1 (deviations are of order 0.1–1 on the logit scale of
# standardized covariates) and shrinks a hundredfold per stage.
FIRST_SMOOTHING = 0.1
SMOOTHING_STEP = 0.01
# Laplace: the active set is read off once ε is this small, then solved exactly.
LAPLACE_SMOOTHING = 1e-6
# An entry counts as active once its smoothed derivative |δ|/√(δ² + ε²) is within this of 1
# (|δ| above about 700 ε).
ACTIVE_SLOPE = 1e-6
# Nuclear norm: the rank and row space are read off at this smoothing. The finish corrects
# both, and smaller ε would only cost conjugate-gradient iterations (the smoothing's 1/ε
# curvature couples the groups) and digits (singular values come out of the SVD with absolute
# errors of about 1e-16 ‖Δ‖).
NUCLEAR_SMOOTHING = 1e-3
# Entries whose smoothed derivative is below this are shrunk with ε between stages.
PREDICT_SLOPE = 0.999
ACTIVE_SET_ROUNDS = 25
# Conjugate-gradient iterations per Newton step of a smoothing stage.
CG_ITERATIONS = 50
# Deviations beyond this on the logit scale mean the iterates run off to infinity: the bound
# cannot be met and the mode does not exist.
DIVERGED = 1e6


@dataclass
class ProximalTrace(NewtonTrace):
    """Outcome of :func:`proximal_solve`: a :class:`NewtonTrace` with the KKT residuals."""

    deviations: str = "normal"
    kkt: dict[str, float] = field(default_factory=dict)


@dataclass
class _State:
    """A point of the solver with everything the next step needs."""

    theta_global: np.ndarray
    theta_local: np.ndarray  # (J, K), solver order
    eta: np.ndarray
    w: np.ndarray
    objective: float
    moments: np.ndarray | None = None

    @property
    def delta(self) -> np.ndarray:
        return self.theta_local[:, 1:]


def proximal_solve(
    problem: CalibratedProblem,
    penalty: Penalty,
    theta_global: np.ndarray | None = None,
    theta_local: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iterations: int = 100,
    labels: Sequence[object] | None = None,
) -> ProximalTrace:
    """Minimize the calibrated loss with a Laplace or nuclear-norm penalty on the deviations.

    Parameters
    ----------
    problem
        From :func:`hierps.calibrated.hierarchy.hierarchical_problem`; its prior precisions of
        the slope deviations are replaced by ``penalty``.
    penalty
        From :func:`hierps.calibrated.deviations.penalty_of`.
    theta_global, theta_local
        Starting point (``theta_local`` ``(J, K)`` in the input's group order); by default
        ``a0 = log(n_treated / n_controls)`` and the rest 0.
    tol
        The smooth gradient and the KKT residuals of the finish must be at most ``tol``.
    max_iterations
        Newton steps allowed per smoothing stage and per active-set round.
    labels
        The group labels in the input's order, for the error that names infeasible groups.

    Returns
    -------
    ProximalTrace

    Raises
    ------
    ArgumentError
        Some groups cannot keep their imbalance inside the bound: the mode does not exist.
    ConvergenceError
        The iterations did not reach ``tol``.
    """
    if problem.n_local < 2:
        raise ArgumentError("the model has no varying slopes: there are no slope deviations")
    prior_local = problem.prior_local.copy()
    prior_local[1:] = 0.0  # the penalty replaces the Gaussian prior of the deviations
    problem = dataclasses.replace(problem, prior_local=prior_local)
    labels = list(range(problem.n_groups)) if labels is None else list(labels)
    refuse_empty_groups(problem, penalty, labels)
    theta_global, theta_local = starting_point(problem, theta_global, theta_local)
    with _BLAS.limit(limits=1, user_api="blas"), np.errstate(over="ignore", invalid="ignore"):
        solver = _Solver(problem, penalty, tol, max_iterations)
        state = solver.state(theta_global, theta_local, 0.0)
        final = solver.run(state)
    if final is None:
        raise_without_mode(problem, penalty, labels, solver.failure)
    state, kkt = final
    in_input_order = np.empty_like(state.theta_local)
    in_input_order[problem.group_order] = state.theta_local
    converged = max(kkt["smooth_gradient"], kkt["stationarity"], kkt["dual_feasibility"]) <= tol
    kkt["cg_iterations"] = float(solver.cg_iterations)
    return ProximalTrace(
        theta_global=state.theta_global,
        theta_local=in_input_order,
        objective=state.objective,
        max_gradient=max(kkt["smooth_gradient"], kkt["stationarity"], kkt["dual_feasibility"]),
        iterations=solver.iterations,
        converged=converged,
        control_weights=state.w[problem.slots],
        history=solver.history,
        control_eta=state.eta[problem.slots],
        deviations=penalty.kind,
        kkt=kkt,
    )


class _Solver:
    def __init__(self, problem: CalibratedProblem, penalty: Penalty, tol: float, cap: int):
        self.problem, self.penalty, self.tol, self.cap = problem, penalty, tol, cap
        self.iterations = 0
        self.cg_iterations = 0
        self.history: list[float] = []
        self.failure = ""

    # -- the smoothed objective -------------------------------------------------------------
    def state(self, theta_global, theta_local, epsilon, signs=None) -> _State:
        problem = self.problem
        eta = linear_predictor(problem, group_coefficients(problem, theta_global, theta_local))
        w = np.exp(eta)
        objective = _objective(problem, theta_global, theta_local, w.sum())
        objective += self._penalty_value(theta_local[:, 1:], epsilon, signs)
        return _State(theta_global, theta_local, eta, w, objective)

    def _penalty_value(self, delta, epsilon, signs) -> float:
        if signs is None:
            return self.penalty.value(delta, epsilon)
        return float(np.sum(signs * delta * self.penalty.inverse_scale))

    def _model(self, state: _State, epsilon: float, signs, basis=None) -> Smoothed:
        if signs is not None:
            return SignedLinear(signs, self.penalty.inverse_scale)
        if basis is not None and basis.shape[1] == 0:  # rank 0: no deviations, no penalty
            return SignedLinear(np.zeros_like(state.delta), self.penalty.inverse_scale)
        if basis is not None:
            return InBasis(self.penalty.smoothed(state.delta @ basis, 0.0), basis)
        return self.penalty.smoothed(state.delta, epsilon)

    def gradient(self, state: _State, model: Smoothed, free: np.ndarray | None):
        """Gradient of the smoothed objective, projected on the free local directions."""
        if state.moments is None:
            state.moments = accumulate_moments(self.problem, state.w)
        first = state.moments[:, :, 0]
        gradient_global, gradient_local = _gradient(
            self.problem, state.theta_global, state.theta_local, first
        )
        gradient_local[:, 1:] += model.gradient
        return gradient_global, _project(free, gradient_local)

    # -- the stages ---------------------------------------------------------------------------
    def run(self, state: _State) -> tuple[_State, dict[str, float]] | None:
        laplace = self.penalty.kind == "laplace"
        last = LAPLACE_SMOOTHING if laplace else NUCLEAR_SMOOTHING
        epsilon = FIRST_SMOOTHING
        while True:
            final_stage = epsilon <= last * 1.0001
            # Each stage only needs to land near its smoothed optimum: the finish is exact.
            stage_tol = max(self.tol, 1e-2 * epsilon)
            state = self.minimize(state, epsilon, stage_tol, rough=not laplace)
            if state is None:
                return None
            if final_stage:
                break
            state = self._predict(state, epsilon, SMOOTHING_STEP * epsilon)
            epsilon *= SMOOTHING_STEP
        if laplace:
            return self.active_set_finish(state, epsilon)
        return nuclear_finish(self, state, epsilon)

    def _predict(self, state: _State, epsilon: float, smaller: float) -> _State:
        """The next stage's start: inactive entries (singular values) shrunk with ``ε``.

        An inactive entry of the smoothed optimum sits where ``δ/√(δ² + ε²)`` equals its
        scaled imbalance, which changes little between stages: ``δ`` scales with ``ε``.
        Newton steps would get there only slowly, since the smoothing's curvature at
        ``|δ| ≫ ε`` is far below its curvature at the new optimum.
        """
        delta = state.delta
        if self.penalty.kind == "laplace":
            inactive = np.abs(delta) / np.hypot(delta, epsilon) < PREDICT_SLOPE
            shrunk = np.where(inactive, delta * (smaller / epsilon), delta)
        else:
            u, sigma, vt = np.linalg.svd(delta, full_matrices=False)
            inactive = sigma / np.hypot(sigma, epsilon) < PREDICT_SLOPE
            shrunk = (u * np.where(inactive, sigma * (smaller / epsilon), sigma)) @ vt
        theta_local = state.theta_local.copy()
        theta_local[:, 1:] = shrunk
        return self.state(state.theta_global, theta_local, smaller)

    def minimize(
        self, state, epsilon, tol, signs=None, free=None, basis=None, rough=False
    ) -> _State | None:
        """Damped Newton on the smoothed (sign-fixed, or restricted) objective from ``state``.

        ``rough``: a stage of the nuclear-norm smoothing, which only has to locate the row
        space. Its singular values near 0 carry SVD rounding errors of about
        ``1e-16 ‖Δ‖``, so at small ``ε`` the gradient cannot show convergence; the stage
        stops once the Newton steps are below ``ε/1000`` or no longer decrease the objective.
        """
        state = self.state(state.theta_global, state.theta_local, epsilon, signs)
        for _ in range(self.cap + 1):
            model = self._model(state, epsilon, signs, basis)
            gradient = self.gradient(state, model, free)
            largest = max(np.abs(gradient[0]).max(initial=0), np.abs(gradient[1]).max(initial=0))
            if largest <= tol:
                return state
            if not np.isfinite(largest) or np.abs(state.delta).max(initial=0) > DIVERGED:
                self.failure = "the deviations diverged"
                return None
            step = self.direction(state, model, gradient, free)
            # Rounding leaks a little of the step out of the free subspace: project it back.
            step = (step[0], _project(free, step[1]))
            if rough and max(np.abs(step[0]).max(), np.abs(step[1]).max()) <= 1e-3 * epsilon:
                return state  # converged as far as rounding lets the gradient show
            new = self.line_search(state, step, gradient, epsilon, signs)
            self.iterations += 1
            if new is None:
                if rough or largest <= 1e3 * tol:  # rounding limits the last digits
                    return state
                self.failure = f"the line search failed (largest gradient {largest:.3g})"
                return None
            state = new
            self.history.append(state.objective)
        self.failure = f"{self.cap} Newton steps left the largest gradient at {largest:.3g}"
        return None

    def direction(self, state, model, gradient, free):
        """The Newton step: direct when the penalty's Hessian is block diagonal, else CG."""
        factorization = self._factorize(state.moments, model.blocks, free)
        step = _newton_direction(self.problem, factorization, *gradient)
        if model.exact_blocks:
            return step
        return self._conjugate_gradients(state, model, gradient, factorization, step, free)

    def _factorize(self, moments, blocks, free) -> Factorization:
        """The block Newton system with the penalty's blocks added to the local blocks.

        ``free`` (J, K, K) projects each group's local step on the directions it may take:
        the Newton system is solved on that subspace (``P L P + I − P``, coupling ``P N``),
        so the step has no part outside it.
        """
        problem = self.problem
        local = problem.local_index
        block = moments[:, local][:, :, local] + np.diag(problem.prior_local)
        block[:, 1:, 1:] += blocks
        coupling = moments[:, local, :]
        if free is not None:
            block = free @ block @ free
            block += np.eye(problem.n_local) - free
            coupling = free @ coupling
        local_inverse = _spd_inverse(block)
        solved_coupling = local_inverse @ coupling
        coupling_transpose = np.ascontiguousarray(coupling.transpose(0, 2, 1))
        residual = moments - coupling_transpose @ solved_coupling
        schur_inverse = np.linalg.inv(_global_quadratic(problem, residual))
        return Factorization(local_inverse, schur_inverse, solved_coupling, coupling_transpose)

    def _hessian_product(self, state, model, vector, free):
        problem = self.problem
        vector_global, vector_local = vector
        coefficients = group_coefficients(problem, vector_global, vector_local)
        moved = (state.moments @ coefficients[:, :, None])[:, :, 0]
        product_global = _sum_to_global(problem, moved) + problem.prior_global * vector_global
        product_local = moved[:, problem.local_index] + problem.prior_local * vector_local
        product_local[:, 1:] += model.hessian_product(vector_local[:, 1:])
        return product_global, _project(free, product_local)

    def _conjugate_gradients(self, state, model, gradient, factorization, start, free):
        """Solve the exact Newton system by conjugate gradients, preconditioned by the block
        solve (exact within each group, missing the penalty's coupling between groups)."""

        def precondition(residual):
            return _newton_direction(self.problem, factorization, -residual[0], -residual[1])

        product = self._hessian_product(state, model, start, free)
        residual = (-gradient[0] - product[0], -gradient[1] - product[1])
        size = np.sqrt(pair_dot(gradient, gradient))
        # Inexact Newton: a relative residual that shrinks with the gradient keeps the
        # convergence superlinear without solving far steps exactly.
        target = min(0.1, np.sqrt(size)) * size
        x, iterations = pair_conjugate_gradients(
            lambda p: self._hessian_product(state, model, p, free),
            precondition,
            start,
            residual,
            max(target, 1e-3 * self.tol),
            CG_ITERATIONS,
        )
        self.cg_iterations += iterations
        return x

    def line_search(self, state, step, gradient, epsilon, signs) -> _State | None:
        """Backtracking from the full step under the Armijo condition (None: no descent)."""
        problem = self.problem
        step_global, step_local = step
        step_eta = _padded_products(problem, group_coefficients(problem, step_global, step_local))
        slope = float(gradient[0] @ step_global + np.sum(gradient[1] * step_local))
        if not slope < 0:
            return None
        # Near the optimum the predicted decrease is below the objective's rounding error.
        trust = -slope <= 1e-13 * max(1.0, abs(state.objective))
        t = 1.0
        while t >= 1e-12:
            theta_global = state.theta_global + t * step_global
            theta_local = state.theta_local + t * step_local
            eta = state.eta + t * step_eta
            w = np.exp(eta)
            objective = _objective(problem, theta_global, theta_local, w.sum())
            objective += self._penalty_value(theta_local[:, 1:], epsilon, signs)
            if np.isfinite(objective) and (
                trust or objective <= state.objective + ARMIJO * t * slope
            ):
                return _State(theta_global, theta_local, eta, w, objective)
            t *= 0.5
        return None

    # -- the exact finish --------------------------------------------------------------------
    def imbalance(self, state: _State) -> np.ndarray:
        """The school-imbalance matrix ``R`` (J, d): the loss gradient in the deviations."""
        if state.moments is None:
            state.moments = accumulate_moments(self.problem, state.w)
        local = self.problem.local_index[1:]
        return state.moments[:, local, 0] - self.problem.treated_moments[:, local]

    def _smooth_gradient(self, state: _State) -> float:
        gradient_global, gradient_local = _gradient(
            self.problem, state.theta_global, state.theta_local, state.moments[:, :, 0]
        )
        return max(np.abs(gradient_global).max(initial=0), np.abs(gradient_local[:, 0]).max())

    def active_set_finish(self, state, epsilon):
        """Exact Laplace optimum: Newton on the active set with fixed signs, then repair."""
        slope = np.abs(state.delta) / np.hypot(state.delta, epsilon)
        active = slope >= 1.0 - ACTIVE_SLOPE
        signs = np.sign(state.delta) * active
        mask = np.ones(state.theta_local.shape, dtype=bool)
        for _ in range(ACTIVE_SET_ROUNDS):
            mask[:, 1:] = active
            theta_local = state.theta_local * mask
            free = np.zeros((*mask.shape, mask.shape[1]))
            np.einsum("jkk->jk", free)[...] = mask
            start = self.state(state.theta_global, theta_local, 0.0, signs)
            solved = self.minimize(start, 0.0, self.tol, signs, free)
            if solved is None:
                return None
            state = solved
            scaled = self.imbalance(state) * self.penalty.scale
            flipped = active & (state.delta * signs <= 0)
            if flipped.any():  # these deviations want the other side of 0: hold them at 0
                active &= ~flipped
                signs = signs * active
                continue
            breaking = ~active & (np.abs(scaled) > 1.0 + self.tol)
            if not breaking.any():
                break
            active |= breaking
            signs = np.where(breaking, -np.sign(scaled), signs)
        else:
            self.failure = f"the active set did not settle in {ACTIVE_SET_ROUNDS} rounds"
            return None
        return self._report(state)

    def _report(self, state: _State):
        state.moments = accumulate_moments(self.problem, state.w)
        kkt = kkt_residuals(
            self.penalty, state.delta, self.imbalance(state), self._smooth_gradient(state)
        )
        return state, kkt
