"""Outcome models for augmentation: ``m(x)`` fit on the controls, effects on residuals.

Augmentation ("bias correction", docs/math.md §13) applies the weighting estimator to the residuals
``Y − m(x)`` of an outcome model fit on the controls::

    τ_j = mean_{T=1, j}(Y − m) − Σ_{C_j} w (Y − m) / W_j

so whatever imbalance the weights leave in ``x`` is corrected by the outcome model, and with
a Bayesian ``m`` its posterior draws carry outcome uncertainty into the effects. The outcome
never feeds back into the propensity model (a two-step, "cut" posterior): the propensity and
outcome posteriors are independent, so any pairing of their draws is a draw of the joint.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from hierps.arguments import check_sampling
from hierps.calibrated.fit import MapResult
from hierps.design.build import Design
from hierps.design.validation import constant_columns
from hierps.effects.estimands import GroupSums, att_from_catt, catt_from_weights
from hierps.exceptions import ArgumentError, ArgumentTypeError, DataError, warn
from hierps.mcmc.conventions import CI_PROB, check_sampler, show_progress
from hierps.mcmc.diagnosis import diagnose
from hierps.mcmc.summary import summarize_draws

if TYPE_CHECKING:
    import bambi as bmb

__all__ = [
    "FAMILIES",
    "SAMPLERS",
    "OutcomeModel",
    "augment_map",
    "augmented_effects",
    "fit_outcome_model",
    "pair_draws",
]

#: Bambi families whose likelihood's parent parameter is the conditional mean of the outcome.
FAMILIES = ("gaussian", "bernoulli", "poisson")
#: The samplers Bambi runs the outcome model on.
SAMPLERS = ("nutpie", "pymc")


@dataclass(frozen=True, eq=False)
class OutcomeModel:
    """A Bayesian outcome model fit on the controls, with its predictions for every unit.

    Attributes
    ----------
    design
        The design whose units were predicted.
    predictions
        Posterior draws of the conditional mean ``m(x_i)`` for all units (treated and
        controls): dims ``("sample", "obs")``; ``obs`` is the design's index, ``sample`` runs
        over the flattened ``(chain, draw)`` pairs (both kept as coordinates on ``sample``).
    idata
        The Bambi fit (``xarray.DataTree``).
    model
        The ``bambi.Model``.
    formula
        The formula that was fit (on the sanitized names for the default model).
    terms
        Formula name → design covariate name, for the default model's covariates (empty for
        a user formula).
    """

    design: Design
    predictions: xr.DataArray
    idata: xr.DataTree
    model: bmb.Model
    formula: str
    terms: dict[str, str] = field(default_factory=dict)

    def coefficients(self, original_scale: bool = False, ci_prob: float = CI_PROB) -> pd.DataFrame:
        """Posterior summaries of the common (population-level) coefficients.

        Parameters
        ----------
        original_scale
            For the default model, report slopes per unit of the covariate's original scale
            (the design standardizes covariates; the slope is divided by the scale). The
            intercept and user-formula coefficients are reported as fit.
        ci_prob
            Probability of the equal-tailed interval.

        Returns
        -------
        pandas.DataFrame
            ``mean, sd, lower, upper`` indexed by design covariate names (formula names for
            terms that are not design covariates, such as ``Intercept``).
        """
        posterior = self.idata["posterior"]
        parameter = self.model.parameters[self.model.family.likelihood.parent]
        names = ["Intercept", *parameter.common_terms]
        # Only the default model is fit on the design's standardized covariates.
        scales = _scales(self.design) if original_scale and self.terms else {}
        rows = {}
        for name in names:
            if name not in posterior:
                continue
            values = posterior[name]
            draws = values.to_numpy().reshape(-1, *values.shape[2:])
            label = self.terms.get(name, name)
            if label in scales:
                draws = draws / scales[label]
            if draws.ndim > 1:
                # A categorical term of a user formula: one coefficient per level.
                levels = values.coords[values.dims[2]].to_numpy()
                for k, level in enumerate(levels):
                    rows[f"{label}[{level}]"] = _draw_summary(draws[:, k], ci_prob)
            else:
                rows[label] = _draw_summary(draws, ci_prob)
        table = pd.DataFrame(rows).T
        table.index.name = "term"
        return table


def _scales(design: Design) -> dict[str, float]:
    scaling = pd.concat([design.unit_scaling["scale"], design.group_scaling["scale"]])
    return {str(name): float(value) for name, value in scaling.items()}


def _draw_summary(draws: np.ndarray, ci_prob: float) -> dict[str, float]:
    """Mean, sd and interval of one coefficient's draws (flattened over chains)."""
    row = summarize_draws(xr.DataArray(draws, dims="draw"), ci_prob).iloc[0]
    return {name: float(row[name]) for name in ("mean", "sd", "lower", "upper")}


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def fit_outcome_model(
    design: Design,
    formula: str | None = None,
    data: pd.DataFrame | None = None,
    family: str = "gaussian",
    draws: int = 500,
    tune: int = 500,
    chains: int = 2,
    random_seed: int | None = None,
    sampler: str = "nutpie",
    progressbar: bool | None = None,
) -> OutcomeModel:
    """Fit a Bayesian outcome model on the controls and predict ``m(x)`` for every unit.

    Parameters
    ----------
    design
        The validated design; it must have an outcome.
    formula
        ``None`` (default): the hierarchical regression
        ``y ~ <unit covariates> + <group covariates> + (1 | group)`` on the design's encoded,
        standardized covariates (one-hot categoricals drop their first level, which the
        intercept absorbs; columns constant among the controls are dropped with a warning).
        Names such as ``C1[4]`` are sanitized into formula names (``C1_4_``);
        :attr:`OutcomeModel.terms` maps them back. A string: a Bambi formula on the columns
        of ``data`` (the original frame), e.g. ``"y ~ x1 + C(c1) + (1 + x1 | school)"``.
        Its response must be the design's outcome column.
    data
        The original frame, required with ``formula`` (and only then): one row per unit,
        with the design's index labels (any order).
    family
        Bambi family, one of :data:`FAMILIES`; the likelihood's mean parameter (``mu`` or
        ``p``) is the conditional mean ``m(x)``.
    draws, tune, chains, random_seed
        Sampler settings.
    sampler
        ``"nutpie"`` (default) or ``"pymc"``.
    progressbar
        Show the sampler's progress bar; ``None`` (default): when stderr is a terminal.

    Returns
    -------
    OutcomeModel
        Units in groups without controls are predicted from the population-level terms only
        (their group was not in the fit); their CATT is not estimable anyway.
    """
    import bambi as bmb

    if design.outcome is None:
        raise ArgumentError("the design has no outcome column: give outcome= to hierps.Model")
    if family not in FAMILIES:
        raise ArgumentError(f"family={family!r} is not one of {', '.join(FAMILIES)}")
    check_sampler(sampler, SAMPLERS)
    sampling = check_sampling(draws, tune, chains, random_seed)
    user_formula = formula is not None
    if not user_formula:
        if data is not None:
            raise ArgumentError(
                "data= is only used with a user formula; the default model is built from the "
                "design's encoded covariates"
            )
        formula, frame, terms, group = _default_spec(design)
    else:
        if not isinstance(formula, str):
            raise ArgumentTypeError(f"formula must be a string, not {type(formula).__name__}")
        frame = _user_frame(design, data)
        terms, group = {}, None
    controls = design.treatment == 0
    model = bmb.Model(formula, frame[controls].reset_index(drop=True), family=family)
    if user_formula:
        _check_response(model, design)
    idata = model.fit(**sampling, inference_method=sampler, progressbar=show_progress(progressbar))
    for problem in diagnose(idata).problems:
        warn(f"the outcome model's sampler reports: {problem}")
    predictions = _predict(model, idata, design, frame, group)
    return OutcomeModel(
        design=design,
        predictions=predictions,
        idata=idata,
        model=model,
        formula=formula,
        terms=terms,
    )


