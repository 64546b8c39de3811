"""The user-facing :class:`Model`: a validated design plus the verbs that fit it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from hierps.calibrated.fit import MapResult, fit_map
from hierps.design.build import ColumnRoles, Design, build_design
from hierps.design.formula import roles_from_formula
from hierps.exceptions import DataError

if TYPE_CHECKING:
    import pymc as pm

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
        roles = roles_from_formula(formula, data, outcome=outcome)
        return cls(
            data,
            treatment=roles.treatment,
            group=roles.group,
            outcome=roles.outcome,
            unit_covariates=roles.unit_covariates,
            group_covariates=roles.group_covariates,
            categorical=roles.categorical,
            varying_slopes=roles.varying_slopes,
            standardize=standardize,
        )

    def summary(self) -> str:
        """The design summary: size, groups, treated per group, covariates at each level."""
        return self.design.summary()

    def __repr__(self) -> str:
        return self.design.summary()

    def build_pymc(self, loss: str = "bernoulli", **fixed: float) -> pm.Model:
        """Build the PyMC model; see :func:`hierps.model.build_pymc`."""
        from hierps.pymc_model import build_pymc

        return build_pymc(self.design, loss=loss, **fixed)

    def fit_map(
        self,
        sigma_alpha: float | None = None,
        sigma_beta: float | Sequence[float] | None = None,
        sigma_mu_beta: float | None = None,
        sigma_gamma: float | None = None,
        sigma_intercept: float | None = None,
        tol: float = 1e-8,
        max_iterations: int = 100,
        init: MapResult | None = None,
    ) -> MapResult:
        """Fit the calibrated-loss mode: balancing weights; see :func:`hierps.map.fit_map`."""
        return fit_map(
            self.design,
            sigma_alpha=sigma_alpha,
            sigma_beta=sigma_beta,
            sigma_mu_beta=sigma_mu_beta,
            sigma_gamma=sigma_gamma,
            sigma_intercept=sigma_intercept,
            tol=tol,
            max_iterations=max_iterations,
            init=init,
        )

    def sample(
        self,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 2,
        random_seed: int | None = None,
        sampler: str = "nutpie",
        loss: str = "bernoulli",
        uncertainty: str = "bayesian_bootstrap",
        estimand: str = "att",
        target_accept: float = 0.8,
        store_weights: bool = False,
        progressbar: bool = False,
        outcome_model: OutcomeModel | str | bool | None = None,
        **fixed: float,
    ) -> PosteriorResult:
        """Sample the posterior with NUTS and compute the effects per draw.

        See :func:`hierps.posterior.sample` for the arguments; ``**fixed`` fixes
        hyperparameters (``sigma_alpha``, ``sigma_beta``, ``sigma_intercept``,
        ``sigma_gamma``, ``sigma_mu_beta``) at numbers.

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
        result = sample(
            self.design,
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=random_seed,
            sampler=sampler,
            loss=loss,
            uncertainty=uncertainty,
            estimand=estimand,
            target_accept=target_accept,
            store_weights=store_weights,
            progressbar=progressbar,
            **fixed,
        )
        if outcome_model is None or outcome_model is False:
            return result
        if outcome_model is True:
            outcome_model = fit_outcome_model(
                self.design, random_seed=random_seed, progressbar=progressbar
            )
        elif isinstance(outcome_model, str):
            outcome_model = fit_outcome_model(
                self.design,
                formula=outcome_model,
                data=self.data,
                random_seed=random_seed,
                progressbar=progressbar,
            )
        result.augmented = augment(result, outcome_model)
        return result
