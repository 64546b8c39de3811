"""MAP balancing weights on a Dask cluster: block Newton by map-reduce over partitions.

Every quantity the block Newton step needs from the units is a per-group sum over the
controls (math §9): ``Σ w``, ``Σ w x`` and ``Σ w x x'`` with ``w = exp(c_j · z)``. Such sums
are additive over any partition of the rows, so one Newton iteration is

1. **map**: each persisted partition block (its controls, standardized and sorted by group)
   computes those sums for the groups it holds, from the group coefficients ``c_j``
   broadcast by the driver;
2. **reduce**: a tree of merges adds the partial sums of groups that span partitions;
3. **driver**: the small block system is solved exactly as in memory
   (:mod:`hierps.calibrated.newton`: Schur complement on the global block, batched Cholesky
   of the group blocks), and the next coefficients are broadcast.

The line search of the in-memory solver evaluates the objective many times along a
direction; here every evaluation would be a round trip, so each round trip evaluates the
sums at the proposed point and the driver accepts it by the Armijo test, or backtracks by
quadratic interpolation. Near the optimum full Newton steps pass, one round trip each. The
optimum is the same, so weights and effects agree with the in-memory fit to the tolerance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hierps.calibrated.arms import arms_of
from hierps.calibrated.fit import MapResult
from hierps.calibrated.hierarchy import hierarchical_problem
from hierps.calibrated.newton import (
    ARMIJO,
    NewtonTrace,
    _factorize,
    _gradient,
    _newton_direction,
    _objective,
    group_coefficients,
)
from hierps.calibrated.problem import _LAYOUTS, ControlLayout
from hierps.design.hyperparameters import MapHyperparameters, given_scales
from hierps.effects.estimands import att_from_catt, effects_from_sums
from hierps.effects.inestimable import warn_inestimable
from hierps.exceptions import ConvergenceError
from hierps.scale.dask_design import DaskDesign, UnitPlan

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["ControlBlock", "DaskMapResult", "GroupPartial", "fit_map_dask", "persist_blocks"]

# Partial sums are merged eight at a time: a few levels even for thousands of partitions.
FAN_IN = 8
# Rows per batch of the second-moment products, which bounds their temporaries.
CHUNK_ROWS = 1 << 16
BACKTRACK_MIN, BACKTRACK_MAX = 0.1, 0.5


@dataclass(frozen=True)
class GroupPartial:
    """Per-group sums (or maxima) over the rows of some partitions: ``values[g]`` belongs to
    group code ``groups[g]``; groups are sorted and unique."""

    groups: np.ndarray
    values: np.ndarray  # (G, W)

    def dense(self, n_groups: int, fill: float = 0.0) -> np.ndarray:
        out = np.full((n_groups, self.values.shape[1]), fill)
        out[self.groups] = self.values
        return out


def merge_partials(*parts: GroupPartial, maximum: bool = False) -> GroupPartial:
    """Add (or take the maximum of) the entries of the same group across partials."""
    groups = np.concatenate([p.groups for p in parts])
    values = np.concatenate([p.values for p in parts])
    order = np.argsort(groups, kind="stable")
    groups, values = groups[order], values[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if len(groups) else []
    reduce = np.maximum if maximum else np.add
    merged = reduce.reduceat(values, starts, axis=0) if len(groups) else values
    return GroupPartial(groups[starts] if len(groups) else groups, merged)


@dataclass(frozen=True, eq=False)
class ControlBlock:
    """One partition in the solver's form: its controls sorted by group, and the per-group
    sums that do not depend on the coefficients."""

    groups: np.ndarray  # (G,) group codes of the controls' groups, sorted
    starts: np.ndarray  # (G,) first row of each group
    rows_group: np.ndarray  # (n_c,) group code of each control
    x: np.ndarray  # (n_c, p) standardized unit covariates of the controls
    y: np.ndarray | None  # (n_c,) outcome of the controls
    data: GroupPartial  # data-only sums, see DATA_COLUMNS


def _data_columns(p: int) -> dict[str, slice]:
    """Layout of the data-only sums per group: counts, Σ x and Σ x² per arm, Σ y per arm."""
    names = [("n_treated", 1), ("n_control", 1), ("treated_x", p), ("control_x", p)]
    names += [("treated_x2", p), ("control_x2", p), ("treated_y", 1), ("control_y", 1)]
    out, start = {}, 0
    for name, width in names:
        out[name] = slice(start, start + width)
        start += width
    return out


def control_block(frame: pd.DataFrame, plan: UnitPlan) -> ControlBlock:
    """Encode, standardize and sort one partition's controls by group (runs on a worker)."""
    codes = plan.codes(frame)
    treated = plan.treated(frame)
    x = plan.standardized(frame)
    y = None if plan.outcome is None else frame[plan.outcome].to_numpy(dtype=float)
    p = x.shape[1]
    columns = _data_columns(p)
    present, inverse = np.unique(codes, return_inverse=True)
    data = np.zeros((len(present), columns["control_y"].stop))

    def add(name: str, mask: np.ndarray, values: np.ndarray) -> None:
        for k in range(values.shape[1]):
            data[:, columns[name].start + k] = np.bincount(
                inverse[mask], weights=values[mask, k], minlength=len(present)
            )

    ones = np.ones((len(codes), 1))
    for arm, mask in (("treated", treated), ("control", ~treated)):
        add(f"n_{arm}", mask, ones)
        add(f"{arm}_x", mask, x)
        add(f"{arm}_x2", mask, x**2)
        if y is not None:
            add(f"{arm}_y", mask, y[:, None])
    control_rows = np.flatnonzero(~treated)
    order = control_rows[np.argsort(codes[control_rows], kind="stable")]
    rows_group = codes[order]
    starts = np.flatnonzero(np.r_[True, rows_group[1:] != rows_group[:-1]]) if len(order) else []
    return ControlBlock(
        groups=rows_group[starts] if len(order) else np.zeros(0, dtype=np.int64),
        starts=np.asarray(starts, dtype=np.int64),
        rows_group=rows_group,
        x=np.ascontiguousarray(x[order]),
        y=None if y is None else y[order],
        data=GroupPartial(present, data),
    )


