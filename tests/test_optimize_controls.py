"""Tests of optimize_controls: the program against an independent cvxpy formulation, the
rounding (exact sizes, inclusion probabilities), the reported identities and bad inputs."""

from __future__ import annotations

import itertools

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st_

import hierps
from hierps.exceptions import DataError
from hierps.natstrat.optimize import OptimizeControlsResult, optimize_controls
from hierps.natstrat.rounding import (
    ConditionalPoisson,
    _fit_log_weights,
    conditional_poisson_sample,
    cps_inclusion_probabilities,
    dependent_rounding,
)

STRATA = ["a", "b", "c"]


def make_problem(
    seed: int, n_groups: int, per_cell: tuple[int, ...] = (4, 10, 9)
) -> tuple[pd.Series, pd.DataFrame, pd.Series, pd.Series]:
    """Random units: ``per_cell`` units of each group (treated = 1 first) in each stratum."""
    rng = np.random.default_rng(seed)
    groups = [1, 0, 2][:n_groups]
    z, st = [], []
    for stratum in STRATA:
        for group, count in zip(groups, per_cell, strict=False):
            extra = int(rng.integers(0, 3))
            z += [group] * (count + extra)
            st += [stratum] * (count + extra)
    n = len(z)
    # Non-treated units sit higher, so that balance is not free.
    shift = 0.8 * (np.array(z) != 1)[:, None]
    X = pd.DataFrame(rng.normal(size=(n, 4)) + shift, columns=["w", "x", "y", "u"])
    X.loc[rng.random(n) < 0.1, "y"] = np.nan
    X["u"] = (rng.random(n) < 0.4).astype(float)
    index = pd.Index([f"unit{i}" for i in range(n)], name="id")
    X.index = index
    importances = pd.Series(rng.uniform(0.5, 3.0, size=4), index=X.columns)
    return pd.Series(z, index=index), X, pd.Series(st, index=index), importances


def reference_objective(
    z: pd.Series,
    X: pd.DataFrame,
    st: pd.Series,
    importances: pd.Series,
    sizes: list[np.ndarray],
    weights: list[float],
) -> float:
    """The same program written independently with cvxpy (solved by Clarabel)."""
    values = X.fillna(0.0).to_numpy()
    groups = sorted(z.unique())
    n = len(z)
    a = [cp.Variable(n) for _ in sizes]
    constraints = []
    objective = 0
    for c, q in enumerate(sizes):
        constraints += [a[c] >= 0, a[c] <= 1]
        for g, group in enumerate(groups):
            for s, stratum in enumerate(STRATA):
                mask = ((z == group) & (st == stratum)).to_numpy()
                constraints.append(cp.sum(a[c][mask]) == q[g, s])
        for g1, g2 in itertools.combinations(range(len(groups)), 2):
            Q1, Q2 = q[g1].sum(), q[g2].sum()
            if Q1 == 0 or Q2 == 0:
                continue
            m1 = (z == groups[g1]).to_numpy().astype(float) / Q1
            m2 = (z == groups[g2]).to_numpy().astype(float) / Q2
            difference = values.T @ cp.multiply(m1 - m2, a[c])
            objective += weights[c] * importances.to_numpy() @ cp.abs(difference)
    if len(sizes) > 1:
        constraints.append(sum(a) <= 1)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return float(problem.value)


def counts(z: pd.Series, st: pd.Series) -> np.ndarray:
    groups = sorted(z.unique())
    return np.array([[((z == g) & (st == s)).sum() for s in STRATA] for g in groups])


def eps_identity(result: OptimizeControlsResult, eps: pd.DataFrame) -> float:
    repeats = len(eps) // len(result.importances)
    weights = np.tile(result.importances.to_numpy(), repeats)
    return float(weights @ (eps["positive"] + eps["negative"]).to_numpy())


