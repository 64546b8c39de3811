"""Pooling group CATTs: a normal hierarchical model over the group estimates (docs/math.md §15).

::

    τ̂_j ~ N(θ_j, se_j²)                     (se_j known)
    θ_j = μ_τ + v_j' φ + σ_τ · z_j           z_j ~ N(0, 1)   (non-centred)
    μ_τ ~ N(0, (10 s)²),  φ ~ N(0, s² I),  σ_τ ~ HalfNormal(s),   s = sd(τ̂)

with the group covariates ``v`` standardized over the pooled groups (mean 0, sd 1), so ``φ``
is the change in the group effect per standard deviation of a covariate and ``μ_τ`` the
effect at the average covariate values. The posterior of ``θ_j`` shrinks each noisy
estimate toward the regression line, the more the larger its ``se_j``; ``φ`` shows which
group covariates moderate the effect and ``σ_τ`` how much heterogeneity they leave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from hierps.arguments import check_sampling
from hierps.calibrated.fit import MapResult
from hierps.design.build import Design, _close_matches, _list_labels
from hierps.design.validation import constant_columns
from hierps.effects.estimands import GroupSums
from hierps.exceptions import ArgumentError, ArgumentTypeError, DataError, warn
from hierps.mcmc.conventions import CI_PROB, check_sampler, show_progress
from hierps.mcmc.diagnosis import diagnose
from hierps.mcmc.summary import summarize_draws

if TYPE_CHECKING:
    from hierps.posterior.result import PosteriorResult

__all__ = [
    "SAMPLERS",
    "PooledCATT",
    "hajek_standard_errors",
    "map_standard_errors",
    "pool_catt",
    "pooling_inputs",
]

#: The samplers the pooling model runs on.
SAMPLERS = ("nutpie", "pymc")
_RESERVED = ("mu_tau", "sigma_tau")
# The pooling model's parameters that the convergence check judges (not the raw offsets z).
_JUDGED = ("mu_tau", "sigma_tau", "phi", "theta")


@dataclass(frozen=True, eq=False)
class PooledCATT:
    """Group effects pooled by a normal hierarchical model, with their moderators.

    Attributes
    ----------
    catt
        By group (all input groups; those left out are NaN in the pooled columns):
        ``estimate``, ``se`` (the inputs), and the posterior of ``θ_j``: ``mean``, ``sd``,
        ``lower``, ``upper`` (equal-tailed interval), ``ess_bulk``, ``r_hat``; ``fitted`` is
        the posterior mean of the regression line ``μ_τ + v_j'φ``.
    moderators
        ``mu_tau``, ``sigma_tau`` and one row of ``φ`` per covariate (named by the
        covariate; per standard deviation across the pooled groups): ``mean``, ``sd``,
        ``lower``, ``upper``, ``ess_bulk``, ``r_hat``.
    idata
        The PyMC fit (``xarray.DataTree``); dims ``group`` and ``covariate``.
    covariate_scaling
        ``center`` and ``scale`` used to standardize each covariate: a slope per unit of the
        covariate is ``φ / scale``.
    ci_prob
        Probability of the intervals.
    """

    catt: pd.DataFrame
    moderators: pd.DataFrame
    idata: xr.DataTree
    covariate_scaling: pd.DataFrame
    ci_prob: float


def map_standard_errors(result: MapResult) -> pd.Series:
    """Standard errors of the MAP group effects by the linearization of the Hájek estimator.

    ::

        se_j² = s²_{T,j} / n_1j + Σ_{C_j} w_i² (Y_i − Ȳ_wj)² / W_j²,   Ȳ_wj = Σ_{C_j} w Y / W_j

    ``s²_{T,j}`` is the sample variance (ddof 1) of the treated outcomes in group ``j``; in
    groups with one treated unit it is the pooled within-group variance of the treated over
    the groups with at least two. The weights are treated as known (the uncertainty of
    estimating them is not included). Groups without controls or treated are NaN. With the
    ATC, the ATE or base weights, each arm's term is the weighted form of the control term
    (see :func:`_two_arm_standard_errors`).

    Parameters
    ----------
    result
        A MAP fit of a design with an outcome.

    Returns
    -------
    pandas.Series
        ``se`` by group.
    """
    if not isinstance(result, MapResult):
        raise ArgumentTypeError(f"result must be a MapResult, not {type(result).__name__}")
    design = result.design
    if design.outcome is None:
        raise ArgumentError("the model has no outcome column: give outcome= to hierps.Model")
    if result.estimand != "att" or design.base_weights is not None:
        return _two_arm_standard_errors(result)
    # Within-group relative weights: the formula is scale-free in each group, and they stay
    # defined where every control weight of a group underflows.
    return hajek_standard_errors(design, result.relative_weights.to_numpy(), design.outcome)


def _two_arm_standard_errors(result: MapResult) -> pd.Series:
    """The linearization of :func:`map_standard_errors` with weights in both arms.

    Each arm contributes ``Σ a² (Y − Ȳ_a)² / (Σ a)²`` with its weights ``a`` (the relative
    weights of a reweighted arm, the base weights of the other). An arm that is not
    reweighted gets the factor ``m / (m − 1)`` of its ``m`` units (``s² / m`` with equal
    weights, as for the treated of the ATT) and, in groups where it has one unit, the pooled
    variance of the groups where it has more.
    """
    design = result.design
    y = design.outcome
    sums = GroupSums(design.group_codes, design.n_groups)
    reweighted = {arm.weighted for arm in result._arms}
    variance = np.zeros(design.n_groups)
    estimable = np.ones(design.n_groups, dtype=bool)
    for value in (0, 1):
        in_arm = design.treatment == value
        a = np.where(in_arm, result._arm_weights, 0.0)
        count = sums(in_arm.astype(float))
        with np.errstate(invalid="ignore", divide="ignore"):
            total, squares = sums(a), sums(a**2)
            mean = sums(a * y) / total
            spread = sums(a**2 * (y - mean[design.group_codes]) ** 2)
            part = spread / total**2
            if value not in reweighted:
                several = count >= 2
                # The pooled variance Σ spread / Σ Σa²·(m − 1)/m: Σ SS / Σ (m − 1) if a = 1.
                dof = squares * (count - 1) / count
                pooled = spread[several].sum() / dof[several].sum() if several.any() else np.nan
                part = np.where(several, part * count / (count - 1), pooled * squares / total**2)
        variance += part
        estimable &= total > 0
    return pd.Series(np.sqrt(np.where(estimable, variance, np.nan)), index=design.groups, name="se")


def hajek_standard_errors(
    design: Design, control_weights: np.ndarray, values: np.ndarray
) -> pd.Series:
    """Linearized standard errors of the group Hájek contrasts of any unit values.

    The formula of :func:`map_standard_errors` with ``values`` in place of the outcome (for
    example the residuals ``Y − m(x)`` of an augmented estimator) and the given control
    weights (treated entries are ignored).

    Parameters
    ----------
    design
        The design (its groups and treatment).
    control_weights, values
        ``(n,)`` each.

    Returns
    -------
    pandas.Series
        ``se`` by group; NaN for groups without controls or treated.
    """
    values = np.asarray(values, dtype=float)
    treated = design.treatment == 1
    sums = GroupSums(design.group_codes, design.n_groups)
    n1 = sums(treated)
    with np.errstate(invalid="ignore", divide="ignore"):
        treated_mean = sums(np.where(treated, values, 0.0)) / n1
        deviation = np.where(treated, values - treated_mean[design.group_codes], 0.0)
        treated_ss = sums(deviation**2)
        pooled_variance = treated_ss[n1 >= 2].sum() / (n1[n1 >= 2] - 1).sum()
        treated_variance = np.where(n1 >= 2, treated_ss / (n1 - 1), pooled_variance)
        w = np.where(treated, 0.0, np.asarray(control_weights, dtype=float))
        total = sums(w)
        control_mean = sums(w * values) / total
        deviation = values - control_mean[design.group_codes]
        control_part = sums(w**2 * deviation**2) / total**2
        variance = treated_variance / n1 + control_part
    variance = np.where((n1 > 0) & (total > 0), variance, np.nan)
    return pd.Series(np.sqrt(variance), index=design.groups, name="se")


def pool_catt(
    result: PosteriorResult | MapResult | pd.DataFrame,
    group_covariates: Sequence[str] | pd.DataFrame | None = None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    random_seed: int | None = None,
    sampler: str = "nutpie",
    ci_prob: float = CI_PROB,
    progressbar: bool | None = None,
) -> PooledCATT:
    """Pool group CATTs with a normal hierarchical model and estimate their moderators.

    Parameters
    ----------
    result
        One of

        - a posterior result (an object with a ``.catt`` DataFrame holding ``mean`` and
          ``sd`` by group and a ``.design``): estimate = posterior mean, se = posterior sd;
        - a :class:`~hierps.calibrated.fit.MapResult`: estimate = ``catt["estimate"]``, se from
          :func:`map_standard_errors`;
        - a DataFrame with ``estimate`` and ``se`` columns indexed by group.
    group_covariates
        ``None``: no moderators. With a result that has a design: names of the design's
        group covariates, as input columns (a categorical one expands to all its encoded
        columns, as in ``design.group_names``, plus its missingness indicator if any) or
        encoded names; values on the original scale. With a DataFrame ``result``: a
        DataFrame of numeric covariates indexed by group (covering every group).
    draws, tune, chains, random_seed
        Sampler settings.
    sampler
        ``"nutpie"`` (default) or ``"pymc"``.
    ci_prob
        Probability of the equal-tailed intervals (default 0.9).
    progressbar
        Show the sampler's progress bar; ``None`` (default): when stderr is a terminal.

    Returns
    -------
    PooledCATT

    Warns
    -----
    HierpsWarning
        Naming the groups left out (NaN estimate, or a standard error that is missing or not
        positive), the covariates dropped for not varying across the pooled groups, and
        divergences or R-hat above 1.01.
    """
    check_sampler(sampler, SAMPLERS)
    sampling = check_sampling(draws, tune, chains, random_seed)
    if not 0 < ci_prob < 1:
        raise ArgumentError(f"ci_prob={ci_prob!r} must be between 0 and 1")
    table, covariates = pooling_inputs(result, group_covariates)
    usable = _usable_groups(table)
    if usable.sum() < 2:
        raise DataError(
            f"pooling needs at least two groups with an estimate and a positive standard error; "
            f"{int(usable.sum())} remain"
        )
    covariates, scaling = _standardize(covariates[usable])
    estimate = table["estimate"].to_numpy()[usable]
    se = table["se"].to_numpy()[usable]
    idata = _sample(estimate, se, covariates, sampling, sampler, progressbar)
    _warn_sampling(idata)
    return PooledCATT(
        catt=_group_table(table, usable, idata, ci_prob),
        moderators=_moderator_table(idata, list(covariates.columns), ci_prob),
        idata=idata,
        covariate_scaling=scaling,
        ci_prob=ci_prob,
    )


def pooling_inputs(
    result: PosteriorResult | MapResult | pd.DataFrame,
    group_covariates: Sequence[str] | pd.DataFrame | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The inputs of the pooling model, before any group is left out.

    Parameters
    ----------
    result, group_covariates
        As in :func:`pool_catt`.

    Returns
    -------
    tuple of pandas.DataFrame
        ``estimate`` and ``se`` by group, and the covariates by group on their original
        scale (no columns when ``group_covariates`` is ``None``).
    """
    if isinstance(group_covariates, str):
        raise ArgumentTypeError(
            f"group_covariates must be a list of names, not the string {group_covariates!r}; "
            f"write [{group_covariates!r}]"
        )
    design: Design | None = None
    if isinstance(result, pd.DataFrame):
        missing = [column for column in ("estimate", "se") if column not in result.columns]
        if missing:
            raise DataError(
                f"a DataFrame given to pool_catt needs the columns 'estimate' and 'se' (by "
                f"group); it lacks {', '.join(repr(c) for c in missing)}"
            )
        table = result[["estimate", "se"]].astype(float)
    elif isinstance(result, MapResult):
        design = result.design
        table = pd.DataFrame(
            {"estimate": result.catt["estimate"], "se": map_standard_errors(result)}
        )
    elif _is_posterior(result):
        design = result.design
        catt = result.catt
        table = pd.DataFrame({"estimate": catt["mean"], "se": catt["sd"]}).astype(float)
    else:
        raise ArgumentTypeError(
            f"result must be a posterior result, a MapResult or a DataFrame with 'estimate' and "
            f"'se' by group, not {type(result).__name__}"
        )
    if not table.index.is_unique:
        raise DataError("the group index of the estimates has duplicated labels")
    if group_covariates is None:
        return table, pd.DataFrame(index=table.index)
    if isinstance(group_covariates, pd.DataFrame):
        return table, _covariate_frame(group_covariates, table.index)
    if design is None:
        raise ArgumentTypeError(
            "with a DataFrame of estimates, give group_covariates as a DataFrame by group (there "
            "is no design to look names up in)"
        )
    return table, _design_covariates(design, list(group_covariates))


