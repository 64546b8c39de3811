"""The posterior mode of a Dask design: NUTS on (group, covariate row) cells counted by Dask.

The Bernoulli likelihood depends on the units only through the cells of
:func:`hierps.pymc_model.compress` — each distinct (group, standardized covariate row) with its
unit and treated counts (math §4). With discrete covariates there are at most
``J × Π levels`` cells whatever the number of rows, so :func:`cells_of` counts them with one
Dask aggregation (also the outcome sums of each arm, which the effects need) and
:func:`sample_cells` runs NUTS on the model of :func:`hierps.pymc_model.build_pymc` built on
those cells. With a continuous covariate every unit is its own cell: :func:`cells_of` stops
at ``max_cells`` and says how to coarsen.

The effects are those of ``uncertainty="propensity"`` (docs/scale.md §5): per draw, the
Hájek CATT of every group with control weights ``exp(η)`` of each cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hierps.effects.estimands import GroupSums, att_from_catt, effects_from_sums
from hierps.exceptions import DataError
from hierps.scale.dask_design import DaskDesign, UnitPlan

if TYPE_CHECKING:
    import xarray as xr

    from hierps.pymc_model import Patterns

__all__ = ["CellPosterior", "cells_of", "sample_cells"]

MAX_CELLS = 200_000
_SUMS = ["units", "treated", "treated_outcome", "control_outcome"]


def _partition_cells(frame: pd.DataFrame, plan: UnitPlan, max_cells: int) -> pd.DataFrame:
    x = plan.standardized(frame)
    treated = plan.treated(frame).astype(float)
    y = np.zeros(len(frame)) if plan.outcome is None else frame[plan.outcome].to_numpy(float)
    keys = ["group", *[f"x{k}" for k in range(x.shape[1])]]
    table = pd.DataFrame(x, columns=keys[1:])
    table.insert(0, "group", plan.codes(frame))
    table["units"] = 1.0
    table["treated"] = treated
    table["treated_outcome"] = treated * y
    table["control_outcome"] = (1.0 - treated) * y
    cells = table.groupby(keys, sort=False).sum()
    if len(cells) > max_cells:
        raise DataError(_too_many(max_cells))
    return cells


def _too_many(max_cells: int) -> str:
    return (
        f"the covariates make more than {max_cells:,} (group, covariate row) cells: the "
        f"posterior needs discrete covariates (continuous ones make every unit its own cell); "
        f"coarsen them in the data (e.g. pd.cut into quantile bins) or raise max_cells"
    )


def _merge_cells(*parts: pd.DataFrame, max_cells: int) -> pd.DataFrame:
    merged = pd.concat(parts).groupby(level=list(range(parts[0].index.nlevels)), sort=False)
    merged = merged.sum()
    if len(merged) > max_cells:
        raise DataError(_too_many(max_cells))
    return merged


def cells_of(design: DaskDesign, max_cells: int = MAX_CELLS) -> tuple[Patterns, pd.DataFrame]:
    """The (group, covariate row) cells of a Dask design, counted on the cluster.

    Returns
    -------
    patterns
        :class:`~hierps.pymc_model.Patterns` in the order of :func:`~hierps.pymc_model.compress`
        (by group, then covariate row); ``of_unit`` is empty (the units stay on the workers).
    outcomes
        Per cell, ``treated_outcome`` and ``control_outcome``: the outcome sums of each arm.

    Raises
    ------
    DataError
        When there are more than ``max_cells`` cells (continuous covariates).
    """
    import dask

    from hierps.pymc_model import Patterns

    count = dask.delayed(_partition_cells, pure=True)
    merge = dask.delayed(_merge_cells, pure=True)
    parts = [count(part, design.plan, max_cells) for part in design.frame.to_delayed()]
    while len(parts) > 1:
        parts = [merge(*parts[i : i + 8], max_cells=max_cells) for i in range(0, len(parts), 8)]
    (cells,) = dask.compute(parts[0])
    cells = cells.sort_index()  # lexicographic in (group, x…), as np.unique in compress
    keys = cells.index.to_frame(index=False).to_numpy(dtype=float)
    patterns = Patterns(
        group=keys[:, 0].astype("int64"),
        design=np.ascontiguousarray(keys[:, 1:]),
        units=cells["units"].to_numpy().astype("int64"),
        treated=np.rint(cells["treated"].to_numpy()).astype("int64"),
        of_unit=np.zeros(0, dtype="int64"),
    )
    outcomes = cells[["treated_outcome", "control_outcome"]].reset_index(drop=True)
    return patterns, outcomes


@dataclass
class CellPosterior:
    """NUTS draws of the propensity model of a Dask design, and the effects per draw.

    Attributes
    ----------
    idata
        The sampler's ``DataTree``.
    catt_draws, att_draws
        ``(chain, draw, group)`` and ``(chain, draw)`` effects on the treated, with the
        control weights ``exp(η)`` of each cell (propensity uncertainty).
    """

    idata: object
    catt_draws: xr.DataArray
    att_draws: xr.DataArray

    @property
    def catt(self) -> pd.DataFrame:
        """One row per group: ``mean, sd, lower, upper, ess_bulk, ess_tail, r_hat``."""
        from hierps.mcmc.summary import summarize_draws

        table = summarize_draws(self.catt_draws)
        return table.set_axis(pd.Index(self.catt_draws["group"].to_numpy(), name="group"))

    @property
    def att(self) -> pd.DataFrame:
        from hierps.mcmc.summary import summarize_draws

        return summarize_draws(self.att_draws)


def sample_cells(
    design: DaskDesign,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 2,
    random_seed: int | None = None,
    sampler: str = "nutpie",
    max_cells: int = MAX_CELLS,
    **fixed: float,
) -> CellPosterior:
    """Sample the Bernoulli propensity model of a Dask design on its cells.

    ``sampler`` is any of :data:`hierps.mcmc.conventions.SAMPLERS` (``"numpyro"`` needs
    ``jax`` and ``numpyro``); ``fixed`` fixes hyperparameters as in
    :func:`hierps.pymc_model.build_pymc`.
    """
    import pymc as pm
    import xarray as xr

    from hierps.mcmc.conventions import check_sampler
    from hierps.posterior.run import _usable_cpus
    from hierps.pymc_model import build_pymc

    check_sampler(sampler)
    patterns, outcomes = cells_of(design, max_cells=max_cells)
    model = build_pymc(design, loss="bernoulli", patterns=patterns, **fixed)
    # The sampler's seed and settings of hierps.sample, so that a seed gives the same draws
    # as the in-memory posterior of the same data.
    (sampler_seeds,) = np.random.SeedSequence(random_seed).spawn(1)
    with model:
        idata = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=int(sampler_seeds.generate_state(1)[0]),
            nuts_sampler=sampler,
            progressbar=False,
            compute_convergence_checks=False,
            nuts={"target_accept": 0.8},
            compile_kwargs={"freeze_model": True} if sampler == "nutpie" else None,
            cores=min(chains, _usable_cpus()) if sampler == "nutpie" else None,
        )
    posterior = idata.posterior
    alpha = posterior["alpha"].to_numpy()  # (chain, draw, group)
    eta = alpha[..., patterns.group]
    if len(design.unit_names):
        beta = posterior["beta"].to_numpy()[..., patterns.group, :]  # (c, d, cell, k)
        eta = eta + np.einsum("cdpk,pk->cdp", beta, patterns.design)
    odds = np.exp(eta)
    sums = GroupSums(patterns.group, design.n_groups)
    controls = patterns.controls.astype(float)
    effects = effects_from_sums(
        treated_weight=np.broadcast_to(sums(patterns.treated.astype(float)), alpha.shape),
        treated_total=np.broadcast_to(sums(outcomes["treated_outcome"].to_numpy()), alpha.shape),
        control_weight=sums(odds * controls),
        control_total=sums(odds * outcomes["control_outcome"].to_numpy()),
    )
    coords = {"chain": posterior["chain"], "draw": posterior["draw"], "group": list(design.groups)}
    catt = xr.DataArray(effects["catt"], dims=("chain", "draw", "group"), coords=coords)
    att = att_from_catt(effects["catt"], effects["treated_weight"])
    att = xr.DataArray(
        att, dims=("chain", "draw"), coords={k: coords[k] for k in ("chain", "draw")}
    )
    return CellPosterior(idata, catt.rename("catt"), att.rename("att"))