# --- the linear program ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_groups", [2, 3])
def test_lp_objective_matches_cvxpy(seed: int, n_groups: int) -> None:
    z, X, st, importances = make_problem(seed, n_groups)
    ratio = 1.5 if n_groups == 2 else [1.5, 1.0, 0.75]  # groups sorted: 0, 1 (treated), 2
    result = optimize_controls(z, X, st, importances=importances, ratio=ratio, seed=seed)
    n_s = counts(z, st)
    ratios = np.array([1.5, 1.0]) if n_groups == 2 else np.array([1.5, 1.0, 0.75])
    q = np.round(np.outer(ratios, n_s[1]))
    expected = reference_objective(z, X, st, importances, [q], [1.0])
    assert expected > 1e-3  # a problem where balance is not free
    assert result.lpdetails["objective"] == pytest.approx(expected, abs=1e-6)
    assert result.lpdetails["solver_objective"] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(result.sizes[0].to_numpy(), q)


@pytest.mark.parametrize("seed", [3, 4])
def test_lp_with_supplemental_comparison_matches_cvxpy(seed: int) -> None:
    z, X, st, importances = make_problem(seed, 3, per_cell=(3, 10, 6))
    n_s = counts(z, st)  # rows: groups 0, 1 (treated), 2
    q_star = pd.DataFrame(
        [[2, 2, 2], [0, 0, 0], [1, 1, 1]], index=[0, 1, 2], columns=pd.Index(STRATA)
    )
    result = optimize_controls(
        z,
        X,
        st,
        importances=importances,
        ratio=[1.0, 1.0, 1.0],
        treated_star=2,
        q_star_s=q_star,
        weight_star=0.5,
        seed=seed,
        runs=3,
    )
    q_main = np.round(np.outer([1.0, 1.0, 1.0], n_s[1]))
    expected = reference_objective(
        z, X, st, importances, [q_main, q_star.to_numpy().astype(float)], [1.0, 0.5]
    )
    assert result.lpdetails["objective"] == pytest.approx(expected, abs=1e-6)
    # A unit serves at most one comparison, in the program and after rounding.
    assert (result.pr + result.pr_star[0]).max() <= 1.0 + 1e-9
    assert not (result.selected & result.selected_star[0]).any()
    # Dependent rounding keeps every comparison's sizes exact.
    assert result.rrdetails["method"] == "dependent rounding"
    for chosen, q in zip((result.selected, *result.selected_star), result.sizes, strict=True):
        taken = pd.crosstab(z[chosen], st[chosen]).reindex(
            index=q.index, columns=STRATA, fill_value=0
        )
        np.testing.assert_array_equal(taken.to_numpy(), q.to_numpy())
    # The objective sums the comparisons' weighted imbalances.
    assert len(result.eps) == len(result.lpdetails["eps"]) == 3 * len(X.columns)
    lp_total = eps_identity(result, result.lpdetails["eps"]) + 0.5 * eps_identity(
        result, result.lpdetails["eps_star"][0]
    )
    assert lp_total == pytest.approx(result.lpdetails["objective"], abs=1e-9)
    total = eps_identity(result, result.eps) + 0.5 * eps_identity(result, result.eps_star[0])
    assert total == pytest.approx(result.objective, abs=1e-9)


# --- rounding -------------------------------------------------------------------------------


@pytest.mark.parametrize("n_groups", [2, 3])
def test_stratum_sizes_exact_after_rounding(n_groups: int) -> None:
    z, X, st, importances = make_problem(7, n_groups)
    ratio = 1.5 if n_groups == 2 else 1.0
    result = optimize_controls(z, X, st, importances=importances, ratio=ratio, seed=5, runs=6)
    taken = pd.crosstab(z[result.selected], st[result.selected])
    taken = taken.reindex(index=result.sizes[0].index, columns=STRATA, fill_value=0)
    np.testing.assert_array_equal(taken.to_numpy(), result.sizes[0].to_numpy())
    # Units at 1 are kept, units at 0 never drawn; all treated are selected.
    assert result.selected[result.pr == 1].all()
    assert not result.selected[result.pr == 0].any()
    assert result.selected[z == 1].all()
    assert result.rrdetails["method"] == "conditional Poisson"


