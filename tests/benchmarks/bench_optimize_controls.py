"""Control-selection benchmark: hierps.optimize_controls on nh0506, as in natstrat's vignette.

Run: ``.venv/bin/python tests/benchmarks/bench_optimize_controls.py`` (not part of the test
suite); ``--repeats N`` sets the repetitions behind each median (default 5), ``--integer``
also times the mixed-integer program (``--time-limit`` seconds, default 120).

The vignette's problem: all 2,928 units of nh0506 (581 daily smokers, 2,347 never smokers),
strata ``age_cat : sex`` (6 levels), constraints from
``age + race + education + povertyr + bmi ~ 1 + strata`` (105 columns) and ``ratio = 1``.
Printed, each as the median over the repetitions:

* ``generate_constraints``;
* ``optimize_controls`` end to end with ``runs = 1`` and ``runs = 100``; the HiGHS solve alone
  (``lpdetails["seconds"]``); rounding per run, from the difference of the two;
* as peers, in the same process, the same linear program solved by cvxpy with Clarabel and
  with HiGHS (``|difference|`` written with ``cp.abs``), and by ``scipy.optimize.linprog``
  (HiGHS) with a dense constraint matrix; each objective is compared with hierps'.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import cvxpy as cp
import numpy as np
import pandas as pd
from scipy.optimize import linprog

import hierps
from hierps.natstrat.optimize import _build_program
from hierps.natstrat.sizes import main_sizes, make_design

AGE_LABELS = ["< 40 years", "40 - 50 years", "> 50 years"]
SEXES = ["Male", "Female"]
FORMULA = "age + race + education + povertyr + bmi ~ 1 + strata"


def load() -> pd.DataFrame:
    data = hierps.datasets.load_nh0506()
    age_cat = pd.cut(data["age"], bins=[19, 39, 50, 85], labels=AGE_LABELS, right=True)
    data["strata"] = pd.Categorical(
        age_cat.astype(str) + ":" + data["sex"].astype(str),
        categories=[f"{a}:{s}" for a in AGE_LABELS for s in SEXES],
    )
    return data


def timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cvxpy_objective(data: pd.DataFrame, X: pd.DataFrame, imp: np.ndarray, solver: str) -> float:
    """The main-comparison program written directly in cvxpy."""
    values = X.fillna(0.0).to_numpy()
    z = data["z"].to_numpy()
    treated = z == 1
    a = cp.Variable(len(z))
    constraints = [a >= 0, a <= 1]
    for stratum in data["strata"].cat.categories:
        inside = (data["strata"] == stratum).to_numpy()
        for group in (0, 1):
            mask = inside & (z == group)
            constraints.append(cp.sum(a[mask]) == (inside & treated).sum())
    n_treated = treated.sum()
    coefficient = np.where(treated, -1.0, 1.0) / n_treated  # pair (0, 1): controls - treated
    imbalance = values.T @ cp.multiply(coefficient, a)
    problem = cp.Problem(cp.Minimize(imp @ cp.abs(imbalance)), constraints)
    problem.solve(solver=solver)
    return float(problem.value)


def dense_linprog_objective(data: pd.DataFrame, X: pd.DataFrame, imp: np.ndarray) -> float:
    """hierps' program with its constraint matrix densified, through linprog/HiGHS."""
    design = make_design(data["z"], data["strata"], len(data))
    sizes = [main_sizes(1.0, None, design.group_index(1, "treated"), design)]
    program = _build_program(X.fillna(0.0).to_numpy(), design, sizes, [1.0], imp)
    n_var = program.n_a + program.n_eps
    upper = np.r_[np.ones(program.n_a), np.full(program.n_eps, np.inf)]
    result = linprog(
        program.cost,
        A_eq=program.A_eq.toarray(),
        b_eq=program.b_eq,
        bounds=np.column_stack([np.zeros(n_var), upper]),
        method="highs",
    )
    return float(result.fun)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--integer", action="store_true")
    parser.add_argument("--time-limit", type=float, default=120.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    data = load()
    print(f"nh0506: {len(data)} units, {int(data['z'].sum())} treated, 6 strata")

    t_constraints, constraints = timed(
        lambda: hierps.generate_constraints([FORMULA], data["z"], data), args.repeats
    )
    X, importances = constraints.X, constraints.importances
    print(f"generate_constraints: {X.shape[1]} columns, {t_constraints:.3f} s")

    def run(runs: int) -> hierps.OptimizeControlsResult:
        return hierps.optimize_controls(
            data["z"], X, data["strata"], importances=importances, ratio=1, seed=1, runs=runs
        )

    t_one, one = timed(lambda: run(1), args.repeats)
    t_many, many = timed(lambda: run(100), args.repeats)
    solve, round_one, round_many = [], [], []
    for _ in range(args.repeats):
        solve.append(run(1).lpdetails["seconds"])
        round_one.append(run(1).rrdetails["seconds"])
        round_many.append(run(100).rrdetails["seconds"])
    lp = one.lpdetails["objective"]
    fractional = int(((one.pr > 0) & (one.pr < 1)).sum())
    print(f"optimize_controls end to end: runs=1 {t_one:.3f} s, runs=100 {t_many:.3f} s")
    print(
        f"  HiGHS solve {statistics.median(solve):.3f} s; rounding runs=1 "
        f"{statistics.median(round_one) * 1e3:.2f} ms, runs=100 "
        f"{statistics.median(round_many) * 1e3:.1f} ms"
    )
    print(f"LP objective {lp:.6f} ({fractional} fractional units)")
    print(
        f"rounded objective runs=1 {one.objective:.6f}, best of 100 {many.objective:.6f} "
        f"(median run {many.rrdetails['run_objectives'].median():.6f})"
    )

    imp = importances.to_numpy()
    for label, function in [
        ("cvxpy + Clarabel", lambda: cvxpy_objective(data, X, imp, cp.CLARABEL)),
        ("cvxpy + HiGHS", lambda: cvxpy_objective(data, X, imp, cp.HIGHS)),
        ("linprog HiGHS, dense A", lambda: dense_linprog_objective(data, X, imp)),
    ]:
        seconds, objective = timed(function, args.repeats)
        difference = abs(objective - lp)
        print(f"peer {label}: {seconds:.3f} s, objective {objective:.6f} (|diff| {difference:.1e})")

    if args.integer:
        start = time.perf_counter()
        exact = hierps.optimize_controls(
            data["z"],
            X,
            data["strata"],
            importances=importances,
            ratio=1,
            integer=True,
            time_limit=args.time_limit,
        )
        print(
            f"integer program: {time.perf_counter() - start:.1f} s, objective "
            f"{exact.objective:.6f} ({exact.lpdetails['message']})"
        )


if __name__ == "__main__":
    main()
