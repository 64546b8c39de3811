"""The result of posterior mode: the sampler's ``DataTree`` with effects per draw, as tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import xarray as xr

from hierps.exceptions import ArgumentError
from hierps.mcmc.conventions import CI_PROB
from hierps.mcmc.summary import summarize_draws

if TYPE_CHECKING:
    from hierps.design.build import Design

__all__ = ["ESTIMANDS", "UNCERTAINTIES", "PosteriorResult"]

UNCERTAINTIES = ("bayesian_bootstrap", "propensity")
ESTIMANDS = ("att", "atc", "ate")
#: Names of the group and overall effect of each estimand.
EFFECT_NAMES = {"att": ("catt", "att"), "atc": ("catc", "atc"), "ate": ("cate", "ate")}


class PosteriorResult:
    """A posterior of the propensity model with the effects it implies, draw by draw.

    Attributes
    ----------
    design
        The design that was sampled.
    idata
        ``xarray.DataTree``: the sampler's groups plus ``estimands`` (with ATT:
        ``catt`` (chain, draw, group), ``att`` (chain, draw); with ATC: ``catc``, ``atc``;
        with ATE: ``cate``, ``ate``;
        and ``treated_weight``, ``control_weight`` (chain, draw, group), the weight sums of
        each arm) and ``weights`` (``weight`` (obs): posterior-mean weight of each unit;
        ``weight_draws`` / ``bootstrap_weight`` (chain, draw, obs) with
        ``store_weights=True``). Write it with ``idata.to_netcdf(path)``; read it back with
        ``xarray.open_datatree(path)`` and :func:`from_idata`.
    estimand
        ``"att"``, ``"atc"`` or ``"ate"``.
    uncertainty
        ``"bayesian_bootstrap"`` or ``"propensity"``.
    problems
        The sampling problems found (each was also issued as a ``HierpsWarning``).
    """

    def __init__(self, design: Design, idata: xr.DataTree, estimand: str, uncertainty: str) -> None:
        self.design = design
        self.idata = idata
        self.estimand = estimand
        self.uncertainty = uncertainty
        self.problems: list[str] = []
        #: Augmented CATTs (``Model.sample(outcome_model=...)`` or :func:`hierps.augment`).
        self.augmented: pd.DataFrame | None = None

    def __repr__(self) -> str:
        posterior = self.idata["posterior"]
        runs = f"{posterior.sizes['chain']} chains × {posterior.sizes['draw']} draws"
        if self.design.outcome is None:
            effect = "no outcome (propensity posterior and weights only)"
        else:
            row = self._overall_table().iloc[0]
            effect = (
                f"{self.estimand.upper()} {row['mean']:.4g} "
                f"[{CI_PROB:.0%} interval {row['lower']:.4g}, {row['upper']:.4g}]"
            )
        return (
            f"PosteriorResult: {effect}; {self.design.n_groups} groups; {runs}; "
            f"uncertainty {self.uncertainty}"
        )

    def save(self, path: str | Path) -> Path:
        """Write the result (sampler groups, effects, weights and the design) to one netCDF
        file, whole or not at all; :func:`hierps.load` reads it back as a
        :class:`PosteriorResult`."""
        from hierps.workflow.storage import save_result

        return save_result(self, path)

    @property
    def weights(self) -> pd.Series:
        """Posterior-mean weight of every unit, on the frame's index (ATT: treated = 1)."""
        values = self.idata["weights"]["weight"].to_numpy()
        return pd.Series(values, index=self.design.index, name="weight")

    def _estimands(self) -> xr.Dataset:
        if "estimands" not in self.idata.children:
            raise ArgumentError(
                "the model has no outcome column, so there are no effects: give outcome= to "
                "hierps.Model (the propensity posterior and .weights need none)"
            )
        return self.idata["estimands"].to_dataset()

    def _names(self, requested: str) -> tuple[str, str]:
        names = EFFECT_NAMES[self.estimand]
        if requested != self.estimand:
            raise ArgumentError(
                f"this result estimated the {self.estimand.upper()}: use .{names[0]} and "
                f".{names[1]}, or from_idata(..., estimand={requested!r})"
            )
        return names

    def _group_table(self) -> pd.DataFrame:
        name = EFFECT_NAMES[self.estimand][0]
        table = summarize_draws(self._estimands()[name])
        table.index = self.design.groups
        # The point estimate under the name MAP results use (here the posterior mean).
        table.insert(0, "estimate", table["mean"])
        n_treated = self.design.treated_per_group.astype(int)
        table["n_treated"] = n_treated
        table["n_control"] = self.design.units_per_group - n_treated
        return table

    def _overall_table(self) -> pd.DataFrame:
        name = EFFECT_NAMES[self.estimand][1]
        table = summarize_draws(self._estimands()[name]).set_axis([name])
        table.insert(0, "estimate", table["mean"])
        return table

    @property
    def catt(self) -> pd.DataFrame:
        """Group CATTs: ``estimate`` (the posterior mean; the column MAP results' tables
        share), the draw summary ``mean``, ``sd``, 90 % equal-tailed interval (``lower``,
        ``upper``), ``ess_bulk``, ``ess_tail``, ``r_hat``, and ``n_treated``, ``n_control`` (as
        in MAP tables); NaN where a group has no controls (or no treated)."""
        self._names("att")
        return self._group_table()

    @property
    def att(self) -> pd.DataFrame:
        """The ATT as a one-row table with the columns of :attr:`catt` (without counts)."""
        self._names("att")
        return self._overall_table()

    @property
    def group_effects(self) -> pd.DataFrame:
        """The group effects of the estimand the result holds (CATT, CATC or CATE)."""
        return self._group_table()

    @property
    def overall_effect(self) -> pd.DataFrame:
        """The overall effect of the estimand the result holds, as a one-row table."""
        return self._overall_table()

    @property
    def catc(self) -> pd.DataFrame:
        """Group effects on the controls (with ``estimand="atc"``); the columns of
        :attr:`catt`."""
        self._names("atc")
        return self._group_table()

    @property
    def atc(self) -> pd.DataFrame:
        """The ATC (with ``estimand="atc"``) as a one-row table."""
        self._names("atc")
        return self._overall_table()

    @property
    def cate(self) -> pd.DataFrame:
        """Group CATEs (with ``estimand="ate"``); the columns of :attr:`catt`."""
        self._names("ate")
        return self._group_table()

    @property
    def ate(self) -> pd.DataFrame:
        """The ATE (with ``estimand="ate"``) as a one-row table."""
        self._names("ate")
        return self._overall_table()
