"""Sensitivity of the CATTs and the ATT to unmeasured confounding (marginal sensitivity model).

Under the marginal sensitivity model (Tan 2006; Zhao, Small & Bhattacharya 2019) the true
odds of treatment of a control may differ from the fitted odds by a factor of at most Λ, so
each control's true weight lies in ``[w_i / Λ, w_i · Λ]``. The Hájek control mean
``Σ w̃ Y / Σ w̃`` of a group, optimized over that box, is extreme at a threshold rule: sorted by
outcome, the controls below a cut get one end of their interval and those above the other end
(Dorn & Guo 2022 give the sharp version with quantile balancing; this is the plain
box-constrained bound). Cumulative sums over the sorted outcomes give every cut at once, so the
bounds of every group and every draw come from one vectorized pass. Each group has its own box,
so the ATT bounds are the treated-weighted sums of the group bounds, and they are sharp too.

Uncertainty: for a MAP result, a percentile bootstrap that resamples units within each
(group, arm) cell and, by default, refits the MAP weights on every resample; for a posterior
result, the bounds of every posterior draw (with its Bayesian-bootstrap weights when the result
used them), summarized by their quantiles.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierps.balance.statistics import att_result_design
from hierps.design.build import Design
from hierps.effects.estimands import GroupSums, att_from_catt
from hierps.exceptions import ConvergenceError, HierpsWarning, check_choice
from hierps.mcmc.conventions import CI_PROB, SAMPLE_DIMS

__all__ = [
    "ATT_LABEL",
    "BOOTSTRAPS",
    "control_mean_bounds",
    "robustness_value",
    "sensitivity",
]

#: The ``target`` label of the overall effect.
ATT_LABEL = "ATT"
#: How a MAP result's bootstrap treats the weights.
BOOTSTRAPS = ("refit", "fixed")
# Draws are bounded in chunks of about this many (draw × control) numbers.
_CHUNK_ELEMENTS = 1 << 21


def control_mean_bounds(
    outcome: np.ndarray, weights: np.ndarray, Lambda: float
) -> tuple[float, float]:
    """Sharp bounds of one Hájek mean ``Σ w̃ Y / Σ w̃`` over ``w̃_i ∈ [w_i / Λ, w_i Λ]``.

    Parameters
    ----------
    outcome, weights
        The controls of one group; weights non-negative, not all zero.
    Lambda
        The sensitivity parameter, at least 1.

    Returns
    -------
    tuple of float
        The smallest and the largest attainable mean.
    """
    outcome = np.asarray(outcome, dtype=float).ravel()
    weights = np.asarray(weights, dtype=float).ravel()
    if outcome.shape != weights.shape or outcome.size == 0:
        raise ValueError("outcome and weights must be non-empty and of the same length")
    if np.any(weights < 0) or not np.any(weights > 0):
        raise ValueError("weights must be non-negative and not all zero")
    order = np.argsort(outcome, kind="stable")
    lam = _check_lambda(Lambda)
    lower, upper = _mean_bounds(
        outcome[order], weights[order][None], np.zeros(len(order), dtype=int), 1, lam**2
    )
    return float(lower[0, 0]), float(upper[0, 0])


def _check_lambda(Lambda: Any) -> np.ndarray:
    try:
        values = np.atleast_1d(np.asarray(Lambda, dtype=float))
    except (TypeError, ValueError):
        raise ValueError(f"Lambda must be numbers of at least 1, not {Lambda!r}") from None
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values) & (values >= 1)):
        raise ValueError(f"Lambda must be finite numbers of at least 1, not {Lambda!r}")
    return values if np.ndim(Lambda) else values[0]


def _mean_bounds(
    y: np.ndarray, mass: np.ndarray, group: np.ndarray, n_groups: int, lam2: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper Hájek means of every group and draw, ``(draws, n_groups)``.

    ``y`` (m,) is sorted ascending within each group and ``group`` (m,) is non-decreasing;
    ``mass`` (draws, m) are the weights; ``lam2`` is Λ² (a number, or one per unit).

    With the first k sorted units of a group at ``w/Λ`` and the rest at ``wΛ`` the mean is,
    after multiplying both sums by Λ, ``(S_y + Λ²(T_y − S_y)) / (S_w + Λ²(T_w − S_w))`` with the
    partial sums ``S`` up to k and the totals ``T``; the largest over k = 0..n is the upper bound,
    and the mirror rule gives the lower one.
    """
    starts = np.searchsorted(group, np.arange(n_groups))
    present = np.flatnonzero(np.bincount(group, minlength=n_groups) > 0)
    lower = np.full((mass.shape[0], n_groups), np.nan)
    upper = np.full_like(lower, np.nan)
    if not len(present):
        return lower, upper
    run_starts = starts[present]
    counts = np.diff(np.r_[run_starts, len(group)])

    def spread(per_group: np.ndarray) -> np.ndarray:
        """(draws, groups present) -> (draws, m): each group's value on its units."""
        return np.repeat(per_group, counts, axis=1)

    # Each group's weights over its largest, its outcomes about its first one: ratios and
    # differences only, so the cumulative sums stay on a unit scale across groups and draws.
    top = np.maximum.reduceat(mass, run_starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nan_to_num(mass / spread(top), nan=0.0, posinf=0.0)
    shift = y[run_starts]
    yc = y - np.repeat(shift, counts)
    my = m * yc
    # Partial sums of the first k units and of the rest, each a sum of its own terms (a
    # difference of running sums would cancel, and Λ² of a large Λ magnifies the remainder).
    sw, rest_w = _partial_sums(m, run_starts, counts)
    sy, rest_y = _partial_sums(my, run_starts, counts)
    tw, ty = sw[:, run_starts + counts - 1], sy[:, run_starts + counts - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        high = (sy + lam2 * rest_y) / (sw + lam2 * rest_w)
        low = (lam2 * sy + rest_y) / (lam2 * sw + rest_w)
        plain = np.where(tw > 0, ty / tw, np.nan)  # k = 0: every unit at the same end
    up = np.fmax(np.fmax.reduceat(high, run_starts, axis=1), plain)
    lo = np.fmin(np.fmin.reduceat(low, run_starts, axis=1), plain)
    empty = ~(tw > 0)
    upper[:, present] = np.where(empty, np.nan, up) + shift
    lower[:, present] = np.where(empty, np.nan, lo) + shift
    return lower, upper


def _partial_sums(
    values: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Within each run of columns: the sum up to and including each column, and after it."""
    upto, after = np.empty_like(values), np.empty_like(values)
    for start, count in zip(starts, counts, strict=True):
        run = values[:, start : start + count]
        upto[:, start : start + count] = np.cumsum(run, axis=1)
        tail = np.cumsum(run[:, ::-1], axis=1)[:, ::-1]
        after[:, start : start + count - 1] = tail[:, 1:]
        after[:, start + count - 1] = 0.0
    return upto, after


@dataclass(frozen=True)
class _Masses:
    """Unit weights of one or more draws: treated group sums and each control's weight."""

    treated_mean: np.ndarray  # (draws, J)
    treated_weight: np.ndarray  # (draws, J)
    control: np.ndarray  # (draws, m) in the sorted order of the controls


@dataclass(frozen=True)
class _Prepared:
    """Everything the bounds of any Λ need, computed once per result."""

    design: Design
    y: np.ndarray  # (m,) control outcomes sorted within groups
    group: np.ndarray  # (m,) their groups, non-decreasing
    point: _Masses
    draws: _Masses | None
    method: str
    ci_prob: float

    def effects(
        self, masses: _Masses, lam_groups: Any, lam_att: float, estimate: bool = True
    ) -> tuple[np.ndarray, ...]:
        """Per draw: the CATT and ATT estimates and bounds, ``(draws, J + 1)`` each (the
        estimates NaN unless ``estimate``)."""
        J = self.design.n_groups
        n_draws = masses.control.shape[0]
        size = max(1, _CHUNK_ELEMENTS // max(1, masses.control.shape[1]))
        out = [np.full((n_draws, J + 1), np.nan) for _ in range(3)]
        lam_groups = np.asarray(lam_groups, dtype=float)
        # One Λ per group (the bisection of robustness_value moves each target on its own).
        lam2_groups = lam_groups[self.group] ** 2 if lam_groups.ndim else float(lam_groups) ** 2
        same = lam_groups.ndim == 0 and float(lam_groups) == lam_att
        for start in range(0, n_draws, size):
            rows = slice(start, start + size)
            mass = masses.control[rows]
            t_mean, t_weight = masses.treated_mean[rows], masses.treated_weight[rows]
            # The estimate is the Λ = 1 bound; the bisection of robustness_value skips it.
            plain = _mean_bounds(self.y, mass, self.group, J, 1.0)[0] if estimate else None
            low, high = _mean_bounds(self.y, mass, self.group, J, lam2_groups)
            for target, values in zip(out, (plain, high, low), strict=True):
                if values is not None:
                    target[rows, :J] = t_mean - values
            if not same:
                low, high = _mean_bounds(self.y, mass, self.group, J, lam_att**2)
            for target, values in zip(out, (plain, high, low), strict=True):
                if values is not None:
                    target[rows, J] = att_from_catt(t_mean - values, t_weight)
        return tuple(out)  # estimate, lower, upper


def _prepare(
    result: Any, bootstrap: str, n_bootstrap: int, ci_prob: float | None, random_seed: Any
) -> _Prepared:
    design = att_result_design(result, "sensitivity")
    if design.outcome is None:
        raise ValueError("the model has no outcome column: give outcome= to hierps.Model")
    check_choice("bootstrap", bootstrap, BOOTSTRAPS)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer):
        raise ValueError(f"n_bootstrap must be an integer of at least 2, not {n_bootstrap!r}")
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be an integer of at least 2, not {n_bootstrap!r}")
    idata = getattr(result, "idata", None)
    if ci_prob is None:
        recorded = None if idata is None else idata.attrs.get("ci_prob")
        if idata is not None and "estimands" in idata.children:
            recorded = idata["estimands"].attrs.get("ci_prob", recorded)
        ci_prob = float(recorded) if recorded is not None else CI_PROB
    if not 0 < ci_prob < 1:
        raise ValueError(f"ci_prob must lie strictly between 0 and 1, not {ci_prob!r}")

    control = np.flatnonzero(design.treatment == 0)
    order = control[np.lexsort((design.outcome[control], design.group_codes[control]))]
    sums = GroupSums(design.group_codes, design.n_groups)
    treated = (design.treatment == 1).astype(float)

    def masses(unit_mass: np.ndarray, control_weight: np.ndarray) -> _Masses:
        """From (draws, n) unit multiplicities (both arms) and control weights."""
        t_weight = sums(unit_mass * treated)
        with np.errstate(invalid="ignore", divide="ignore"):
            t_mean = sums(unit_mass * treated * design.outcome) / t_weight
        return _Masses(t_mean, t_weight, (unit_mass * control_weight)[:, order])

    seeds = (
        random_seed
        if isinstance(random_seed, np.random.SeedSequence)
        else np.random.SeedSequence(random_seed)
    )
    rng = np.random.default_rng(seeds)
    if idata is None:
        weights = np.asarray(getattr(result, "relative_weights", result.weights), dtype=float)
        weights = np.where(design.treatment == 1, 0.0, weights)
        point = masses(np.ones((1, design.n_units)), weights[None])
        if bootstrap == "refit":
            if not hasattr(result, "hyperparameters"):
                raise ValueError(
                    f"bootstrap='refit' refits a MapResult; {type(result).__name__} has no "
                    f"prior scales to refit with: use bootstrap='fixed'"
                )
            unit_mass, control_weight, failed = _refit_bootstrap(result, n_bootstrap, rng)
            method = (
                f"percentile bootstrap: {n_bootstrap} resamples of units within each (group, "
                f"arm) cell, the MAP weights refitted on every resample with the same prior "
                f"scales and standardization"
                + (f" ({failed} resamples did not converge and were left out)" if failed else "")
            )
        else:
            unit_mass = np.stack([_resample_counts(design, rng) for _ in range(n_bootstrap)])
            control_weight = weights[None]
            method = (
                f"percentile bootstrap: {n_bootstrap} resamples of units within each (group, "
                f"arm) cell with the MAP weights held fixed (ignores the weights' own "
                f"estimation error)"
            )
        draws = masses(unit_mass, control_weight)
        return _Prepared(
            design,
            design.outcome[order],
            design.group_codes[order],
            point,
            draws,
            method + f"; seed {seeds.entropy}",
            ci_prob,
        )

    control_weight, source = _posterior_weights(result)
    uncertainty = getattr(result, "uncertainty", "propensity")
    unit_mass = np.ones((1, design.n_units))
    stored = idata["weights"].to_dataset() if "weights" in idata.children else None
    if uncertainty == "bayesian_bootstrap":
        if stored is not None and "bootstrap_weight" in stored:
            unit_mass = _stack(stored["bootstrap_weight"])
            source += "; the result's stored Bayesian-bootstrap weights"
        else:
            exponential = rng.standard_exponential(control_weight.shape)
            unit_mass = (
                exponential * (design.units_per_group / sums(exponential))[:, design.group_codes]
            )
            source += f"; fresh Bayesian-bootstrap weights (seed {seeds.entropy})"
    draws = masses(unit_mass, control_weight)
    point = draws  # the posterior's point bounds are the means of the per-draw bounds
    method = f"posterior: bounds of every draw ({source}); equal-tailed quantiles over draws"
    return _Prepared(
        design, design.outcome[order], design.group_codes[order], point, draws, method, ci_prob
    )


def _stack(values: Any) -> np.ndarray:
    values = values.transpose(*SAMPLE_DIMS, "obs").to_numpy().astype(float)
    return values.reshape(-1, values.shape[-1])


def _posterior_weights(result: Any) -> tuple[np.ndarray, str]:
    """Per-draw control weights ``(draws, n)`` (any factor per group and draw is harmless)."""
    idata = result.idata
    design = result.design
    if "weights" in idata.children and "weight_draws" in idata["weights"].data_vars:
        weights = _stack(idata["weights"]["weight_draws"])
        return weights, "stored per-draw weights"
    from hierps.balance.overlap import linear_predictor

    eta = linear_predictor(result)
    eta = np.where(design.treatment == 1, -np.inf, eta)
    # exp(eta - the group's largest eta in the draw): the odds up to a factor per group.
    top = np.full((eta.shape[0], design.n_groups), -np.inf)
    np.maximum.at(top.T, design.group_codes, eta.T)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.exp(eta - top[:, design.group_codes]), "weights recomputed from alpha and beta"


def _strata(design: Design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    key = 2 * design.group_codes + design.treatment.astype(int)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.searchsorted(sorted_key, sorted_key, side="left")
    size = np.searchsorted(sorted_key, sorted_key, side="right") - first
    return order, first, size


def _resample_rows(design: Design, rng: np.random.Generator) -> np.ndarray:
    """Row numbers of a resample that keeps every (group, arm) cell's size."""
    order, first, size = _strata(design)
    return order[first + np.floor(rng.random(design.n_units) * size).astype(int)]


def _resample_counts(design: Design, rng: np.random.Generator) -> np.ndarray:
    return np.bincount(_resample_rows(design, rng), minlength=design.n_units).astype(float)


def _refit_bootstrap(
    result: Any, n_bootstrap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Multiplicities and refitted control weights (summed over copies) of every resample."""
    from hierps.calibrated.fit import fit_map

    design = result.design
    scales = result.hyperparameters.as_dict()
    unit_mass = np.empty((n_bootstrap, design.n_units))
    control_weight = np.empty_like(unit_mass)
    failed = 0
    for b in range(n_bootstrap):
        rows = np.sort(_resample_rows(design, rng))
        resampled = dataclasses.replace(
            design,
            index=pd.RangeIndex(len(rows)),
            treatment=design.treatment[rows],
            outcome=design.outcome[rows],
            group_codes=design.group_codes[rows],
            unit_matrix=design.unit_matrix[rows],
        )
        counts = np.bincount(rows, minlength=design.n_units).astype(float)
        unit_mass[b] = counts
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", HierpsWarning)
                refit = fit_map(resampled, **scales, init=result)
        except ConvergenceError:
            failed += 1
            control_weight[b] = np.nan
            continue
        # Copies of a unit share its covariates and so its weight: the mean over copies.
        total = np.bincount(rows, weights=refit.relative_weights.to_numpy(), minlength=len(counts))
        with np.errstate(invalid="ignore", divide="ignore"):
            control_weight[b] = np.where(counts > 0, total / counts, 0.0)
    keep = ~np.isnan(control_weight).any(axis=1)
    if not keep.any():
        raise ConvergenceError(
            "the MAP fit did not converge on any bootstrap resample; use bootstrap='fixed'"
        )
    return unit_mass[keep], control_weight[keep], failed


def _summarize(
    prepared: _Prepared,
    lam_groups: Any,
    lam_att: float,
    point: bool = True,
    interval: bool = True,
) -> dict[str, np.ndarray]:
    """Point bounds and/or interval of every target at the given Λ (per group, and the ATT's)."""
    out: dict[str, np.ndarray] = {}
    draw_bounds = None
    if point:
        estimate, lower, upper = prepared.effects(prepared.point, lam_groups, lam_att)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN targets stay NaN
            out = {
                "estimate": np.nanmean(estimate, axis=0),
                "lower": np.nanmean(lower, axis=0),
                "upper": np.nanmean(upper, axis=0),
            }
        if prepared.draws is prepared.point:
            draw_bounds = lower, upper
    if interval:
        if draw_bounds is None:
            _, *draw_bounds = prepared.effects(prepared.draws, lam_groups, lam_att, estimate=False)
        tail = (1 - prepared.ci_prob) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["ci_lower"] = np.nanquantile(draw_bounds[0], tail, axis=0)
            out["ci_upper"] = np.nanquantile(draw_bounds[1], 1 - tail, axis=0)
    return out


def _targets(design: Design) -> list:
    return [*design.groups.tolist(), ATT_LABEL]


def sensitivity(
    result: Any,
    Lambda: Any = (1.0, 1.25, 1.5, 2.0, 3.0),
    ci_prob: float | None = None,
    bootstrap: str = "refit",
    n_bootstrap: int = 200,
    random_seed: int | np.random.SeedSequence | None = 0,
) -> pd.DataFrame:
    """Sharp bounds of every group's CATT and of the ATT under the marginal sensitivity model.

    Each control's true weight may differ from its fitted weight by a factor up to Λ (its odds
    of treatment by the same factor): ``w̃_i ∈ [w_i / Λ, w_i Λ]``. The bounds are the extreme
    CATTs over that box, ``treated mean − control mean bounds``; the ATT bounds are the
    treated-weighted means of the group bounds (sharp: the groups' boxes are separate). Λ = 1
    gives the estimate; as Λ grows the control-mean bounds tend to the range of the group's
    control outcomes.

    Parameters
    ----------
    result
        A :class:`~hierps.calibrated.fit.MapResult` or an ATT
        :class:`~hierps.posterior.result.PosteriorResult` of a model with an outcome.
    Lambda
        One or more values of Λ ≥ 1.
    ci_prob
        Probability of the intervals; by default the posterior's recorded one, else 0.9.
    bootstrap
        MAP results only. ``"refit"`` (default) refits the MAP weights on every resample
        (same prior scales, covariates standardized as in the full sample, warm-started at
        the full-sample fit), so the interval carries the weights' estimation error;
        ``"fixed"`` keeps the full-sample weights and resamples only the units (faster,
        narrower, optimistic). Resamples keep the size of every (group, arm) cell, so every
        group keeps both arms.
    n_bootstrap
        Number of bootstrap resamples (MAP results).
    random_seed
        Seed of the resampling (and of fresh Bayesian-bootstrap weights for a posterior that
        used them but did not store them).

    Returns
    -------
    pandas.DataFrame
        One row per (Λ, target), targets the groups then ``"ATT"``, with the columns
        ``Lambda``, ``target``, ``estimate``, ``lower``, ``upper``, ``ci_lower``,
        ``ci_upper``. For a MAP result ``estimate``/``lower``/``upper`` are the full-sample
        values and ``ci_lower``/``ci_upper`` the bootstrap quantiles of the lower and upper
        bounds; for a posterior they are the posterior means of the per-draw estimate and
        bounds and the quantiles of the per-draw bounds. ``attrs`` record the method. Groups
        without controls or without treated units have NaN rows.
    """
    values = np.atleast_1d(_check_lambda(Lambda))
    prepared = _prepare(result, bootstrap, n_bootstrap, ci_prob, random_seed)
    targets = _targets(prepared.design)
    frames = []
    for lam in values:
        columns = _summarize(prepared, lam, lam)
        frame = pd.DataFrame({"Lambda": float(lam), "target": pd.Series(targets, dtype=object)})
        for name, column in columns.items():
            frame[name] = column
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.index.name = "row"
    table.attrs.update(
        {
            "method": prepared.method,
            "ci_prob": prepared.ci_prob,
            "model": "marginal sensitivity model on the control weights",
        }
    )
    return table


def robustness_value(
    result: Any,
    ci_prob: float | None = None,
    bootstrap: str = "refit",
    n_bootstrap: int = 200,
    random_seed: int | np.random.SeedSequence | None = 0,
    max_Lambda: float = 1e4,
    rtol: float = 1e-4,
) -> pd.DataFrame:
    """The smallest Λ at which each target's bounds, and its interval, include 0.

    The bounds and the interval widen with Λ, so each value is found by bisection on log Λ.

    Parameters
    ----------
    result, ci_prob, bootstrap, n_bootstrap, random_seed
        As in :func:`sensitivity`.
    max_Lambda
        Largest Λ searched: a target whose bounds exclude 0 there gets ``inf`` (its treated
        mean lies outside, or at the edge of, the range of its control outcomes).
    rtol
        Relative precision of the values.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``target`` (the groups, then ``"ATT"``), with the columns ``estimate``,
        ``robustness_value`` (the bounds include 0) and ``robustness_value_ci`` (the interval
        includes 0). 1 where the estimate or the Λ = 1 interval already includes 0; NaN for
        groups without an estimable CATT.
    """
    if not (np.isscalar(max_Lambda) and np.isfinite(max_Lambda) and max_Lambda > 1):
        raise ValueError(f"max_Lambda must be a finite number above 1, not {max_Lambda!r}")
    if not (np.isscalar(rtol) and 0 < rtol < 1):
        raise ValueError(f"rtol must lie strictly between 0 and 1, not {rtol!r}")
    prepared = _prepare(result, bootstrap, n_bootstrap, ci_prob, random_seed)
    J = prepared.design.n_groups

    def covers(lam: np.ndarray, interval: bool) -> np.ndarray:
        if not interval:
            columns = _summarize(prepared, lam[:J], float(lam[J]), interval=False)
            return (columns["lower"] <= 0) & (columns["upper"] >= 0)
        columns = _summarize(prepared, lam[:J], float(lam[J]), point=False)
        return (columns["ci_lower"] <= 0) & (columns["ci_upper"] >= 0)

    def bisect(interval: bool) -> np.ndarray:
        lo, hi = np.ones(J + 1), np.full(J + 1, float(max_Lambda))
        at_one, at_max = covers(lo, interval), covers(hi, interval)
        while np.max(np.log(hi / lo)) > np.log1p(rtol):
            mid = np.sqrt(lo * hi)
            inside = covers(mid, interval)
            hi, lo = np.where(inside, mid, hi), np.where(inside, lo, mid)
        return np.where(at_one, 1.0, np.where(at_max, hi, np.inf))

    estimate = _summarize(prepared, 1.0, 1.0, interval=False)["estimate"]
    table = pd.DataFrame(
        {
            "estimate": estimate,
            "robustness_value": bisect(False),
            "robustness_value_ci": bisect(True),
        },
        index=pd.Index(_targets(prepared.design), dtype=object, name="target"),
    )
    table.loc[~np.isfinite(estimate), ["robustness_value", "robustness_value_ci"]] = np.nan
    table.attrs.update(
        {
            "method": prepared.method,
            "ci_prob": prepared.ci_prob,
            "max_Lambda": float(max_Lambda),
            "rtol": float(rtol),
        }
    )
    return table