def _default_spec(design: Design) -> tuple[str, pd.DataFrame, dict[str, str], str]:
    """The default formula, its data frame (all units), formula name → covariate name, and
    the grouping factor's name."""
    units = design.unit_frame()
    groups = design.group_frame().iloc[design.group_codes].set_axis(design.index)
    covariates = pd.concat([units, groups], axis=1)
    dropped_levels = _first_levels(design.unit_sources) + _first_levels(design.group_sources)
    covariates = covariates.drop(columns=dropped_levels)
    controls = design.treatment == 0
    spread = covariates[controls].std(ddof=0).fillna(0.0)
    constant = constant_columns(
        spread,
        "covariates {columns} do not vary among the controls and are left out of the outcome model",
    )
    covariates = covariates.drop(columns=constant)

    taken: set[str] = set()
    response = _formula_name(str(design.roles.outcome), taken)
    group = _formula_name(str(design.roles.group), taken)
    terms = {_formula_name(str(name), taken): str(name) for name in covariates.columns}
    frame = covariates.set_axis(list(terms), axis=1)
    frame.insert(0, response, design.outcome)
    frame[group] = _group_labels(design)
    rhs = " + ".join(terms) if terms else "1"
    return f"{response} ~ {rhs} + (1 | {group})", frame, terms, group