def test_identities_hold_for_lp_and_rounding() -> None:
    z, X, st, importances = make_problem(11, 3)
    result = optimize_controls(z, X, st, importances=importances, ratio=1.0, seed=2, runs=8)
    assert eps_identity(result, result.eps) == pytest.approx(result.objective, abs=1e-9)
    lp = result.lpdetails
    assert eps_identity(result, lp["eps"]) == pytest.approx(lp["objective"], abs=1e-9)
    assert float(lp["eps"].to_numpy().sum()) == pytest.approx(lp["objective_wo_importances"])
    assert float(result.eps.to_numpy().sum()) == pytest.approx(result.objective_wo_importances)
    runs = result.rrdetails["run_objectives"]
    assert len(runs) == 8 and result.objective == runs.min()
    assert result.objective >= lp["objective"] - 1e-9
    # The eps of the selection are its imbalances, recomputed here from scratch.
    values = X.fillna(0.0)
    chosen = result.selected.to_numpy()
    q = result.sizes[0]
    mean = {g: values[chosen & (z == g).to_numpy()].sum() / q.loc[g].sum() for g in (0, 1, 2)}
    imbalance = mean[0] - mean[1]
    np.testing.assert_allclose(
        result.eps.loc[[f"{c}_0:1" for c in X.columns], "negative"].to_numpy()
        - result.eps.loc[[f"{c}_0:1" for c in X.columns], "positive"].to_numpy(),
        imbalance.to_numpy(),
        atol=1e-12,
    )


def test_best_run_is_the_first_minimum() -> None:
    z, X, st, importances = make_problem(12, 2)
    result = optimize_controls(z, X, st, importances=importances, ratio=1.5, seed=9, runs=10)
    runs = result.rrdetails["run_objectives"]
    single = [
        optimize_controls(z, X, st, importances=importances, ratio=1.5, seed=9, runs=r)
        for r in (int(runs.idxmin()),)
    ]
    # The same seed replays the same runs: the best of the first idxmin runs is the winner.
    assert single[0].objective == result.objective
    pd.testing.assert_series_equal(single[0].selected, result.selected)


def test_integer_program_lies_between_lp_and_rounding() -> None:
    z, X, st, importances = make_problem(13, 3, per_cell=(3, 7, 6))
    rounded = optimize_controls(z, X, st, importances=importances, ratio=1.0, seed=1, runs=20)
    exact = optimize_controls(z, X, st, importances=importances, ratio=1.0, integer=True)
    assert rounded.lpdetails["objective"] - 1e-7 <= exact.objective <= rounded.objective + 1e-7
    assert set(np.unique(exact.pr)) <= {0.0, 1.0}
    assert exact.rrdetails["method"] == "integer program"
    assert eps_identity(exact, exact.eps) == pytest.approx(exact.objective, abs=1e-9)


def test_seed_reproduces_and_is_reported() -> None:
    z, X, st, importances = make_problem(14, 2)
    first = optimize_controls(z, X, st, importances=importances, ratio=1.5, seed=21, runs=3)
    again = optimize_controls(z, X, st, importances=importances, ratio=1.5, seed=21, runs=3)
    pd.testing.assert_series_equal(first.selected, again.selected)
    drawn = optimize_controls(z, X, st, importances=importances, ratio=1.5)
    assert isinstance(drawn.rrdetails["seed"], int)
    replay = optimize_controls(
        z, X, st, importances=importances, ratio=1.5, seed=drawn.rrdetails["seed"]
    )
    pd.testing.assert_series_equal(drawn.selected, replay.selected)


def test_cps_fits_the_inclusion_probabilities() -> None:
    rng = np.random.default_rng(0)
    pi = rng.uniform(0.02, 0.98, 40)
    pi *= 17 / pi.sum()
    log_w = _fit_log_weights(pi, 17)
    np.testing.assert_allclose(cps_inclusion_probabilities(log_w, 17), pi, atol=1e-9)
    extreme = np.r_[np.full(30, 0.99999), np.full(30, 0.00001)]
    log_w = _fit_log_weights(extreme, 30)
    np.testing.assert_allclose(cps_inclusion_probabilities(log_w, 30), extreme, atol=1e-7)


def test_independent_rounding_without_correct_sizes() -> None:
    z, X, st, importances = make_problem(5, 3, per_cell=(3, 10, 6))
    q_star = pd.DataFrame([[2, 2, 2], [0, 0, 0], [1, 1, 1]], index=[0, 1, 2], columns=STRATA)
    result = optimize_controls(
        z,
        X,
        st,
        importances=importances,
        ratio=1.0,
        treated_star=2,
        q_star_s=q_star,
        seed=1,
        correct_sizes=False,
    )
    assert result.rrdetails["method"] == "independent per unit"
    assert not (result.selected & result.selected_star[0]).any()
    assert result.selected[z == 1].all()  # treated units are at 1 in the main comparison
    assert eps_identity(result, result.eps) + eps_identity(
        result, result.eps_star[0]
    ) == pytest.approx(result.objective, abs=1e-9)