def persist_blocks(design: DaskDesign) -> list:
    """Build the solver blocks of every partition and keep them in the workers' memory."""
    import dask

    block = dask.delayed(control_block, pure=True)
    return list(dask.persist(*[block(part, design.plan) for part in design.frame.to_delayed()]))


def _tree_merge(parts: list, maximum: bool = False):
    import dask

    merge = dask.delayed(merge_partials, pure=True)
    while len(parts) > 1:
        parts = [
            merge(*parts[i : i + FAN_IN], maximum=maximum) for i in range(0, len(parts), FAN_IN)
        ]
    return parts[0]


def _map_reduce(blocks: list, function, *arguments, maximum: bool = False) -> GroupPartial:
    """One map over the blocks and one tree reduce, computed on the active scheduler."""
    import dask

    shared = [dask.delayed(a, pure=True) if isinstance(a, np.ndarray) else a for a in arguments]
    mapped = [dask.delayed(function, pure=True)(b, *shared) for b in blocks]
    (total,) = dask.compute(_tree_merge(mapped, maximum=maximum))
    return total


def _segment_sums(block: ControlBlock, values) -> np.ndarray:
    """Per-group sums of ``values(lo, hi)`` (rows lo..hi, any width), in row batches."""
    n, starts = len(block.rows_group), block.starts
    out = None
    for lo in range(0, n, CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, n)
        first = np.searchsorted(starts, lo, side="right") - 1
        last = np.searchsorted(starts, hi, side="left")
        local = np.maximum(starts[first:last], lo) - lo
        sums = np.add.reduceat(values(lo, hi), local, axis=0)
        if out is None:
            out = np.zeros((len(starts), sums.shape[1]))
        out[first:last] += sums
    return np.zeros((0, 0)) if out is None else out


def _eta(block: ControlBlock, coefficients: np.ndarray, lo: int, hi: int) -> np.ndarray:
    c = coefficients[block.rows_group[lo:hi]]
    return c[:, 0] + np.einsum("ij,ij->i", block.x[lo:hi], c[:, 1:])


