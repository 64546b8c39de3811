"""The solver's recorded objective history: the objective at every iterate, never increasing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import make_frame

import hierps
import hierps.calibrated.newton as newton_module
from hierps.calibrated.fit import hierarchical_problem
from hierps.calibrated.newton import newton_solve, objective
from hierps.design.hyperparameters import MapHyperparameters


@pytest.fixture(scope="module", params=["all_local", "fixed_slope"])
def problem(request):
    frame, roles = make_frame(seed=23, sizes=(6, 120), n_groups=8, n_unit=3, n_group=2)
    varying = None if request.param == "all_local" else ["x1", "x3"]
    model = hierps.Model(frame, **roles, varying_slopes=varying)
    n_varying = int(model.design.varying.sum())
    return hierarchical_problem(
        model.design, MapHyperparameters.from_user(n_varying, sigma_beta=2.0, sigma_alpha=1.5)
    )


def poor_start(problem, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(scale=1.5, size=problem.n_global),
        rng.normal(scale=1.0, size=(problem.n_groups, problem.n_local)),
    )


def check_history(problem, start, max_iterations=100):
    """Every prefix run's last history entry is the objective at its end point, afresh."""
    full = newton_solve(problem, *start, max_iterations=max_iterations)
    assert full.converged
    history = np.asarray(full.history)
    assert len(history) >= 3
    scale = max(1.0, abs(history[0]))
    assert np.all(np.diff(history) <= 1e-12 * scale), np.diff(history)
    assert history[-1] == pytest.approx(full.objective, rel=1e-10, abs=1e-10 * scale)
    if start[0] is not None:
        assert history[0] == pytest.approx(objective(problem, *start), rel=1e-12)
    for k in range(1, full.iterations + 1):
        partial = newton_solve(problem, *start, max_iterations=k)
        assert partial.history == full.history[: len(partial.history)]
        fresh = objective(problem, partial.theta_global, partial.theta_local)
        assert partial.objective == pytest.approx(fresh, rel=1e-12, abs=1e-12 * scale)
        assert partial.history[-1] == pytest.approx(fresh, rel=1e-10, abs=1e-10 * scale), k
    return full


def test_history_is_the_objective_at_every_iterate_from_the_default_start(problem):
    check_history(problem, (None, None))


def test_history_is_the_objective_at_every_iterate_from_a_poor_start(problem):
    check_history(problem, poor_start(problem))


def test_without_line_search_refinement_armijo_backtracking_keeps_descending(problem, monkeypatch):
    # Full Newton steps from a poor start overshoot: the Armijo test has to halve them.
    monkeypatch.setattr(newton_module, "LINE_SEARCH_STEPS", 0)
    check_history(problem, poor_start(problem, seed=1), max_iterations=200)


def one_control(prior_global, prior_local):
    return SimpleNamespace(
        prior_global=np.asarray(prior_global), prior_local=np.asarray(prior_local)
    )


def phi(t, objective0, w, eta, step_eta, slope, curvature):
    """φ(t) of the line search written out for a single control."""
    offset = slope - float(w @ step_eta)
    return (
        objective0 + np.exp(eta + t * step_eta).sum() - w.sum() + offset * t + curvature * t**2 / 2
    )


def test_line_search_rejects_a_small_increase(monkeypatch):
    # φ(1) − φ(0) = e − 2 + slope = 1e-5 > 0: the full step is a small increase, which the
    # Armijo test must refuse; the half step decreases φ.
    monkeypatch.setattr(newton_module, "LINE_SEARCH_STEPS", 0)
    problem = one_control([1.0], [[1.0]])
    step = (np.zeros(1), np.zeros((1, 1)))
    eta, step_eta, w = np.zeros(1), np.ones(1), np.ones(1)
    slope = 1e-5 + 2 - np.e
    assert phi(1.0, 1.0, w, eta, step_eta, slope, 0.0) > 1.0
    t, trial_w, value = newton_module._line_search(problem, step, w, eta, step_eta, 1.0, slope)
    assert t == 0.5
    np.testing.assert_allclose(trial_w, np.exp(0.5))
    assert value == pytest.approx(phi(0.5, 1.0, w, eta, step_eta, slope, 0.0), rel=1e-14)
    assert value < 1.0 + newton_module.ARMIJO * t * slope


@pytest.mark.parametrize("refine", [True, False])
def test_line_search_value_includes_the_prior_curvature(monkeypatch, refine):
    if not refine:
        monkeypatch.setattr(newton_module, "LINE_SEARCH_STEPS", 0)
    problem = one_control([2.0, 0.5], [[3.0]])
    step = (np.array([0.4, -1.0]), np.array([[0.3]]))
    curvature = 2.0 * 0.16 + 0.5 * 1.0 + 3.0 * 0.09
    eta, step_eta = np.array([0.2, -0.5]), np.array([-0.6, 0.4])
    w = np.exp(eta)
    slope = -1.5
    t, trial_w, value = newton_module._line_search(problem, step, w, eta, step_eta, 2.0, slope)
    assert 0 < t
    np.testing.assert_allclose(trial_w, np.exp(eta + t * step_eta), rtol=1e-14)
    assert value == pytest.approx(phi(t, 2.0, w, eta, step_eta, slope, curvature), rel=1e-13)
    assert value <= 2.0 + newton_module.ARMIJO * t * slope