def test_dependent_rounding_keeps_sums_and_marginals() -> None:
    rng = np.random.default_rng(2)
    # A mixture of assignments of 3 units to comparison 0 and 4 to comparison 1 out of 10.
    table = np.zeros((10, 2))
    for weight in rng.dirichlet(np.ones(4)):
        units = rng.permutation(10)
        table[units[:3], 0] += weight
        table[units[3:7], 1] += weight
    draws = np.array([dependent_rounding(table, rng) for _ in range(3_000)])
    assert (draws.sum(axis=1) == [3, 4]).all()
    assert (draws.sum(axis=2) <= 1).all()
    # 3 000 draws: standard error at most 0.0092, so 0.04 is over 4 standard errors.
    np.testing.assert_allclose(draws.mean(axis=0), table, atol=0.04)


@settings(max_examples=40, deadline=None)
@given(
    raw=st_.lists(st_.floats(min_value=0.001, max_value=0.999), min_size=2, max_size=60),
    fraction=st_.floats(min_value=0.05, max_value=0.95),
    seed=st_.integers(min_value=0, max_value=2**32 - 1),
)
def test_cps_design_matches_any_inclusion_probabilities(
    raw: list[float], fraction: float, seed: int
) -> None:
    # Shift the logits so that the probabilities sum to an integer size, then round to 5
    # decimals as the linear program's values are.
    logits = np.log(raw) - np.log1p(-np.array(raw))
    size = max(1, min(len(raw) - 1, round(fraction * len(raw))))
    low, high = -60.0, 60.0
    for _ in range(200):
        middle = (low + high) / 2
        total = (1 / (1 + np.exp(-(logits + middle)))).sum()
        low, high = (middle, high) if total < size else (low, middle)
    pi = np.round(1 / (1 + np.exp(-(logits + middle))), 5)
    assume(abs(pi.sum() - size) < 1e-3)
    design = ConditionalPoisson(pi)
    drawn = design.sample(np.random.default_rng(seed))
    assert drawn.sum() == size
    assert drawn[pi == 1].all() and not drawn[pi == 0].any()
    fractional = (pi > 0) & (pi < 1)
    needed = size - int((pi == 1).sum())
    if 0 < needed < fractional.sum():
        target = pi[fractional] * needed / pi[fractional].sum()
        fitted = cps_inclusion_probabilities(design._log_w, needed)
        np.testing.assert_allclose(fitted, target, atol=1e-7)


def test_cps_sample_has_fixed_size_and_right_frequencies() -> None:
    rng = np.random.default_rng(1)
    pi = np.array([1.0, 0.0, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2])  # sums to 4
    design = ConditionalPoisson(pi)
    draws = np.array([design.sample(rng) for _ in range(20_000)])
    assert (draws.sum(axis=1) == 4).all()
    # 20 000 draws: standard error at most 0.0036, so 0.015 is over 4 standard errors.
    np.testing.assert_allclose(draws.mean(axis=0), pi, atol=0.015)
    with pytest.raises(ValueError, match="integer"):
        conditional_poisson_sample(np.array([0.5, 0.2]), rng)


# --- sizes and names ------------------------------------------------------------------------


def test_ratio_rounds_half_to_even_and_q_s_wins() -> None:
    z, X, st, _ = make_problem(15, 2, per_cell=(3, 12, 0))
    n_treated = counts(z, st)[1]
    assert set(n_treated) >= {3, 5}  # the two half cases below
    result = optimize_controls(z, X, st, ratio=2.5, seed=1)
    # R: round(7.5) = 8 and round(12.5) = 12 (halves to even); 2.5 x 4 = 10.
    expected = [{3: 8, 4: 10, 5: 12}[int(t)] for t in n_treated]
    np.testing.assert_array_equal(result.sizes[0].loc[0], expected)
    q_s = pd.Series({"a": 1, "b": 2, "c": 3})
    explicit = optimize_controls(z, X, st, ratio=2.5, q_s=q_s, seed=1)
    np.testing.assert_array_equal(explicit.sizes[0].loc[0], [1, 2, 3])
    np.testing.assert_array_equal(explicit.sizes[0].loc[1], n_treated)


