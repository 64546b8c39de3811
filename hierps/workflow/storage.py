"""Saving analyses as one netCDF DataTree, and loading them back without loss."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from hierps._version import __version__
from hierps.calibrated.fit import EFFECT_NAMES, MapResult

__all__ = ["SavedAnalysis", "load", "map_dataset", "save"]


def _provenance() -> dict[str, str]:
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "creation_library": "hierps",
        "creation_library_version": __version__,
    }


def map_dataset(fit: MapResult) -> xr.Dataset:
    """The MAP weights, CATT table, ATT and coefficients as one Dataset with named dims."""
    design = fit.design
    data = {"weight": (("obs",), fit.weights.to_numpy())}
    coords: dict[str, object] = {
        "obs": np.asarray(design.index),
        "group": np.asarray(design.groups),
    }
    if design.outcome is not None:
        group_name, overall_name = EFFECT_NAMES[fit.estimand]
        catt = fit.group_effects
        for column in catt.columns:
            data[f"{group_name}_{column}"] = (("group",), catt[column].to_numpy())
        data[overall_name] = ((), fit.overall_effect)
    dataset = xr.Dataset(data, coords=coords)
    coefficients = fit.coefficients.drop_vars("group").assign_coords(group=coords["group"])
    dataset = dataset.merge(coefficients.rename({name: f"coef_{name}" for name in coefficients}))
    hyper = {
        f"hyperparameter_{k}": str(np.asarray(v).tolist())
        for k, v in fit.hyperparameters.as_dict().items()
    }
    dataset.attrs = {
        **_provenance(),
        **hyper,
        "converged": int(fit.converged),
        "iterations": fit.iterations,
        "max_gradient": fit.max_gradient,
        "group_column": design.roles.group,
        "treatment_column": design.roles.treatment,
        "outcome_column": design.roles.outcome or "",
        "estimand": fit.estimand,
        "weights_column": design.roles.weights or "",
    }
    if fit.selection is not None:
        dataset.attrs["scale_selection"] = fit.selection.method
        dataset.attrs["log_marginal_likelihood"] = fit.selection.log_marginal_likelihood
    return dataset


def save(tree: xr.DataTree, path: str | Path) -> Path:
    """Write an analysis tree to netCDF (h5netcdf engine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.to_netcdf(path, engine="h5netcdf")
    return path


@dataclass(frozen=True)
class SavedAnalysis:
    """An analysis loaded from disk: the tree and the tables read from it."""

    tree: xr.DataTree

    @property
    def weights(self) -> pd.Series:
        """The MAP weights on the original frame's index."""
        weight = self.tree["map"]["weight"]
        return pd.Series(weight.to_numpy(), index=pd.Index(weight["obs"].to_numpy()), name="weight")

    @property
    def catt(self) -> pd.DataFrame:
        """The MAP CATT table by group."""
        dataset = self.tree["map"].to_dataset()
        columns = [name for name in dataset.data_vars if name.startswith("catt_")]
        frame = pd.DataFrame(
            {name.removeprefix("catt_"): dataset[name].to_numpy() for name in columns},
            index=pd.Index(dataset["group"].to_numpy(), name=dataset.attrs.get("group_column")),
        )
        for column in ("n_treated", "n_control"):
            if column in frame:
                frame[column] = frame[column].astype(int)
        return frame

    @property
    def att(self) -> float:
        return float(self.tree["map"]["att"])


def load(path: str | Path) -> SavedAnalysis:
    """Load an analysis written by :func:`save` or ``hierps fit``."""
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        loaded = tree.load()
    return SavedAnalysis(loaded)