def _is_posterior(result: object) -> bool:
    catt = getattr(result, "catt", None)
    return (
        isinstance(getattr(result, "design", None), Design)
        and isinstance(catt, pd.DataFrame)
        and {"mean", "sd"} <= set(catt.columns)
    )


def _covariate_frame(covariates: pd.DataFrame, groups: pd.Index) -> pd.DataFrame:
    missing = groups.difference(covariates.index)
    if len(missing):
        raise DataError(f"group_covariates has no row for group(s) {_list_labels(missing)}")
    frame = covariates.loc[groups]
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise DataError(
                f"group covariate {column!r} must be numeric (encode categoricals, e.g. with "
                f"pandas.get_dummies); it has dtype {frame[column].dtype}"
            )
        if frame[column].isna().any():
            raise DataError(
                f"group covariate {column!r} is missing for group(s) "
                f"{_list_labels(frame.index[frame[column].isna()])}"
            )
    return frame.astype(float)


def _design_covariates(design: Design, names: list[str]) -> pd.DataFrame:
    columns: list[str] = []
    for name in names:
        if name in design.group_names:
            expanded = [name]
        else:
            expanded = [
                column for column in design.group_names if design.group_sources[column] == name
            ]
        if not expanded:
            known = sorted(set(design.group_names) | set(design.group_sources.values()))
            close = _close_matches(str(name), known)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            listing = ", ".join(repr(c) for c in known) or "(none)"
            raise DataError(
                f"{name!r} is not a group covariate of the design (group covariates: "
                f"{listing}){hint}"
            )
        columns += [column for column in expanded if column not in columns]
    return design.group_frame(original_scale=True)[columns]