def newton_sums(block: ControlBlock, coefficients: np.ndarray) -> GroupPartial:
    """``Σ w``, ``Σ w x`` and the upper triangle of ``Σ w x x'`` per group (a map task)."""
    p = block.x.shape[1]
    upper_a, upper_b = np.triu_indices(p)

    def values(lo: int, hi: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            w = np.exp(_eta(block, coefficients, lo, hi))
        x = block.x[lo:hi]
        wx = x * w[:, None]
        return np.column_stack([w, wx, wx[:, upper_a] * x[:, upper_b]])

    return GroupPartial(block.groups, _segment_sums(block, values))


def _group_max_eta(block: ControlBlock, coefficients: np.ndarray) -> GroupPartial:
    eta = _eta(block, coefficients, 0, len(block.rows_group))
    top = np.maximum.reduceat(eta, block.starts) if len(eta) else eta
    return GroupPartial(block.groups, top[:, None])


def _result_sums(
    block: ControlBlock, coefficients: np.ndarray, largest: np.ndarray
) -> GroupPartial:
    """Per group: Σ r, Σ r y, Σ r² of the relative weights r = w / max w; Σ w, Σ w², Σ w y,
    Σ w x."""

    def values(lo: int, hi: int) -> np.ndarray:
        eta = _eta(block, coefficients, lo, hi)
        relative = np.exp(eta - largest[block.rows_group[lo:hi]])
        with np.errstate(over="ignore"):
            w = np.exp(eta)
        y = np.zeros(hi - lo) if block.y is None else block.y[lo:hi]
        columns = [relative, relative * y, relative**2, w, w**2, w * y]
        return np.column_stack([*columns, block.x[lo:hi] * w[:, None]])

    return GroupPartial(block.groups, _segment_sums(block, values))


def _block_data(block: ControlBlock) -> GroupPartial:
    return block.data


def _assemble(sums: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """First moments (J, D) and moment matrices (J, D, D) of z = (1, x) from the map sums."""
    n_groups, dimension = len(sums), p + 1
    first = sums[:, :dimension]
    moments = np.empty((n_groups, dimension, dimension))
    moments[:, 0, :] = first
    moments[:, :, 0] = first
    upper_a, upper_b = np.triu_indices(p)
    moments[:, 1 + upper_a, 1 + upper_b] = sums[:, dimension:]
    moments[:, 1 + upper_b, 1 + upper_a] = sums[:, dimension:]
    return first, moments


def _layout(design: DaskDesign, data: np.ndarray) -> ControlLayout:
    """The solver's layout without unit rows: the groups in input order and Σ_T z."""
    p = len(design.unit_names)
    columns = _data_columns(p)
    treated_moments = np.column_stack(
        [data[:, columns["n_treated"]], data[:, columns["treated_x"]]]
    )
    empty = np.zeros(0, dtype=np.int64)
    return ControlLayout(
        buckets=(),
        group_order=np.arange(design.n_groups),
        slots=empty,
        order=empty,
        padding=np.zeros(0),
        treated_moments=treated_moments,
        gram=np.zeros((design.n_groups, p + 1, p + 1)),
    )


def fit_map_dask(
    design: DaskDesign,
    sigma_alpha: float | None = None,
    sigma_beta: float | np.ndarray | None = None,
    sigma_mu_beta: float | None = None,
    sigma_gamma: float | None = None,
    sigma_intercept: float | None = None,
    tol: float = 1e-8,
    max_iterations: int = 100,
    init: DaskMapResult | None = None,
) -> DaskMapResult:
    """Fit the calibrated-loss mode of a Dask design on the active Dask scheduler.

    The arguments are those of :func:`hierps.calibrated.fit.fit_map`; ``max_iterations``
    counts Newton directions (each one round trip when the full step is accepted, one more
    per backtracking step).
    """
    given = given_scales(sigma_alpha, sigma_beta, sigma_mu_beta, sigma_gamma, sigma_intercept)
    hyperparameters = MapHyperparameters.from_user(int(design.varying.sum()), **given)
    if init is not None and not isinstance(init, DaskMapResult):
        raise TypeError(f"init must be a result of a Dask fit, not {type(init).__name__}")
    blocks = design.control_blocks
    data = _data_sums(design)
    if design not in _LAYOUTS:
        _LAYOUTS[design] = _layout(design, data)
    problem = hierarchical_problem(design, hyperparameters)
    p = len(design.unit_names)
    if init is None:
        theta_global = np.zeros(problem.n_global)
        n_controls = data[:, _data_columns(p)["n_control"]].sum()
        theta_global[0] = np.log(problem.treated_moments[:, 0].sum() / max(n_controls, 1))
        theta_local = np.zeros((problem.n_groups, problem.n_local))
    else:
        theta_global, theta_local = init._theta_global.copy(), init._theta_local.copy()

    pass_seconds: list[float] = []

    def evaluate(theta_global, theta_local):
        started = time.perf_counter()
        coefficients = group_coefficients(problem, theta_global, theta_local)
        sums = _map_reduce(blocks, newton_sums, coefficients).dense(design.n_groups)
        pass_seconds.append(time.perf_counter() - started)
        first, moments = _assemble(sums, p)
        value = _objective(problem, theta_global, theta_local, float(first[:, 0].sum()))
        return value, first, moments

    objective, first, moments = evaluate(theta_global, theta_local)
    history, round_trips = [objective], 1
    converged, max_gradient = False, np.inf
    for iteration in range(max_iterations + 1):
        gradient_global, gradient_local = _gradient(problem, theta_global, theta_local, first)
        max_gradient = float(
            max(np.abs(gradient_global).max(initial=0.0), np.abs(gradient_local).max(initial=0.0))
        )
        if max_gradient <= tol:
            converged = True
            break
        if iteration == max_iterations:
            break
        factorization = _factorize(problem, moments)
        step_global, step_local = _newton_direction(
            problem, factorization, gradient_global, gradient_local
        )
        slope = float(gradient_global @ step_global + np.sum(gradient_local * step_local))
        # Near the optimum the predicted decrease is below the objective's rounding error:
        # the full Newton step is right and the Armijo test would compare noise.
        trust = -slope <= 1e-11 * max(1.0, abs(objective))
        t = 1.0
        while True:
            trial = evaluate(theta_global + t * step_global, theta_local + t * step_local)
            round_trips += 1
            if np.isfinite(trial[0]) and (trust or trial[0] <= objective + ARMIJO * t * slope):
                break
            if t < 1e-10:
                trial = None
                break
            # The minimum of the quadratic through φ(0), φ'(0) and φ(t), kept in a safe range.
            excess = trial[0] - objective - slope * t if np.isfinite(trial[0]) else np.inf
            guess = -slope * t * t / (2 * excess) if excess > 0 else BACKTRACK_MAX * t
            t = min(max(guess, BACKTRACK_MIN * t), BACKTRACK_MAX * t)
        if trial is None:
            break  # no further descent in floating point: report where we are
        theta_global = theta_global + t * step_global
        theta_local = theta_local + t * step_local
        objective, first, moments = trial
        history.append(objective)
    if not converged:
        raise ConvergenceError(
            f"the MAP Newton solver stopped after {iteration} iterations with largest "
            f"gradient {max_gradient:.3g} > tol={tol:g}; the data may be (nearly) "
            f"separable for these prior scales — try smaller sigma_beta / sigma_alpha"
        )
    # The control weights stay on the workers: the trace holds none.
    trace = NewtonTrace(
        theta_global=theta_global,
        theta_local=theta_local,
        objective=objective,
        max_gradient=max_gradient,
        iterations=iteration,
        converged=converged,
        control_weights=np.zeros(0),
        history=history,
    )
    result = DaskMapResult(design, hyperparameters, problem, trace, data, round_trips)
    result.pass_seconds = pass_seconds
    result._warn_extreme_weights()
    warn_inestimable(design, "att")
    return result


def _data_sums(design: DaskDesign) -> np.ndarray:
    cached = getattr(design, "_data_sums_cache", None)
    if cached is None:
        cached = _map_reduce(design.control_blocks, _block_data).dense(design.n_groups)
        object.__setattr__(design, "_data_sums_cache", cached)
    return cached


def _partition_weights(
    frame: pd.DataFrame, plan: UnitPlan, coefficients: np.ndarray, largest: np.ndarray | None
) -> pd.Series:
    """Weights of one partition: 1 for the treated, exp(η) (or exp(η − max_j η)) for controls."""
    codes = plan.codes(frame)
    x = plan.standardized(frame)
    c = coefficients[codes]
    eta = c[:, 0] + np.einsum("ij,ij->i", x, c[:, 1:])
    treated = plan.treated(frame)
    if largest is None:
        with np.errstate(over="ignore"):
            values = np.where(treated, 1.0, np.exp(eta))
        return pd.Series(values, index=frame.index, name="weight")
    values = np.where(treated, 0.0, np.exp(eta - largest[codes]))
    return pd.Series(values, index=frame.index, name="relative_weight")


class DaskMapResult(MapResult):
    """A MAP fit of a Dask design: coefficients, CATTs, ATT and balance in memory; the unit
    weights as lazy Dask Series with the input's partitions.

    Attributes
    ----------
    round_trips
        Map-reduce passes of the Newton iterations (one per accepted full step).
    pass_seconds
        Wall time of each of those passes (map, reduce and the driver's assembly).
    """

    def __init__(self, design, hyperparameters, problem, trace, data, round_trips) -> None:
        self.design = design
        self.hyperparameters = hyperparameters
        self.converged = trace.converged
        self.max_gradient = trace.max_gradient
        self.iterations = trace.iterations
        self.objective = trace.objective
        self.round_trips = round_trips
        self._theta_global = trace.theta_global
        self._theta_local = trace.theta_local
        self._effects = None
        self._data = data
        self._coefficients = group_coefficients(problem, trace.theta_global, trace.theta_local)
        blocks = design.control_blocks
        top = _map_reduce(blocks, _group_max_eta, self._coefficients, maximum=True)
        self._largest = top.dense(design.n_groups, fill=0.0)[:, 0]
        self._sums = _map_reduce(blocks, _result_sums, self._coefficients, self._largest).dense(
            design.n_groups
        )
        n_control = data[:, _data_columns(len(design.unit_names))["n_control"]][:, 0]
        # What MapResult._warn_extreme_weights reads, per weighted arm (the ATT's controls):
        # the largest weight's share of its group (the largest relative weight is 1), the
        # weight sums and the counts.
        relative = self._sums[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(relative > 0, 1.0 / relative, 0.0)
        self.estimand = "att"
        self.selection = None
        self._arms = list(arms_of("att"))
        self._solutions = [trace]
        self._totals = [
            (arms_of("att")[0], {"share": share, "weight": self._sums[:, 3], "count": n_control})
        ]

    def __repr__(self) -> str:
        att = f"{self.att:.4g}" if self.design.outcome is not None else "(no outcome)"
        return (
            f"MapResult (Dask): ATT {att}; {self.design.n_groups} groups; converged in "
            f"{self.iterations} Newton iterations, {self.round_trips} map-reduce passes "
            f"(max |gradient| {self.max_gradient:.2g})"
        )

    @property
    def weights(self) -> dd.Series:
        """Lazy Dask Series on the input's partitions: treated 1, controls ``exp(η)``."""
        return self.design.frame.map_partitions(
            _partition_weights,
            self.design.plan,
            self._coefficients,
            None,
            meta=pd.Series(dtype=float, name="weight"),
        )

    @property
    def relative_weights(self) -> dd.Series:
        """Lazy Dask Series: each control's weight over its group's largest (treated 0)."""
        return self.design.frame.map_partitions(
            _partition_weights,
            self.design.plan,
            self._coefficients,
            self._largest,
            meta=pd.Series(dtype=float, name="relative_weight"),
        )

    def _compute_effects(self) -> dict[str, np.ndarray]:
        if self.design.outcome is None:
            raise ValueError("the model has no outcome column: give outcome= to hierps.Model")
        if self._effects is None:
            columns = _data_columns(len(self.design.unit_names))
            self._effects = effects_from_sums(
                treated_weight=self._data[:, columns["n_treated"]][:, 0],
                treated_total=self._data[:, columns["treated_y"]][:, 0],
                control_weight=self._sums[:, 0],
                control_total=self._sums[:, 1],
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
                "weight_sum": self._sums[:, 3],
                "ess": self.group_ess.to_numpy(),
            },
            index=d.groups,
        )

    @property
    def att(self) -> float:
        effects = self._compute_effects()
        return float(att_from_catt(effects["catt"], effects["treated_weight"]))

    @property
    def group_ess(self) -> pd.Series:
        total, squares = self._sums[:, 0], self._sums[:, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            ess = np.where(squares > 0, total**2 / squares, 0.0)
        return pd.Series(ess, index=self.design.groups, name="ess")

    @property
    def ess(self) -> float:
        return float(self._sums[:, 3].sum() ** 2 / self._sums[:, 4].sum())

    def balance(self) -> pd.DataFrame:
        """Covariate balance before and after weighting, globally and within each group.

        The columns of :func:`hierps.balance.statistics.balance_frame`, from per-group sums.
        """
        from hierps.scale.dask_balance import balance_from_sums

        return balance_from_sums(self.design, self._data, self._sums)
