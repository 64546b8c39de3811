"""The user-facing :class:`Model`: a validated design plus the verbs that fit it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from hierps.arguments import check_column, check_columns
from hierps.calibrated.fit import MapResult, fit_map
from hierps.design.build import ColumnRoles, Design, build_design
from hierps.design.formula import roles_from_formula
from hierps.exceptions import ArgumentError, ArgumentTypeError, DataError
from hierps.scale.frames import is_dask_frame

if TYPE_CHECKING:
    import pymc as pm
    import xarray as xr

    from hierps.effects.outcome import OutcomeModel
    from hierps.posterior.result import PosteriorResult

__all__ = ["Model"]


class Model:
    """A hierarchical logistic propensity model for units nested in groups.

    Construction validates the data and builds the design; nothing is compiled or fitted
    until :meth:`fit_map`, :meth:`sample` or :meth:`build_pymc` is called.

    Parameters
    ----------
    data
        One row per unit.
    treatment, group, outcome
        Column names: the binary treatment (0/1 or bool), the group id, and the outcome
        (optional; needed for effect estimates).
    unit_covariates
        Columns that vary within groups; categorical ones are one-hot encoded with all levels.
    group_covariates
        Columns constant within each group; they enter the model of the group intercepts.
    categorical
        Covariates to treat as categorical even though they are numeric codes. String,
        object and pandas categorical columns are categorical without being listed.
    varying_slopes
        Unit covariates (input names or encoded names such as ``"C1[4]"``) whose slopes vary by
        group; ``None`` (default) lets every unit covariate vary.
    standardize
        ``True`` / ``"treated"`` (default: centre at the treated mean, divide by the treated
        SD), ``"pooled"``, or ``False`` / ``"none"``; with ``weights`` the means and standard
        deviations are weighted.
    weights
        Column of base (survey or frequency) weights: positive finite numbers. Every estimate
        is then of the weighted population: the balance targets, the effects, balance tables
        and effective sample sizes carry them, and posterior mode weights the likelihood (a
        pseudo-posterior). Integer weights act exactly as replicated rows in MAP mode.

    A ``dask.dataframe.DataFrame`` (``pip install hierps[dask]``) is validated and standardized
    by aggregation over its partitions, with the same errors and warnings, and
    :meth:`fit_map` then runs on the active Dask client (docs/scale.md).

    Examples
    --------
    >>> import hierps
    >>> study = hierps.datasets.simulate_multisite(seed=1)
    >>> model = hierps.Model(study.data, treatment="z", group="school", outcome="y",
    ...                      unit_covariates=study.unit_covariates,
    ...                      group_covariates=study.group_covariates)
    >>> fit = model.fit_map(sigma_beta=1.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        data: pd.DataFrame,
        treatment: str,
        group: str,
        outcome: str | None = None,
        unit_covariates: Sequence[str] = (),
        group_covariates: Sequence[str] = (),
        categorical: Sequence[str] = (),
        varying_slopes: Sequence[str] | None = None,
        standardize: bool | str = True,
        weights: str | None = None,
    ) -> None:
        check_column("treatment", treatment)
        check_column("group", group)
        check_column("outcome", outcome, optional=True)
        unit_covariates = check_columns("unit_covariates", unit_covariates)
        group_covariates = check_columns("group_covariates", group_covariates)
        categorical = check_columns("categorical", categorical)
        varying_slopes = check_columns("varying_slopes", varying_slopes, optional=True)
        if not unit_covariates and not group_covariates:
            raise DataError("give at least one unit or group covariate")
        roles = ColumnRoles(
            treatment=treatment,
            group=group,
            outcome=outcome,
            unit_covariates=tuple(unit_covariates),
            group_covariates=tuple(group_covariates),
            categorical=tuple(categorical),
            varying_slopes=None if varying_slopes is None else tuple(varying_slopes),
            weights=weights,
        )
        self.data = data
        if is_dask_frame(data):
            # Validation and standardization by aggregation; the rows stay on the workers.
            from hierps.scale.dask_design import build_dask_design

            if roles.weights is not None:
                raise ArgumentError(
                    "weights= (base weights) is not supported on a Dask DataFrame yet; fit the "
                    "MAP weights in memory, or leave the base weights out"
                )
            self.design = build_dask_design(data, roles, standardize)
        else:
            self.design: Design = build_design(data, roles, standardize)

    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        outcome: str | None = None,
        standardize: bool | str = True,
        weights: str | None = None,
    ) -> Model:
        """Build a model from a Bambi-style formula.

        ``"Z ~ S3 + C(C1) + X1 + (S3 | schoolid)"``: the response is the treatment; terms
        constant within every group become group covariates; terms inside ``( … | group)``
        get varying slopes; the other terms get fixed slopes. ``C(x)`` marks ``x`` as
        categorical. The result is the same design as the keyword constructor gives;
        ``weights`` names a base-weight column as there.
        """
        if is_dask_frame(data):
            raise ArgumentTypeError(
                "Model.from_formula reads the data to sort terms into unit and group "
                "covariates; with a Dask DataFrame give the roles by keyword instead"
            )
        roles = roles_from_formula(formula, data, outcome=outcome)
        return cls.from_roles(data, dataclasses.replace(roles, weights=weights), standardize)

    @classmethod
    def from_roles(
        cls, data: pd.DataFrame, roles: ColumnRoles, standardize: bool | str = True
    ) -> Model:
        """Build a model from a :class:`~hierps.design.build.ColumnRoles` (what a formula or a
        model file resolves to)."""
        return cls(data, standardize=standardize, **dataclasses.asdict(roles))

    def summary(self) -> str:
        """The design summary: size, groups, treated per group, covariates at each level."""
        return self.design.summary()

    def __repr__(self) -> str:
        return self.design.summary()

    def _in_memory(self, verb: str) -> None:
        if is_dask_frame(self.data):
            raise TypeError(
                f"Model.{verb} needs the units in memory; a model of a Dask DataFrame fits MAP "
                f"weights only (fit_map), see docs/scale.md"
            )

    def build_pymc(
        self,
        loss: str = "bernoulli",
        deviations: str = "normal",
        rank: int | None = None,
        **fixed: float,
    ) -> pm.Model:
        """Build the PyMC model; see :func:`hierps.pymc_model.build_pymc`."""
        self._in_memory("build_pymc")
        from hierps.pymc_model import build_pymc

        return build_pymc(self.design, loss=loss, deviations=deviations, rank=rank, **fixed)

    def fit_map(self, **options: object) -> MapResult:
        """Fit the calibrated-loss mode: balancing weights.

        ``options`` are the keyword arguments of :func:`hierps.calibrated.fit.fit_map`
        (``sigma_alpha``, ``sigma_beta``, ``sigma_mu_beta``, ``sigma_gamma``,
        ``sigma_intercept``, ``estimand`` (``"att"``, ``"atc"`` or ``"ate"``), ``tol``,
        ``max_iterations``, ``init``, ``deviations``); an unknown one raises
        :class:`~hierps.exceptions.ArgumentTypeError` (a ``TypeError``).
        ``sigma_alpha="auto"`` and ``sigma_beta="auto"`` estimate those scales from the data
        (empirical Bayes; see ``result.selection``).
        """
        _check_options("fit_map", fit_map, options)
        if is_dask_frame(self.data):
            from hierps.scale.dask_solver import fit_map_dask

            if options.get("estimand", "att") != "att":
                raise ArgumentError(
                    f"estimand={options['estimand']!r}: a model of a Dask DataFrame fits ATT "
                    f"weights only (see docs/scale.md)"
                )
            if options.get("deviations", "normal") != "normal":
                raise ArgumentError(
                    f"deviations={options['deviations']!r}: a model of a Dask DataFrame fits "
                    f"normal slope deviations only (see docs/scale.md)"
                )
            options = {
                key: value
                for key, value in options.items()
                if key not in ("estimand", "deviations")
            }
            if any(isinstance(options.get(name), str) for name in ("sigma_alpha", "sigma_beta")):
                raise ArgumentError(
                    "sigma_alpha/sigma_beta='auto' is not available on a Dask DataFrame; give "
                    "the scales as numbers (e.g. the values 'auto' chooses on a sample in memory)"
                )

            return fit_map_dask(self.design, **options)
        return fit_map(self.design, **options)

    def sample_prior_predictive(self, **options: object) -> xr.DataTree:
        """Draw from the prior and the treated counts it implies (groups ``prior``,
        ``prior_predictive``, ``observed_data``): the check of the priors before sampling.

        ``options`` are the keyword arguments of
        :func:`hierps.posterior.checks.sample_prior_predictive` (``draws``, ``random_seed``,
        and hyperparameters fixed at numbers). :meth:`sample` adds the same groups to its
        result (``prior_draws``).
        """
        from hierps.posterior.checks import sample_prior_predictive

        return sample_prior_predictive(self.design, **options)

    def sample(
        self, outcome_model: OutcomeModel | str | bool | None = None, **options: object
    ) -> PosteriorResult:
        """Sample the posterior with NUTS and compute the effects per draw.

        ``options`` are the keyword arguments of :func:`hierps.posterior.run.sample`
        (``draws``, ``tune``, ``chains``, ``random_seed``, ``sampler``, ``loss``,
        ``uncertainty``, ``estimand``, ``target_accept``, ``store_weights``, ``progressbar``
        (default: a progress bar when stderr is a terminal), ``coding``, ``checks``,
        ``prior_draws``, ``deviations`` and ``rank`` (the prior of the group slope
        deviations: ``"normal"``, ``"laplace"`` or ``"low_rank"`` with ``rank`` factors),
        and hyperparameters fixed at numbers: ``sigma_alpha``, ``sigma_beta``,
        ``sigma_intercept``, ``sigma_gamma``, ``sigma_mu_beta``); an unknown one raises
        ``TypeError``.

        ``outcome_model`` adds augmented CATTs (``result.augmented``, the ATT in its
        ``.attrs["att"]``): ``True`` fits the default Bambi hierarchical regression on the
        controls (:func:`hierps.effects.outcome.fit_outcome_model`), a string is a Bambi formula on
        the original columns, or pass a fitted :class:`~hierps.effects.outcome.OutcomeModel`.
        The outcome model never feeds back into the propensity model.
        """
        self._in_memory("sample")
        from hierps.effects.augment import augment
        from hierps.effects.outcome import OutcomeModel, fit_outcome_model
        from hierps.posterior.run import sample

        if outcome_model is not None and not isinstance(outcome_model, bool | str | OutcomeModel):
            raise ArgumentTypeError(
                f"outcome_model must be True, a formula string or an OutcomeModel, not "
                f"{type(outcome_model).__name__}"
            )
        _check_options("sample", sample, options)
        result = sample(self.design, **options)
        if outcome_model is None or outcome_model is False:
            return result
        # The outcome model reuses the seed and progress setting of the propensity fit.
        shared = {
            "random_seed": options.get("random_seed"),
            "progressbar": options.get("progressbar"),
        }
        if outcome_model is True:
            outcome_model = fit_outcome_model(self.design, **shared)
        elif isinstance(outcome_model, str):
            outcome_model = fit_outcome_model(
                self.design, formula=outcome_model, data=self.data, **shared
            )
        result.augmented = augment(result, outcome_model)
        return result


def _check_options(verb: str, function, options: dict) -> None:
    """Refuse keyword arguments ``function`` does not take, naming the valid ones."""
    import inspect

    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values()):
        return  # a wrapper that passes everything on: the function it wraps checks
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        from hierps.design.hyperparameters import HYPERPARAMETERS

        valid = [name for name in parameters if name != "design"][:-1] + list(HYPERPARAMETERS)
    else:
        valid = [name for name in parameters if name != "design"]
    unknown = [name for name in options if name not in valid]
    if unknown:
        raise ArgumentTypeError(
            f"{verb}() got unknown option(s) {', '.join(map(repr, unknown))}; valid options "
            f"are {', '.join(valid)}"
        )