def _usable_groups(table: pd.DataFrame) -> np.ndarray:
    estimate, se = table["estimate"].to_numpy(), table["se"].to_numpy()
    no_estimate = ~np.isfinite(estimate)
    bad_se = ~no_estimate & ~(np.isfinite(se) & (se > 0))
    if no_estimate.any():
        warn(
            f"group(s) {_list_labels(table.index[no_estimate])} have no CATT estimate (NaN) and "
            f"are left out of the pooling model"
        )
    if bad_se.any():
        warn(
            f"group(s) {_list_labels(table.index[bad_se])} have a missing or non-positive "
            f"standard error and are left out of the pooling model"
        )
    return ~no_estimate & ~bad_se


def _standardize(covariates: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Centre and scale over the pooled groups; covariates without variation are dropped."""
    center = covariates.mean()
    scale = covariates.std(ddof=1) if len(covariates) > 1 else covariates.std(ddof=0)
    constant = constant_columns(
        scale,
        "group covariates {columns} do not vary across the pooled groups and are dropped "
        "from the pooling model",
    )
    kept = [name for name in covariates.columns if str(name) not in constant]
    clash = [name for name in kept if name in _RESERVED]
    if clash:
        raise DataError(f"a group covariate may not be named {clash[0]!r} (a model parameter)")
    scaling = pd.DataFrame({"center": center[kept], "scale": scale[kept]})
    scaling.index.name = "covariate"
    standardized = (covariates[kept] - center[kept]) / scale[kept]
    return standardized, scaling


def _pooling_model(estimate: np.ndarray, se: np.ndarray, covariates: pd.DataFrame):
    """The pooling model of the module docstring as a ``pymc.Model`` (not yet sampled)."""
    import pymc as pm
    import pytensor.tensor as pt

    spread = float(np.std(estimate, ddof=1))
    if not (np.isfinite(spread) and spread > 0):
        # All estimates equal: scale the priors by the typical standard error instead.
        spread = float(np.sqrt(np.mean(se**2)))
    coords = {"group": list(covariates.index), "covariate": [str(c) for c in covariates.columns]}
    with pm.Model(coords=coords) as model:
        mu_tau = pm.Normal("mu_tau", 0.0, 10.0 * spread)
        sigma_tau = pm.HalfNormal("sigma_tau", spread)
        # Without moderators the regression line is μ_τ in every group.
        fitted = mu_tau + pt.zeros(len(estimate))
        if covariates.shape[1]:
            phi = pm.Normal("phi", 0.0, spread, dims="covariate")
            v = pm.Data("v", covariates.to_numpy(), dims=("group", "covariate"))
            fitted = mu_tau + v @ phi
        fitted = pm.Deterministic("fitted", fitted, dims="group")
        z = pm.Normal("z", 0.0, 1.0, dims="group")
        theta = pm.Deterministic("theta", fitted + sigma_tau * z, dims="group")
        pm.Normal("estimate", mu=theta, sigma=se, observed=estimate, dims="group")
    return model


def _sample(
    estimate: np.ndarray,
    se: np.ndarray,
    covariates: pd.DataFrame,
    sampling: dict[str, object],
    sampler: str,
    progressbar: bool | None,
) -> xr.DataTree:
    """Sample the pooling model; ``sampling`` holds draws, tune, chains and the seed."""
    import pymc as pm

    with _pooling_model(estimate, se, covariates):
        return pm.sample(**sampling, nuts_sampler=sampler, progressbar=show_progress(progressbar))


def _warn_sampling(idata: xr.DataTree) -> None:
    diagnosis = diagnose(idata, var_names=[n for n in _JUDGED if n in idata["posterior"]])
    for problem in diagnosis.problems:
        warn(f"the pooling model's sampler reports: {problem}")


def _group_table(
    table: pd.DataFrame, usable: np.ndarray, idata: xr.DataTree, ci_prob: float
) -> pd.DataFrame:
    posterior = idata["posterior"]
    pooled = summarize_draws(posterior["theta"], ci_prob)
    pooled["fitted"] = posterior["fitted"].mean(("chain", "draw")).to_numpy()
    pooled.index = table.index[usable]
    return table.join(pooled.reindex(table.index))


def _moderator_table(idata: xr.DataTree, covariates: list[str], ci_prob: float) -> pd.DataFrame:
    posterior = idata["posterior"]
    parts = [summarize_draws(posterior[name], ci_prob) for name in _RESERVED]
    names = list(_RESERVED)
    if covariates:
        parts.append(summarize_draws(posterior["phi"], ci_prob))
        names += covariates
    table = pd.concat(parts, ignore_index=True).set_axis(names)
    table.index.name = "parameter"
    return table
