"""Control selection for natural strata: natstrat's ``optimize_controls`` on SciPy's HiGHS.

The linear program (natstrat's ``balance_LP``) has one selection value ``a[c, i]`` in [0, 1]
per comparison ``c`` and unit ``i``, and for every comparison, pair of treatment groups
``(g1, g2)`` (sorted levels, all pairs) and constraint column ``j`` two slacks ``eps+``,
``eps-`` >= 0 with

    sum_{i in g1} a[c, i] X[i, j] / Q1 - sum_{i in g2} a[c, i] X[i, j] / Q2 + eps+ - eps- = 0,

``Q`` being a group's total size in the comparison (a pair with an empty group gives only
the slacks). Each comparison takes exactly ``q[c][g, s]`` units of group ``g`` from stratum
``s``, a unit serves at most one comparison, and the objective is
``sum_c weight_c sum_j importance_j (eps+ + eps-)``. Missing values of ``X`` count as 0.

The fractional solution is rounded by :mod:`hierps.natstrat.rounding`; the best of ``runs``
roundings, judged by the objective recomputed on the selection, is returned.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from hierps.exceptions import ConvergenceError, DataError, check_choice, warn
from hierps.natstrat.constraints import _r_label
from hierps.natstrat.rounding import (
    ConditionalPoisson,
    dependent_rounding,
    round_by_expectation,
)
from hierps.natstrat.sizes import Design, check_total, main_sizes, make_design, star_sizes

__all__ = ["OptimizeControlsResult", "optimize_controls"]

_SOLVERS = ("highs", "highs-ds", "highs-ipm")


@dataclass(frozen=True)
class OptimizeControlsResult:
    """Selected units and the balance they achieve (natstrat's ``optimize_controls`` list).

    Attributes
    ----------
    objective
        ``sum_c weight_c sum_j importance_j |imbalance_cj|`` of the returned selection
        (rounded, or the integer program's).
    objective_wo_importances
        The same without importances and comparison weights.
    eps
        Imbalance of the main comparison per constraint: columns ``positive``, ``negative``
        (``eps+``, ``eps-`` of the program). Rows are the columns of ``X``, with ``_g1:g2``
        appended when there are more than two treatment groups.
    eps_star
        ``eps`` of each supplemental comparison.
    importances
        Importance of each constraint column.
    weight_star
        Weight of each supplemental comparison.
    selected
        Whether each unit (treated included) is selected for the main comparison.
    selected_star
        ``selected`` of each supplemental comparison.
    pr
        Linear-program value of each unit in the main comparison, rounded to 5 decimals.
    pr_star
        ``pr`` of each supplemental comparison.
    sizes
        Units taken per treatment group (rows) and stratum (columns), one table per
        comparison, the main one first.
    rrdetails
        ``seed``, ``run_objectives`` and ``run_objectives_wo_importances`` (Series indexed
        by run) of the randomized rounding, ``method`` (how sizes were kept) and ``seconds``
        spent rounding (all runs, fitting the sampling designs included).
    lpdetails
        ``objective``, ``objective_wo_importances``, ``eps`` (and ``eps_star``) of the
        linear program's solution (of the integer program's with ``integer=True``), the
        solver's ``solver_objective``, ``status`` and ``message``, and ``seconds`` spent
        solving.
    """

    objective: float
    objective_wo_importances: float
    eps: pd.DataFrame
    eps_star: tuple[pd.DataFrame, ...]
    importances: pd.Series
    weight_star: tuple[float, ...]
    selected: pd.Series
    selected_star: tuple[pd.Series, ...]
    pr: pd.Series
    pr_star: tuple[pd.Series, ...]
    sizes: tuple[pd.DataFrame, ...]
    rrdetails: dict[str, Any]
    lpdetails: dict[str, Any]

    @property
    def weights(self) -> pd.Series:
        """The main comparison's selection as unit weights, for balance tables and effects.

        1 for a selected unit (every unit of the ``treated`` group and the chosen units of
        the other groups), 0 for the rest, on the index of the input (``X``'s, else ``z``'s).
        ``hierps.balance_table({"selection": (model, result), ...})`` reads them through
        :func:`hierps.weights_result`, so a selection and a weighting compare in one table; a
        Hájek mean with these weights is the plain mean of the selected units.
        """
        return self.selected.astype(float).rename("weight")


@dataclass(frozen=True)
class _Program:
    """Sparse pieces of the program; variables are ``[a (comparisons × units), eps]``."""

    balance: sparse.csr_array  # rows: comparison × pair × column; columns: a
    cost: np.ndarray  # objective coefficient of every variable
    row_weights: np.ndarray  # importance × comparison weight of each balance row
    A_eq: sparse.csr_array
    b_eq: np.ndarray
    A_ub: sparse.csr_array | None
    n_a: int
    n_eps: int


def _constraint_matrix(X: Any) -> tuple[np.ndarray, pd.Index, pd.Index | None]:
    if isinstance(X, pd.DataFrame):
        non_numeric = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if non_numeric:
            raise DataError(f"X column {non_numeric[0]!r} is not numeric")
        values = X.to_numpy(dtype=float, na_value=np.nan)
        columns, index = pd.Index([str(c) for c in X.columns]), X.index
    else:
        values = np.asarray(X, dtype=float)
        if values.ndim != 2:
            raise DataError(f"X must be two-dimensional, got shape {values.shape}")
        columns, index = pd.Index([str(j) for j in range(values.shape[1])]), None
    if columns.duplicated().any():
        raise DataError(f"X has duplicate column names: {list(columns[columns.duplicated()])}")
    if np.isinf(values).any():
        raise DataError("X has infinite values")
    # Missing values contribute nothing to a balance row, as in natstrat.
    return np.nan_to_num(values, nan=0.0), columns, index


def _importances(importances: Any, columns: pd.Index) -> pd.Series:
    if importances is None:
        values = np.ones(len(columns))
    elif isinstance(importances, pd.Series):
        series = importances.copy()
        series.index = [str(c) for c in series.index]
        missing = [c for c in columns if c not in series.index]
        if missing:
            raise DataError(f"importances has no entry for X column {missing[0]!r}")
        values = series.reindex(columns).to_numpy(dtype=float)
    else:
        values = np.asarray(importances, dtype=float)
        if values.shape != (len(columns),):
            raise DataError(
                f"importances has {values.size} entries but X has {len(columns)} columns"
            )
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise DataError("importances must be finite and non-negative")
    return pd.Series(values, index=pd.Index(columns, name="constraint"), name="importance")


def _build_program(
    X: np.ndarray,
    design: Design,
    sizes: list[pd.DataFrame],
    weights: list[float],
    importances: np.ndarray,
) -> _Program:
    n, p = X.shape
    k, n_strata = len(design.groups), len(design.strata)
    pairs = list(itertools.combinations(range(k), 2))
    n_comp, n_pairs = len(sizes), len(pairs)
    X_sparse = sparse.csr_array(X)

    blocks: list[list[Any]] = []
    for c, q in enumerate(sizes):
        totals = q.to_numpy().sum(axis=1)
        for g1, g2 in pairs:
            coef = np.zeros(n)
            if totals[g1] > 0 and totals[g2] > 0:
                coef[design.group_codes == g1] = 1.0 / totals[g1]
                coef[design.group_codes == g2] = -1.0 / totals[g2]
            row: list[Any] = [None] * n_comp
            row[c] = (sparse.diags_array(coef) @ X_sparse).T
            blocks.append(row)
    balance = sparse.block_array(blocks, format="csr")
    n_a, n_rows = n_comp * n, n_comp * n_pairs * p
    n_eps = 2 * n_rows

    identity = sparse.eye_array(n_pairs * p)
    slack = sparse.block_diag([sparse.hstack([identity, -identity])] * n_comp, format="csr")

    # One row per comparison and non-empty group × stratum cell.
    cells = design.group_codes * n_strata + design.stratum_codes
    used, cell_rows = np.unique(cells, return_inverse=True)
    membership = sparse.csr_array((np.ones(n), (cell_rows, np.arange(n))), shape=(len(used), n))
    stratum_rows = sparse.block_diag([membership] * n_comp, format="csr")
    b_sizes = np.concatenate([q.to_numpy().ravel()[used] for q in sizes]).astype(float)

    A_eq = sparse.vstack(
        [
            sparse.hstack([balance, slack]),
            sparse.hstack([stratum_rows, sparse.csr_array((stratum_rows.shape[0], n_eps))]),
        ],
        format="csr",
    )
    b_eq = np.concatenate([np.zeros(n_rows), b_sizes])
    A_ub = None
    if n_comp > 1:
        # A unit serves at most one comparison.
        A_ub = sparse.hstack(
            [sparse.hstack([sparse.eye_array(n)] * n_comp), sparse.csr_array((n, n_eps))],
            format="csr",
        )
    row_weights = np.concatenate([np.tile(importances * w, n_pairs) for w in weights])
    cost = np.concatenate(
        [np.zeros(n_a)] + [np.tile(importances * w, 2 * n_pairs) for w in weights]
    )
    return _Program(balance, cost, row_weights, A_eq, b_eq, A_ub, n_a, n_eps)


def _solve(
    program: _Program, integer: bool, solver: str, time_limit: float | None
) -> tuple[np.ndarray, dict[str, Any]]:
    n_var = program.n_a + program.n_eps
    upper = np.r_[np.ones(program.n_a), np.full(program.n_eps, np.inf)]
    options: dict[str, Any] = {} if time_limit is None else {"time_limit": float(time_limit)}
    start = time.perf_counter()
    if integer:
        constraints = [LinearConstraint(program.A_eq, program.b_eq, program.b_eq)]
        if program.A_ub is not None:
            constraints.append(LinearConstraint(program.A_ub, -np.inf, 1.0))
        integrality = np.r_[np.ones(program.n_a), np.zeros(program.n_eps)]
        # Solved to optimality, as natstrat's default GLPK does, not to HiGHS' 1e-4 gap.
        result = milp(
            program.cost,
            constraints=constraints,
            integrality=integrality,
            bounds=Bounds(np.zeros(n_var), upper),
            options={**options, "mip_rel_gap": 1e-9},
        )
        if result.x is None:
            raise ConvergenceError(f"the integer program found no solution: {result.message}")
        if result.status != 0:
            warn(f"the integer program stopped early ({result.message}); using its best solution")
    else:
        result = linprog(
            program.cost,
            A_ub=program.A_ub,
            b_ub=None if program.A_ub is None else np.ones(program.A_ub.shape[0]),
            A_eq=program.A_eq,
            b_eq=program.b_eq,
            bounds=np.column_stack([np.zeros(n_var), upper]),
            method=solver,
            options=options,
        )
        if result.status != 0 or result.x is None:
            raise ConvergenceError(f"the linear program was not solved: {result.message}")
    details = {
        "solver_objective": float(result.fun),
        "status": int(result.status),
        "message": str(result.message),
        "seconds": time.perf_counter() - start,
    }
    return np.asarray(result.x), details


def _eps_frames(imbalance: np.ndarray, names: pd.Index, n_comp: int) -> list[pd.DataFrame]:
    """``eps+ = max(-imbalance, 0)``, ``eps- = max(imbalance, 0)`` per comparison."""
    rows = len(names)
    return [
        pd.DataFrame(
            {
                "positive": np.maximum(-imbalance[c * rows : (c + 1) * rows], 0.0),
                "negative": np.maximum(imbalance[c * rows : (c + 1) * rows], 0.0),
            },
            index=names,
        )
        for c in range(n_comp)
    ]


def _eps_names(columns: pd.Index, groups: list[Any]) -> pd.Index:
    if len(groups) == 2:
        return pd.Index(columns, name="constraint")
    names = [
        f"{column}_{_r_label(g1)}:{_r_label(g2)}"
        for g1, g2 in itertools.combinations(groups, 2)
        for column in columns
    ]
    return pd.Index(names, name="constraint")


def _cells(design: Design) -> list[np.ndarray]:
    """Units of each non-empty group × stratum cell."""
    cells = design.group_codes * len(design.strata) + design.stratum_codes
    order = np.argsort(cells, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(cells[order])) + 1)


def _rounder(
    a: np.ndarray, pr: np.ndarray, design: Design, exact: bool
) -> tuple[str, Callable[[np.random.Generator], np.ndarray]]:
    """The rounding method's name and a function drawing one selection."""
    if not exact:
        return "independent per unit", lambda rng: round_by_expectation(pr, rng)
    cells = _cells(design)
    if a.shape[0] == 1:
        samplers = [(members, ConditionalPoisson(pr[0, members])) for members in cells]

        def draw_cps(rng: np.random.Generator) -> np.ndarray:
            selection = np.zeros(pr.shape, dtype=bool)
            for members, sampler in samplers:
                selection[0, members] = sampler.sample(rng)
            return selection

        return "conditional Poisson", draw_cps

    def draw_dependent(rng: np.random.Generator) -> np.ndarray:
        # Unrounded values: their cell sums are the sizes up to the solver's tolerance.
        selection = np.zeros(a.shape, dtype=bool)
        for members in cells:
            selection[:, members] = dependent_rounding(a[:, members].T, rng).T
        return selection

    return "dependent rounding", draw_dependent


def optimize_controls(
    z: Any,
    X: Any,
    st: Any,
    importances: Any = None,
    treated: Any = 1,
    ratio: Any = None,
    q_s: Any = None,
    treated_star: Any = None,
    q_star_s: Any = None,
    weight_star: Any = 1,
    integer: bool = False,
    solver: str = "highs",
    seed: int | None = None,
    runs: int = 1,
    time_limit: float | None = None,
    correct_sizes: bool = True,
) -> OptimizeControlsResult:
    """Select units within strata that balance constraint columns, as natstrat does.

    Parameters
    ----------
    z
        Treatment group of each unit (two or more groups).
    X
        Constraint columns (one row per unit), usually ``generate_constraints(...).X``; a
        column is balanced when its group means agree. Missing values count as 0.
    st
        Stratum of each unit. A categorical keeps its category order (empty ones included).
    importances
        Non-negative weight of each column (Series indexed by column name, or array);
        default 1.
    treated
        The treatment group whose units are all kept in the main comparison.
    ratio
        Units of each other group to take per treated unit in each stratum: a number, one
        entry per group in sorted order, or a mapping group → ratio. Each stratum takes
        ``round(ratio × treated count)``, halves rounded to even as in R.
    q_s
        Units to take per stratum, overriding ``ratio``: a Series indexed by stratum (for
        every non-treated group) or a DataFrame groups × strata.
    treated_star, q_star_s, weight_star
        Supplemental comparisons: the reference group of each, its sizes (a DataFrame
        groups × strata, or a list of them) and the weight of its balance in the objective.
    integer
        Solve the mixed-integer program (binary selection) instead of rounding the linear
        program.
    solver
        HiGHS method for the linear program: ``"highs"``, ``"highs-ds"`` or ``"highs-ipm"``
        (the integer program always uses HiGHS' branch and bound).
    seed
        Seed of the randomized rounding; drawn (and reported) when ``None``.
    runs
        Number of roundings; the one with the smallest objective wins (the first on ties).
    time_limit
        Seconds allowed to the solver; ``None`` for no limit.
    correct_sizes
        ``True``: each group × stratum gets exactly its size, the fractional units being
        drawn with the linear-program values as inclusion probabilities: by conditional
        Poisson sampling with one comparison, by dependent rounding (which also keeps units
        in one comparison) with supplemental comparisons, where natstrat keeps sizes only
        in expectation. ``False``: each unit is drawn independently (natstrat's
        ``randomized_rounding_expectation``; sizes right in expectation).

    Returns
    -------
    OptimizeControlsResult
        Selection, balance (``eps``), objectives and the linear program's details. The
        identities ``objective = sum(importances × (positive + negative))`` (summed over
        comparisons with their weights) hold for the selection and for the linear program.

    Raises
    ------
    DataError
        If inputs disagree in length, ``treated`` is not a group, neither ``ratio`` nor
        ``q_s`` is given, or a size exceeds the units of its group in a stratum (the
        message names the stratum).
    ConvergenceError
        If HiGHS does not solve the program.
    """
    check_choice("solver", solver, _SOLVERS)
    if not isinstance(runs, int | np.integer) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be positive or None, got {time_limit!r}")
    values, columns, index = _constraint_matrix(X)
    if index is None:
        index = z.index if isinstance(z, pd.Series) else pd.RangeIndex(values.shape[0])
    index = index.rename(index.name or "unit")
    weights_j = _importances(importances, columns)
    design = make_design(z, st, values.shape[0])
    treated_code = design.group_index(treated, "treated")
    sizes = [main_sizes(ratio, q_s, treated_code, design)]
    _, star_q, star_w = star_sizes(treated_star, q_star_s, weight_star, design)
    sizes += star_q
    check_total(sizes, design)
    comparison_weights = [1.0, *star_w]
    n_comp, n = len(sizes), values.shape[0]

    program = _build_program(values, design, sizes, comparison_weights, weights_j.to_numpy())
    solution, solve_details = _solve(program, integer, solver, time_limit)
    a = np.clip(solution[: program.n_a], 0.0, 1.0).reshape(n_comp, n)
    names = _eps_names(columns, design.groups)

    def evaluate(selection: np.ndarray) -> tuple[float, float, np.ndarray]:
        imbalance = program.balance @ selection.ravel().astype(float)
        absolute = np.abs(imbalance)
        return float(program.row_weights @ absolute), float(absolute.sum()), imbalance

    lp_objective, lp_plain, lp_imbalance = evaluate(a)
    lp_eps = _eps_frames(lp_imbalance, names, n_comp)
    lpdetails = {
        "objective": lp_objective,
        "objective_wo_importances": lp_plain,
        "eps": lp_eps[0],
        "eps_star": tuple(lp_eps[1:]),
        **solve_details,
    }

    if seed is None:
        seed = int(np.random.default_rng().integers(1, 1_000_001))
    rng = np.random.default_rng(seed)
    pr = np.round(a, 5)
    start = time.perf_counter()
    method, draw = ("integer program", None) if integer else _rounder(a, pr, design, correct_sizes)
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    run_objectives, run_plain = [], []
    for _ in range(1 if integer else runs):
        selection = pr > 0.5 if draw is None else draw(rng)
        objective, plain, imbalance = evaluate(selection)
        run_objectives.append(objective)
        run_plain.append(plain)
        if best is None or objective < best[0]:
            best = (objective, plain, imbalance, selection)
    assert best is not None
    rounding_seconds = time.perf_counter() - start
    objective, plain, imbalance, selection = best
    eps = _eps_frames(imbalance, names, n_comp)
    run_index = pd.RangeIndex(1, len(run_objectives) + 1, name="run")
    rrdetails = {
        "seed": seed,
        "method": method,
        "run_objectives": pd.Series(run_objectives, index=run_index, name="objective"),
        "run_objectives_wo_importances": pd.Series(
            run_plain, index=run_index, name="objective_wo_importances"
        ),
        "seconds": rounding_seconds,
    }
    selected = [pd.Series(selection[c], index=index, name="selected") for c in range(n_comp)]
    prs = [pd.Series(pr[c], index=index, name="pr") for c in range(n_comp)]
    return OptimizeControlsResult(
        objective=objective,
        objective_wo_importances=plain,
        eps=eps[0],
        eps_star=tuple(eps[1:]),
        importances=weights_j,
        weight_star=tuple(star_w),
        selected=selected[0],
        selected_star=tuple(selected[1:]),
        pr=prs[0],
        pr_star=tuple(prs[1:]),
        sizes=tuple(sizes),
        rrdetails=rrdetails,
        lpdetails=lpdetails,
    )