def test_too_large_sizes_name_the_stratum() -> None:
    z, X, st, _ = make_problem(16, 2, per_cell=(4, 10, 0))
    available = counts(z, st)[0]
    with pytest.raises(DataError, match="stratum 'b'"):
        optimize_controls(z, X, st, q_s=pd.Series({"a": 1, "b": available[1] + 1, "c": 1}))
    with pytest.raises(DataError, match="stratum"):
        optimize_controls(z, X, st, ratio=4.0)
    with pytest.raises(DataError, match="ratio or q_s"):
        optimize_controls(z, X, st)
    with pytest.raises(DataError, match="treated=5"):
        optimize_controls(z, X, st, ratio=1.0, treated=5)
    with pytest.raises(DataError, match="importances"):
        optimize_controls(z, X, st, ratio=1.0, importances=pd.Series({"w": 1.0}))
    with pytest.raises(DataError, match="st has"):
        optimize_controls(z, X, st.iloc[:-1].to_numpy(), ratio=1.0)


def test_eps_rows_name_the_pairs_with_three_groups() -> None:
    z, X, st, importances = make_problem(17, 3)
    result = optimize_controls(z, X, st, importances=importances, ratio=1.0, seed=1)
    expected = [f"{c}_{g1}:{g2}" for g1, g2 in [(0, 1), (0, 2), (1, 2)] for c in X.columns]
    assert list(result.eps.index) == expected
    assert list(result.eps.columns) == ["positive", "negative"]
    assert result.eps.index.name == "constraint"
    assert result.selected.index.equals(X.index) and result.selected.dtype == bool
    assert (result.pr == result.pr.round(5)).all()
    two = optimize_controls(*make_problem(17, 2)[:3], ratio=1.0, seed=1)
    assert list(two.eps.index) == list(X.columns)


def test_public_names() -> None:
    assert hierps.optimize_controls is optimize_controls
    assert hierps.OptimizeControlsResult is OptimizeControlsResult


def test_integer_program_with_supplemental_comparison() -> None:
    z, X, st, importances = make_problem(6, 3, per_cell=(3, 8, 6))
    q_star = pd.DataFrame([[2, 2, 2], [0, 0, 0], [1, 1, 1]], index=[0, 1, 2], columns=STRATA)
    arguments = dict(importances=importances, ratio=1.0, treated_star=2, q_star_s=q_star)
    exact = optimize_controls(z, X, st, integer=True, **arguments)
    relaxed = optimize_controls(z, X, st, seed=1, runs=10, **arguments)
    assert relaxed.lpdetails["objective"] - 1e-7 <= exact.objective <= relaxed.objective + 1e-7
    assert not (exact.selected & exact.selected_star[0]).any()
    chosen = exact.selected_star[0]
    taken = pd.crosstab(z[chosen], st[chosen]).reindex(
        index=[0, 1, 2], columns=STRATA, fill_value=0
    )
    np.testing.assert_array_equal(taken.to_numpy(), q_star.to_numpy())


def test_q_s_table_for_several_groups() -> None:
    z, X, st, _ = make_problem(18, 3)
    n_s = counts(z, st)
    q_s = pd.DataFrame({"a": [3, 1], "b": [2, 2], "c": [1, 3]}, index=[0, 2])
    result = optimize_controls(z, X, st, q_s=q_s, seed=1)
    np.testing.assert_array_equal(result.sizes[0].loc[[0, 2]].to_numpy(), q_s.to_numpy())
    np.testing.assert_array_equal(result.sizes[0].loc[1].to_numpy(), n_s[1])
    wrong = pd.concat([q_s, pd.DataFrame({"a": [1], "b": [1], "c": [1]}, index=[1])])
    with pytest.raises(DataError, match="keep every treated unit"):
        optimize_controls(z, X, st, q_s=wrong)
    with pytest.raises(DataError, match="no column for stratum 'c'"):
        optimize_controls(z, X, st, q_s=q_s[["a", "b"]])
