"""The calibrated-loss problem and its solver checked by hand in the units' own order: the
optimum's first-order conditions, the weights, the objective and the control layout."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hierps.calibrated.newton import newton_solve, objective
from hierps.calibrated.problem import make_problem


def random_problem(
    local_index, seed=0, n_groups=9, n_x=2, p=1, treated_only=(2,), controls_only=()
):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, n_groups)
    sizes[0], sizes[1] = 2, 150  # very different sizes: several buckets
    codes = np.repeat(np.arange(n_groups), sizes)
    rng.shuffle(codes)
    n = len(codes)
    x = rng.normal(size=(n, n_x)) + 0.3 * rng.normal(size=(n_groups, n_x))[codes]
    z = np.column_stack([np.ones(n), x])
    treatment = (rng.random(n) < 1 / (1 + np.exp(1.0 - 0.5 * x[:, 0]))).astype(int)
    for j in range(n_groups):  # both arms in every group
        rows = np.flatnonzero(codes == j)
        treatment[rows[0]], treatment[rows[-1]] = 1, 0
    treatment[np.isin(codes, treated_only)] = 1
    treatment[np.isin(codes, controls_only)] = 0
    v = rng.normal(size=(n_groups, p))
    prior_global = rng.uniform(0.5, 2.0, 1 + p + n_x)
    prior_local = rng.uniform(0.5, 2.0, len(local_index))
    problem = make_problem(
        z, treatment, codes, v, np.asarray(local_index), prior_global, prior_local
    )
    return problem, dict(
        z=z,
        treatment=treatment,
        codes=codes,
        v=v,
        local=np.asarray(local_index, dtype=int),
        prior_global=prior_global,
        prior_local=prior_local,
    )


def by_hand(data, theta_global, theta_local):
    """η of every unit, the objective and its gradient, written out unit by unit."""
    z, t, codes, v = data["z"], data["treatment"] == 1, data["codes"], data["v"]
    p = v.shape[1]
    a0, gamma, mu = theta_global[0], theta_global[1 : 1 + p], theta_global[1 + p :]
    coefficients = np.column_stack([a0 + v @ gamma, np.tile(mu, (len(v), 1))])
    coefficients[:, data["local"]] += theta_local
    eta = np.einsum("nd,nd->n", z, coefficients[codes])
    w = np.where(t, 0.0, np.exp(np.where(t, 0.0, eta)))
    value = (
        w.sum()
        - eta[t].sum()
        + 0.5 * np.sum(data["prior_global"] * theta_global**2)
        + 0.5 * np.sum(data["prior_local"] * theta_local**2)
    )
    residual = w - t  # Σ_C w z − Σ_T z, unit by unit
    per_group = np.zeros((len(v), z.shape[1]))
    np.add.at(per_group, codes, residual[:, None] * z)
    gradient_global = (
        np.concatenate(
            [[per_group[:, 0].sum()], v.T @ per_group[:, 0], per_group[:, 1:].sum(axis=0)]
        )
        + data["prior_global"] * theta_global
    )
    gradient_local = per_group[:, data["local"]] + data["prior_local"] * theta_local
    return eta, w, value, gradient_global, gradient_local


CASES = {
    "no local deviations": [],
    "local intercepts": [0],
    "local intercept and one slope": [0, 2],
    "every entry local": [0, 1, 2],
    "a slope only": [1],
}


@pytest.mark.parametrize("local", CASES.values(), ids=CASES.keys())
def test_optimum_meets_the_first_order_conditions_by_hand(local):
    problem, data = random_problem(local)
    trace = newton_solve(problem, tol=1e-10)
    assert trace.converged and trace.max_gradient <= 1e-10
    assert trace.theta_local.shape == (9, len(local))
    eta, w, value, gradient_global, gradient_local = by_hand(
        data, trace.theta_global, trace.theta_local
    )
    np.testing.assert_allclose(gradient_global, 0.0, atol=1e-8)
    np.testing.assert_allclose(gradient_local, 0.0, atol=1e-8)
    assert trace.objective == pytest.approx(value, rel=1e-12)
    assert objective(problem, trace.theta_global, trace.theta_local) == pytest.approx(
        value, rel=1e-12
    )
    controls = np.flatnonzero(data["treatment"] == 0)
    np.testing.assert_array_equal(np.sort(problem.order), controls)
    np.testing.assert_allclose(trace.control_weights, w[problem.order], rtol=1e-12)
    np.testing.assert_allclose(trace.control_eta, eta[problem.order], rtol=1e-12, atol=1e-12)
    assert trace.history[-1] == pytest.approx(value, rel=1e-10)


@pytest.mark.parametrize("local", CASES.values(), ids=CASES.keys())
def test_objective_at_any_point_equals_the_hand_formula(local):
    problem, data = random_problem(local, seed=1)
    rng = np.random.default_rng(2)
    for _ in range(3):
        theta_global = rng.normal(size=problem.n_global)
        theta_local = rng.normal(size=(9, len(local)))
        value = by_hand(data, theta_global, theta_local)[2]
        assert objective(problem, theta_global, theta_local) == pytest.approx(value, rel=1e-12)
    # Integer and nested-list inputs are accepted.
    zeros = [[0] * len(local) for _ in range(9)]
    expected = by_hand(data, np.zeros(problem.n_global), np.zeros((9, len(local))))[2]
    assert objective(problem, np.zeros(problem.n_global), zeros) == pytest.approx(expected)


def test_objective_overflows_quietly_to_infinity():
    problem, _ = random_problem([0], seed=3)
    theta_global = np.zeros(problem.n_global)
    theta_global[0] = 800.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert objective(problem, theta_global, np.zeros((9, 1))) == np.inf


@pytest.mark.parametrize("local", [[], [0, 2]], ids=["no local", "partial"])
def test_a_warm_start_at_the_optimum_takes_no_step(local):
    problem, _ = random_problem(local, seed=4)
    trace = newton_solve(problem, tol=1e-10)
    again = newton_solve(problem, trace.theta_global, trace.theta_local, tol=1e-9)
    assert again.converged and again.iterations == 0 and len(again.history) == 1
    np.testing.assert_array_equal(again.theta_global, trace.theta_global)


def test_max_iterations_stops_without_convergence():
    problem, _ = random_problem([0, 1, 2], seed=5)
    trace = newton_solve(problem, max_iterations=1)
    assert not trace.converged and trace.iterations == 1 and len(trace.history) == 2
    assert trace.max_gradient > 1e-8


def test_layout_treated_moments_and_gram_by_hand():
    problem, data = random_problem([0], seed=6)
    z, t, codes = data["z"], data["treatment"] == 1, data["codes"]
    layout = problem.layout
    order = layout.group_order
    treated_moments = np.zeros((9, 3))
    np.add.at(treated_moments, codes[t], z[t])
    np.testing.assert_allclose(layout.treated_moments, treated_moments[order], atol=1e-12)
    gram = np.zeros((9, 3, 3))
    np.add.at(gram, codes[~t], z[~t, :, None] * z[~t, None, :])
    np.testing.assert_allclose(layout.gram, gram[order], atol=1e-10)
    # Groups by increasing number of controls, the group without controls last.
    counts = np.bincount(codes[~t], minlength=9)[order]
    assert counts[-1] == 0 and np.all(np.diff(counts[:-1]) >= 0)
    np.testing.assert_allclose(
        problem.intercept_design, np.column_stack([np.ones(9), data["v"][order]])
    )
    assert len(layout.buckets) >= 2
    assert problem.n_groups == 9 and problem.dimension == 3 and problem.n_global == 4


def test_default_start_and_tolerance():
    problem, data = random_problem([0, 2], seed=7)
    trace = newton_solve(problem)
    assert trace.converged and trace.max_gradient <= 1e-8
    # The documented start: a0 = log(n_treated / n_controls), everything else 0.
    t = data["treatment"] == 1
    start = np.zeros(problem.n_global)
    start[0] = np.log(t.sum() / (~t).sum())
    assert trace.history[0] == pytest.approx(objective(problem, start, np.zeros((9, 2))), rel=1e-12)
    _, _, _, gradient_global, gradient_local = by_hand(data, trace.theta_global, trace.theta_local)
    assert max(np.abs(gradient_global).max(), np.abs(gradient_local).max()) <= 1e-8


def test_default_start_with_a_single_control():
    z = np.column_stack([np.ones(6), np.linspace(-1, 1, 6)])
    treatment = np.array([1, 1, 1, 0, 1, 1])
    problem = make_problem(
        z,
        treatment,
        np.zeros(6, dtype=int),
        np.zeros((1, 0)),
        np.array([0]),
        np.ones(2),
        np.ones(1),
    )
    trace = newton_solve(problem)
    start = np.array([np.log(5.0), 0.0])
    assert trace.history[0] == pytest.approx(objective(problem, start, np.zeros((1, 1))))
    assert trace.converged


@pytest.mark.parametrize(
    ("treated_only", "controls_only"),
    [((8,), ()), ((), (1,)), ((), (1, 5)), ((0, 8), (1,))],
    ids=["last group treated only", "largest group controls only", "two", "both kinds"],
)
def test_groups_with_one_arm_anywhere(treated_only, controls_only):
    problem, data = random_problem(
        [0, 1], seed=8, treated_only=treated_only, controls_only=controls_only
    )
    trace = newton_solve(problem, tol=1e-10)
    assert trace.converged
    _, w, value, gradient_global, gradient_local = by_hand(
        data, trace.theta_global, trace.theta_local
    )
    np.testing.assert_allclose(gradient_global, 0.0, atol=1e-8)
    np.testing.assert_allclose(gradient_local, 0.0, atol=1e-8)
    assert trace.objective == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(trace.control_weights, w[problem.order], rtol=1e-12)
    assert problem.treated_moments.shape == problem.layout.gram.shape[:2] == (9, 3)


def test_make_problem_message():
    z = np.ones((4, 2))
    z[:, 0] = [1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"^the first column of z_all must be the constant 1$"):
        make_problem(
            z, np.array([1, 0, 1, 0]), np.zeros(4, dtype=int), np.zeros((1, 0)),
            np.array([0]), np.ones(2), np.ones(1),
        )  # fmt: skip


def test_layout_with_base_weights_by_hand():
    from hierps.calibrated.problem import lay_out_controls

    _, data = random_problem([0], seed=9)
    z, t, codes = data["z"], data["treatment"] == 1, data["codes"]
    base = np.random.default_rng(9).uniform(0.2, 3.0, len(codes))
    layout = lay_out_controls(z[:, 1:], t, codes, 9, base_weights=base)
    order = layout.group_order
    treated_moments = np.zeros((9, 3))
    np.add.at(treated_moments, codes[t], base[t, None] * z[t])
    np.testing.assert_allclose(layout.treated_moments, treated_moments[order], rtol=1e-12)
    gram = np.zeros((9, 3, 3))
    np.add.at(gram, codes[~t], base[~t, None, None] * z[~t, :, None] * z[~t, None, :])
    np.testing.assert_allclose(layout.gram, gram[order], rtol=1e-10, atol=1e-12)
    # Each control's log base weight offsets its η; padding slots carry -inf (weight 0).
    np.testing.assert_allclose(layout.padding[layout.slots], np.log(base[layout.order]))
    assert np.isneginf(np.delete(layout.padding, layout.slots)).all()
