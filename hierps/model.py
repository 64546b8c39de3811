"""The user-facing :class:`Model`: a validated design plus the verbs that fit it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from hierps.calibrated.fit import MapResult, fit_map
from hierps.design.build import ColumnRoles, Design, build_design
from hierps.design.formula import roles_from_formula
from hierps.exceptions import DataError

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
        SD), ``"pooled"``, or ``False`` / ``"none"``.

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
    ) -> None:
        for argument, value in (
            ("unit_covariates", unit_covariates),
            ("group_covariates", group_covariates),
            ("categorical", categorical),
            ("varying_slopes", varying_slopes),
        ):
            if isinstance(value, str):
                raise TypeError(
                    f"{argument} must be a list of column names, not the string "
                    f"{value!r}; write [{value!r}]"
                )
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
        )
        self.data = data
        self.design: Design = build_design(data, roles, standardize)

    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        outcome: str | None = None,
        standardize: bool | str = True,
    ) -> Model:
        """Build a model from a Bambi-style formula.

        ``"Z ~ S3 + C(C1) + X1 + (S3 | schoolid)"``: the response is the treatment; terms
        constant within every group become group covariates; terms inside ``( … | group)``
        get varying slopes; the other terms get fixed slopes. ``C(x)`` marks ``x`` as
        categorical. The result is the same design as the keyword constructor gives.
        """
        return cls.from_roles(data, roles_from_formula(formula, data, outcome=outcome), standardize)

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

    def build_pymc(self, loss: str = "bernoulli", **fixed: float) -> pm.Model:
        """Build the PyMC model; see :func:`hierps.model.build_pymc`."""
        from hierps.pymc_model import build_pymc

        return build_pymc(self.design, loss=loss, **fixed)

    def fit_map(self, **options: object) -> MapResult:
        """Fit the calibrated-loss mode: balancing weights.

        ``options`` are the keyword arguments of :func:`hierps.calibrated.fit.fit_map`
        (``sigma_alpha``, ``sigma_beta``, ``sigma_mu_beta``, ``sigma_gamma``,
        ``sigma_intercept``, ``tol``, ``max_iterations``, ``init``); an unknown one raises
        ``TypeError``.
        """
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
        ``prior_draws``,
        and hyperparameters fixed at numbers: ``sigma_alpha``, ``sigma_beta``,
        ``sigma_intercept``, ``sigma_gamma``, ``sigma_mu_beta``); an unknown one raises
        ``TypeError``.

        ``outcome_model`` adds augmented CATTs (``result.augmented``, the ATT in its
        ``.attrs["att"]``): ``True`` fits the default Bambi hierarchical regression on the
        controls (:func:`hierps.outcome.fit_outcome_model`), a string is a Bambi formula on
        the original columns, or pass a fitted :class:`~hierps.outcome.OutcomeModel`.
        The outcome model never feeds back into the propensity model.
        """
        from hierps.effects.augment import augment
        from hierps.effects.outcome import OutcomeModel, fit_outcome_model
        from hierps.posterior.run import sample

        if outcome_model is not None and not isinstance(outcome_model, bool | str | OutcomeModel):
            raise TypeError(
                f"outcome_model must be True, a formula string or an OutcomeModel, not "
                f"{type(outcome_model).__name__}"
            )
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
