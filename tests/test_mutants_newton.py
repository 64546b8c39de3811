"""The solver's efficiency and its line search: iteration and factorization counts on fixed
problems, the strong Wolfe condition at the line minimum, quiet overflow, giving up."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from test_mutants_calibrated import CASES, by_hand, random_problem

import hierps.calibrated.newton as newton_module
from hierps.calibrated.newton import newton_solve

# (iterations, factorizations) of the solves below when these tests were written: a change
# that makes the solver slower fails here; one that makes it faster should update them.
COUNTS = {
    ("no local deviations", 0): (6, 3),
    ("no local deviations", 1): (6, 3),
    ("local intercepts", 0): (7, 5),
    ("local intercepts", 1): (8, 4),
    ("local intercept and one slope", 0): (7, 5),
    ("local intercept and one slope", 1): (6, 5),
    ("every entry local", 0): (7, 5),
    ("every entry local", 1): (7, 5),
    ("a slope only", 0): (7, 3),
    ("a slope only", 1): (6, 4),
}


@pytest.mark.parametrize(("name", "seed"), COUNTS)
def test_iterations_and_factorizations_stay_few(name, seed, monkeypatch):
    calls = []
    factorize = newton_module._factorize

    def counting(*args):
        calls.append(1)
        return factorize(*args)

    monkeypatch.setattr(newton_module, "_factorize", counting)
    problem, _ = random_problem(CASES[name], seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = newton_solve(problem, tol=1e-10)
    assert trace.converged and trace.max_gradient <= 1e-10
    iterations, factorizations = COUNTS[name, seed]
    assert trace.iterations <= iterations
    assert len(trace.history) == trace.iterations + 1
    # Near the optimum the steps reuse the last factorization.
    assert len(calls) <= factorizations < trace.iterations


def one_dimensional(eta, step_eta, slope, curvature=0.0):
    """Arguments of _line_search for φ(t) = 1 + Σ exp(η + t s) − Σ exp(η) + offset t + c t²/2."""
    problem = SimpleNamespace(prior_global=np.array([curvature]), prior_local=np.zeros((1, 1)))
    step = (np.array([1.0]), np.zeros((1, 1)))
    w = np.exp(eta)
    return problem, step, w, eta, step_eta, 1.0, slope


def phi_and_derivative(t, eta, step_eta, slope, curvature=0.0):
    w = np.exp(eta)
    offset = slope - w @ step_eta
    trial = np.exp(eta + t * step_eta)
    value = 1.0 + trial.sum() - w.sum() + offset * t + curvature * t**2 / 2
    return value, trial @ step_eta + offset + curvature * t


@pytest.mark.parametrize(
    ("eta", "step_eta", "slope", "curvature"),
    [
        ([0.0, 0.5, -1.0], [1.0, 2.0, -0.5], -6.0, 0.0),  # the line minimum lies beyond t = 1
        ([0.0, 0.5, -1.0], [1.0, 2.0, -0.5], -0.4, 0.3),  # the full step overshoots
        ([2.0, -3.0], [4.0, 0.1], -1.0, 2.0),  # strongly curved
    ],
)
def test_line_search_stops_at_a_strong_wolfe_point(eta, step_eta, slope, curvature):
    eta, step_eta = np.array(eta), np.array(step_eta)
    args = one_dimensional(eta, step_eta, slope, curvature)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, trial_w, value = newton_module._line_search(*args)
    expected, derivative = phi_and_derivative(t, eta, step_eta, slope, curvature)
    assert t > 0
    assert abs(derivative) <= newton_module.CURVATURE * -slope
    assert value == pytest.approx(expected, rel=1e-12)
    assert value <= 1.0 + newton_module.ARMIJO * t * slope
    np.testing.assert_allclose(trial_w, np.exp(eta + t * step_eta), rtol=1e-12)


def test_line_search_overflowing_trial_steps_stay_quiet():
    eta, step_eta = np.array([0.0, 0.0]), np.array([800.0, -1.0])
    args = one_dimensional(eta, step_eta, slope=-1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, _, value = newton_module._line_search(*args)
    assert 0 < t < 1 and value < 1.0


def test_line_search_gives_up_without_descent():
    # A curvature so large that the line minimum lies below the smallest step tried.
    eta, step_eta = np.array([0.0]), np.array([1.0])
    args = one_dimensional(eta, step_eta, slope=-1e-9, curvature=1e6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, trial_w, value = newton_module._line_search(*args)
    assert t == 0.0 and value == 1.0
    assert trial_w is args[2]


def test_line_search_trusts_a_full_step_below_rounding():
    # A predicted decrease below the objective's rounding error: the full step is taken.
    eta, step_eta = np.array([0.0]), np.array([1e-14])
    args = one_dimensional(eta, step_eta, slope=-1e-14)
    t, _, _ = newton_module._line_search(*args)
    assert t == 1.0


def _reference_pcg(matrix, rhs, diagonal, target, max_iterations, keep):
    """Textbook preconditioned conjugate gradients on vectors, search directions multiplied
    by the 0/1 mask ``keep`` (a deflation onto the kept coordinates)."""
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = r / diagonal
    p = z * keep
    rz = r @ z
    count = 0
    for _ in range(max_iterations):
        if np.sqrt(r @ r) <= target:
            break
        count += 1
        hp = matrix @ p
        alpha = rz / (p @ hp)
        x, r = x + alpha * p, r - alpha * hp
        z = r / diagonal
        rz, previous = r @ z, rz
        p = z * keep + rz / previous * p
    return x, count


@pytest.mark.parametrize("deflated", [False, True], ids=["plain", "deflated"])
def test_pair_conjugate_gradients_match_the_textbook_method(deflated):
    from hierps.calibrated.newton import pair_conjugate_gradients

    rng = np.random.default_rng(12)
    n_global, local_shape = 3, (2, 2)
    n = n_global + 4
    root = rng.normal(size=(n, n))
    matrix = root @ root.T + n * np.diag(rng.uniform(0.5, 3.0, n))
    rhs = rng.normal(size=n)
    diagonal = np.diag(matrix).copy()
    keep = np.ones(n)
    if deflated:
        keep[0] = 0.0

    def split(vector):
        return vector[:n_global].copy(), vector[n_global:].reshape(local_shape).copy()

    def join(pair):
        return np.concatenate([pair[0], pair[1].ravel()])

    def apply(pair):
        return split(matrix @ join(pair))

    def precondition(pair):
        return split(join(pair) / diagonal)

    def deflate(pair):
        return split(join(pair) * keep)

    for target, steps in ((1e-3, 50), (1e-12, 50), (0.0, 3)):
        x, count = pair_conjugate_gradients(
            apply,
            precondition,
            split(np.zeros(n)),
            split(rhs),
            target,
            steps,
            deflate if deflated else None,
        )
        expected, expected_count = _reference_pcg(matrix, rhs, diagonal, target, steps, keep)
        assert count == expected_count
        np.testing.assert_allclose(join(x), expected, rtol=1e-10, atol=1e-12)
        if target == 1e-12 and not deflated:  # converged: the exact solution
            np.testing.assert_allclose(join(x), np.linalg.solve(matrix, rhs), rtol=1e-8)


def test_pair_conjugate_gradients_stop_where_the_curvature_fails():
    from hierps.calibrated.newton import pair_conjugate_gradients

    start = (np.ones(2), np.ones((1, 2)))
    residual = (np.ones(2), np.zeros((1, 2)))
    x, count = pair_conjugate_gradients(
        lambda p: (0 * p[0], 0 * p[1]), lambda r: r, start, residual, 1e-8, 10
    )
    assert count == 1
    np.testing.assert_array_equal(x[0], start[0])
    np.testing.assert_array_equal(x[1], start[1])


@pytest.mark.parametrize("entry", ["a0", "gamma", "mu_1", "mu_2", "local"])
def test_a_warm_start_is_evaluated_where_it_is(entry):
    # Only the default start (every coefficient but a0 zero) may use the Gram matrices.
    problem, data = random_problem([0], seed=13)
    theta_global = np.zeros(problem.n_global)
    theta_local = np.zeros((problem.n_groups, problem.n_local))
    if entry == "local":
        theta_local[3, 0] = 0.7
    else:
        theta_global[["a0", "gamma", "mu_1", "mu_2"].index(entry)] = 0.7
    trace = newton_solve(problem, theta_global, theta_local, max_iterations=0)
    _, _, value, gradient_global, gradient_local = by_hand(data, theta_global, theta_local)
    assert trace.history[0] == pytest.approx(value, rel=1e-12)
    largest = max(np.abs(gradient_global).max(), np.abs(gradient_local).max())
    assert trace.max_gradient == pytest.approx(largest, rel=1e-10)