def _first_levels(sources: dict[str, str]) -> list[str]:
    """The first one-hot level of every categorical source: with an intercept, all levels of
    a categorical (plus its missingness indicator) sum to one and are collinear."""
    first: dict[str, str] = {}
    for name, source in sources.items():
        if name.startswith(f"{source}[") and name.endswith("]"):
            first.setdefault(source, name)
    return list(first.values())


def _formula_name(name: str, taken: set[str]) -> str:
    """A valid, unused formula name for ``name``: ``C1[4]`` → ``C1_4_``."""
    base = re.sub(r"\W", "_", name)
    if not base or base[0].isdigit() or keyword.iskeyword(base):
        base = f"x_{base}"
    candidate, k = base, 1
    while candidate in taken:
        k += 1
        candidate = f"{base}_{k}"
    taken.add(candidate)
    return candidate


def _group_labels(design: Design) -> pd.Categorical:
    """The formula's grouping factor: group ids as strings (distinct, or coded ``g0, …``).

    Its categories are the groups with controls, the levels the fit knows; units of groups
    without controls are missing here and get a known level at prediction time.
    """
    labels = np.array([str(label) for label in design.groups], dtype=object)
    if len(set(labels)) < len(labels):
        labels = np.array([f"g{code}" for code in range(design.n_groups)], dtype=object)
    fitted = design.units_per_group - design.treated_per_group > 0
    codes = np.cumsum(fitted) - 1
    return pd.Categorical.from_codes(
        np.where(fitted, codes, -1)[design.group_codes], categories=list(labels[fitted])
    )


def _user_frame(design: Design, data: pd.DataFrame | None) -> pd.DataFrame:
    if data is None:
        raise ArgumentError(
            "a user formula needs data=: the original frame with the design's rows (the "
            "design holds only encoded covariates)"
        )
    if not isinstance(data, pd.DataFrame):
        raise ArgumentTypeError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    missing = design.index.difference(data.index)
    if len(missing):
        shown = ", ".join(repr(label) for label in list(missing)[:5])
        raise DataError(
            f"data= lacks {len(missing)} rows of the design (index labels {shown}); pass the "
            f"frame the model was built from"
        )
    return data.loc[design.index]


def _check_response(model: bmb.Model, design: Design) -> None:
    response = model.response_term.name
    if response != design.roles.outcome:
        raise DataError(
            f"the formula's response is {response!r}, but the design's outcome is "
            f"{design.roles.outcome!r}: augmentation subtracts m(x) from the design's outcome"
        )


def _predict(
    model: bmb.Model,
    idata: xr.DataTree,
    design: Design,
    frame: pd.DataFrame,
    group: str | None,
) -> xr.DataArray:
    """Posterior draws of the conditional mean for every unit, as ``(sample, obs)``."""
    parent = model.family.likelihood.parent
    has_controls = (design.units_per_group - design.treated_per_group > 0)[design.group_codes]
    posterior = idata["posterior"]
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    values = np.empty((n_chains * n_draws, design.n_units))
    for known, include_group_specific in ((True, True), (False, False)):
        rows = np.flatnonzero(has_controls == known)
        if len(rows) == 0:
            continue
        new = frame.iloc[rows].reset_index(drop=True)
        if not known and group is not None:
            # Group-specific terms are switched off for these rows, but the prediction frame
            # still needs a level the fit knows; any will do.
            new[group] = pd.Categorical.from_codes(
                np.zeros(len(new), dtype=int), dtype=frame[group].dtype
            )
        predicted = model.predict(
            idata,
            kind="response_params",
            data=new,
            inplace=False,
            include_group_specific=include_group_specific,
        )
        mean = predicted["posterior"][parent].transpose("chain", "draw", ...)
        values[:, rows] = mean.to_numpy().reshape(n_chains * n_draws, len(rows))
    chain, draw = np.divmod(np.arange(n_chains * n_draws), n_draws)
    return xr.DataArray(
        values,
        dims=("sample", "obs"),
        coords={
            "sample": np.arange(n_chains * n_draws),
            "chain": ("sample", posterior["chain"].to_numpy()[chain]),
            "draw": ("sample", posterior["draw"].to_numpy()[draw]),
            "obs": list(design.index),
        },
        name="conditional_mean",
        attrs={"description": "posterior draws of m(x) = E[Y | x, control]"},
    )


# --------------------------------------------------------------------------------------------
# Augmented effects
# --------------------------------------------------------------------------------------------


def pair_draws(n_propensity: int, n_outcome: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices pairing propensity-side and outcome draws.

    Equal counts pair draw ``s`` with draw ``s``. Otherwise the result has
    ``max(n_propensity, n_outcome)`` draws and the shorter side is cycled
    (``s mod n``). One propensity draw (MAP weights) is paired with every outcome draw.
    The two posteriors are independent (cut posterior), so every pairing is a draw of the
    joint; cycling only repeats draws of the shorter side.
    """
    if n_propensity < 1 or n_outcome < 1:
        raise ArgumentError("both sides need at least one draw")
    total = max(n_propensity, n_outcome)
    draws = np.arange(total)
    return draws % n_propensity, draws % n_outcome


def augmented_effects(
    design: Design,
    control_weights: np.ndarray | pd.Series | xr.DataArray,
    predictions: np.ndarray | xr.DataArray,
    treated_weights: np.ndarray | xr.DataArray | None = None,
) -> dict[str, np.ndarray]:
    """Augmented group CATTs and ATT, one per paired (propensity, outcome) draw.

    ``τ_j = mean_{T=1,j}(Y − m) − Σ_{C_j} w (Y − m) / W_j``: the weighting estimator of
    :func:`hierps.effects.estimands.catt_from_weights` applied to the residuals ``Y − m(x)``.

    Parameters
    ----------
    design
        The design (its outcome and treatment).
    control_weights
        ``(n,)`` (MAP weights; a Series is aligned on the design's index) or
        ``(S_w, n)`` per-draw weights; a DataArray needs an ``obs`` dim and at most one other
        dim (the draws; ``(chain, draw)`` is flattened chain-major). Treated entries are
        ignored.
    predictions
        ``(S_m, n)`` or ``(n,)`` draws of ``m(x)`` for every unit, or a DataArray such as
        :attr:`OutcomeModel.predictions`.
    treated_weights
        Per-draw weights of the treated (Bayesian bootstrap), ``(n,)`` or ``(S_w, n)``; they
        belong to the propensity side and, when both are per draw, must have as many draws
        as ``control_weights``. ``None`` weighs every treated unit 1.

    Returns
    -------
    dict
        ``catt`` ``(S, J)``, ``att`` ``(S,)``, the residual means ``treated_mean`` and
        ``control_mean``, the weight sums ``treated_weight`` and ``control_weight``
        ``(S, J)``, and the pairing ``propensity_draw``, ``outcome_draw`` ``(S,)``
        (see :func:`pair_draws`). Groups without controls (or treated) are NaN.
    """
    if design.outcome is None:
        raise ArgumentError("the design has no outcome column: give outcome= to hierps.Model")
    weights = _as_draws(control_weights, design, "control_weights")
    m = _as_draws(predictions, design, "predictions")
    bootstrap = None
    if treated_weights is not None:
        bootstrap = _as_draws(treated_weights, design, "treated_weights")
        if len(bootstrap) > 1 and len(weights) > 1 and len(bootstrap) != len(weights):
            raise ArgumentError(
                f"treated_weights has {len(bootstrap)} draws and control_weights "
                f"{len(weights)}: both are propensity-side draws and must pair one to one"
            )
    n_propensity = max(len(weights), 1 if bootstrap is None else len(bootstrap))
    propensity_draw, outcome_draw = pair_draws(n_propensity, len(m))
    residual = design.outcome - m[outcome_draw]
    w = weights[propensity_draw % len(weights)]
    a = None if bootstrap is None else bootstrap[propensity_draw % len(bootstrap)]
    group_sums = GroupSums(design.group_codes, design.n_groups)
    effects = catt_from_weights(residual, design.treatment, group_sums, w, a)
    shape = effects["catt"].shape
    for key in ("treated_weight", "control_weight"):
        effects[key] = np.broadcast_to(effects[key], shape)
    effects["att"] = att_from_catt(effects["catt"], effects["treated_weight"])
    effects["propensity_draw"] = propensity_draw
    effects["outcome_draw"] = outcome_draw
    return effects


def _as_draws(
    values: np.ndarray | pd.Series | xr.DataArray, design: Design, name: str
) -> np.ndarray:
    """Per-unit values as a ``(draws, n)`` float array in the design's row order."""
    if isinstance(values, pd.Series):
        if not values.index.equals(design.index):
            if len(design.index.difference(values.index)):
                raise DataError(f"{name} is not indexed by the design's rows")
            values = values.loc[design.index]
        values = values.to_numpy(dtype=float)
    elif isinstance(values, xr.DataArray):
        if "obs" not in values.dims:
            raise ArgumentError(f"{name} needs an 'obs' dim; it has dims {values.dims}")
        if "chain" in values.dims and "draw" in values.dims:
            values = values.stack(_sample=("chain", "draw"))
        other = [dim for dim in values.dims if dim != "obs"]
        if len(other) > 1:
            raise ArgumentError(f"{name} has more than one draw dim besides 'obs': {other}")
        if "obs" in values.coords and list(values["obs"].to_numpy()) != list(design.index):
            try:
                values = values.sel(obs=list(design.index))
            except KeyError as error:
                raise DataError(f"{name} lacks units of the design: {error}") from error
        values = values.transpose(*other, "obs").to_numpy().astype(float)
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2 or values.shape[1] != design.n_units:
        raise ArgumentError(
            f"{name} must have shape (n,) or (draws, n) with n = {design.n_units} units; "
            f"got {values.shape}"
        )
    return values


def augment_map(
    map_result: MapResult,
    outcome_model: OutcomeModel | xr.DataArray,
    ci_prob: float = CI_PROB,
) -> pd.DataFrame:
    """Augmented CATTs of MAP weights, summarized over the outcome-model draws.

    Parameters
    ----------
    map_result
        A MAP fit (its weights and design).
    outcome_model
        An :class:`OutcomeModel` of the same design, or its ``predictions`` DataArray.
    ci_prob
        Probability of the equal-tailed interval (default 0.9).

    Returns
    -------
    pandas.DataFrame
        By group: ``weighted`` (the MAP CATT without augmentation), ``mean``, ``sd``,
        ``lower``, ``upper`` of the augmented CATT over the outcome draws, and
        ``n_treated``. The ATT, summarized the same way, is in ``.attrs["att"]`` (a dict
        with the same keys but ``n_treated``). The weights are held fixed, so ``sd`` is the
        outcome-model uncertainty only.
    """
    if not isinstance(map_result, MapResult):
        raise ArgumentTypeError(f"map_result must be a MapResult, not {type(map_result).__name__}")
    design = map_result.design
    if isinstance(outcome_model, OutcomeModel):
        if not outcome_model.design.index.equals(design.index):
            raise DataError("the outcome model was fit on a different design than the MAP result")
        predictions = outcome_model.predictions
    else:
        predictions = outcome_model
    # Relative weights: exact even where a group's exp(η) all underflow.
    effects = augmented_effects(design, map_result.relative_weights, predictions)
    table = pd.DataFrame(_summarize(effects["catt"], ci_prob), index=design.groups)
    table.insert(0, "weighted", map_result.catt["estimate"].to_numpy())
    table["n_treated"] = design.treated_per_group.astype(int)
    att = _summarize(effects["att"][:, None], ci_prob)
    table.attrs["att"] = {
        "weighted": float(map_result.att),
        **{key: float(value[0]) for key, value in att.items()},
    }
    table.attrs["ci_prob"] = ci_prob
    return table


def _summarize(draws: np.ndarray, ci_prob: float) -> dict[str, np.ndarray]:
    """Mean, sd and equal-tailed interval over the leading draw axis; entries with a
    non-finite draw are NaN."""
    draws = np.where(np.isfinite(draws), draws, np.nan)
    table = summarize_draws(xr.DataArray(draws, dims=("draw", "entry")), ci_prob)
    return {name: table[name].to_numpy() for name in ("mean", "sd", "lower", "upper")}
