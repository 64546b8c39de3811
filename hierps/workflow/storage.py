"""Saving results as one netCDF DataTree, and loading them back without loss.

Every file hierps writes carries a format marker (root attributes ``hierps_format``,
``hierps_format_version`` and ``hierps_kind``: ``"map"``, ``"posterior"`` or ``"analysis"``)
and is written to a temporary file beside its destination, then renamed into place: a file
at the destination is always whole. :func:`load` checks the marker, the version and the
groups and variables each kind needs, and raises
:class:`~hierps.exceptions.ResultFileError` for anything else (truncated, foreign, random
or newer files) instead of reading it back wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from hierps._version import __version__
from hierps.calibrated.fit import EFFECT_NAMES, MapResult
from hierps.design.build import ColumnRoles, Design
from hierps.exceptions import ArgumentTypeError, HierpsError, ResultFileError

if TYPE_CHECKING:
    from hierps.posterior.result import PosteriorResult

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SavedAnalysis",
    "design_dataset",
    "design_from_dataset",
    "load",
    "map_dataset",
    "save",
    "save_result",
]

FORMAT = "hierps-result"
FORMAT_VERSION = 1
KINDS = ("map", "posterior", "analysis")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What each kind of file must hold: group -> variables.
_REQUIRED = {
    "map": {"design": ("treatment", "group_codes", "unit_matrix"), "map": ("weight",)},
    "posterior": {
        "design": ("treatment", "group_codes", "unit_matrix"),
        "posterior": ("alpha",),
        "weights": ("weight",),
    },
    "analysis": {"map": ("weight",)},
}


def _provenance() -> dict[str, str]:
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "creation_library": "hierps",
        "creation_library_version": __version__,
    }


def _marker(kind: str) -> dict[str, object]:
    return {"hierps_format": FORMAT, "hierps_format_version": FORMAT_VERSION, "hierps_kind": kind}


# -- labels: index and group labels keep their type through the file ----------------------


def _label_array(index: pd.Index, what: str) -> tuple[np.ndarray, str]:
    """Labels as an array netCDF can hold, and how to read them back (``native``/``json``)."""
    if isinstance(index, pd.MultiIndex):
        index = pd.Index(list(index), tupleize_cols=False)
    if index.dtype != object and (
        pd.api.types.is_numeric_dtype(index.dtype) or pd.api.types.is_bool_dtype(index.dtype)
    ):
        return np.asarray(index), "native"
    values = list(index)
    if all(isinstance(value, str) for value in values):
        return np.asarray(values, dtype=object), "native"
    try:
        encoded = [json.dumps(_plain(value)) for value in values]
    except TypeError:
        raise ArgumentTypeError(
            f"the {what} labels (e.g. {values[0]!r} of type {type(values[0]).__name__}) cannot "
            f"be saved: use numbers, text or tuples of them (e.g. reset_index())"
        ) from None
    return np.asarray(encoded, dtype=object), "json"


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"tuple": [_plain(item) for item in value]}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    raise TypeError(type(value).__name__)


def _from_plain(value: object) -> object:
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_from_plain(item) for item in value["tuple"])
    return value


def _labels(values: np.ndarray, encoding: str, name: object) -> pd.Index:
    if encoding == "json":
        return pd.Index(
            [_from_plain(json.loads(v)) for v in values], name=name, tupleize_cols=False
        )
    return pd.Index(values, name=name, tupleize_cols=False)


# -- the design --------------------------------------------------------------------------


def design_dataset(design: Design) -> xr.Dataset:
    """The arrays of a design, so that a result can be read back without its data frame."""
    obs, obs_encoding = _label_array(design.index, "row")
    groups, group_encoding = _label_array(design.groups, "group")
    data = {
        "treatment": (("obs",), design.treatment.astype(np.int8)),
        "group_codes": (("obs",), design.group_codes.astype(np.int64)),
        "unit_matrix": (("obs", "unit_covariate"), design.unit_matrix),
        "group_matrix": (("group", "group_covariate"), design.group_matrix),
        "varying": (("unit_covariate",), design.varying.astype(np.int8)),
        "unit_center": (("unit_covariate",), design.unit_scaling["center"].to_numpy(float)),
        "unit_scale": (("unit_covariate",), design.unit_scaling["scale"].to_numpy(float)),
        "group_center": (("group_covariate",), design.group_scaling["center"].to_numpy(float)),
        "group_scale": (("group_covariate",), design.group_scaling["scale"].to_numpy(float)),
    }
    if design.outcome is not None:
        data["outcome"] = (("obs",), design.outcome)
    if design.base_weights is not None:
        data["base_weight"] = (("obs",), design.base_weights)
    roles = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in design.roles.__dict__.items()
    }
    return xr.Dataset(
        data,
        coords={
            "obs": obs,
            "group": groups,
            "unit_covariate": np.asarray(design.unit_names, dtype=object),
            "group_covariate": np.asarray(design.group_names, dtype=object),
        },
        attrs={
            "roles": json.dumps(roles),
            "standardize": design.standardize,
            "unit_sources": json.dumps(design.unit_sources),
            "group_sources": json.dumps(design.group_sources),
            "obs_encoding": obs_encoding,
            "group_encoding": group_encoding,
            "index_name": json.dumps(_plain_name(design.index.name)),
            "group_name": json.dumps(_plain_name(design.groups.name)),
        },
    )


def _plain_name(name: object) -> object:
    return name if isinstance(name, str | int | float) or name is None else str(name)


def design_from_dataset(dataset: xr.Dataset) -> Design:
    """The :class:`Design` that :func:`design_dataset` stored."""
    attrs = dataset.attrs
    roles = json.loads(attrs["roles"])
    for key in ("unit_covariates", "group_covariates", "categorical", "varying_slopes"):
        if roles.get(key) is not None:
            roles[key] = tuple(roles[key])
    unit_names = tuple(str(name) for name in dataset["unit_covariate"].values)
    group_names = tuple(str(name) for name in dataset["group_covariate"].values)

    def scaling(prefix: str, names: tuple[str, ...]) -> pd.DataFrame:
        table = pd.DataFrame(
            {
                "center": dataset[f"{prefix}_center"].to_numpy(),
                "scale": dataset[f"{prefix}_scale"].to_numpy(),
            },
            index=pd.Index(names, name="covariate", dtype=object),
        )
        return table

    outcome = dataset["outcome"].to_numpy().astype(float) if "outcome" in dataset else None
    base = dataset["base_weight"].to_numpy().astype(float) if "base_weight" in dataset else None
    return Design(
        base_weights=base,
        roles=ColumnRoles(**roles),
        index=_labels(
            dataset["obs"].values, attrs["obs_encoding"], json.loads(attrs["index_name"])
        ),
        treatment=dataset["treatment"].to_numpy().astype(np.int8),
        outcome=outcome,
        groups=_labels(
            dataset["group"].values, attrs["group_encoding"], json.loads(attrs["group_name"])
        ),
        group_codes=dataset["group_codes"].to_numpy().astype(np.int64),
        unit_matrix=np.ascontiguousarray(dataset["unit_matrix"].to_numpy(), dtype=float),
        unit_names=unit_names,
        group_matrix=np.ascontiguousarray(dataset["group_matrix"].to_numpy(), dtype=float),
        group_names=group_names,
        varying=dataset["varying"].to_numpy().astype(bool),
        unit_scaling=scaling("unit", unit_names),
        group_scaling=scaling("group", group_names),
        standardize=str(attrs["standardize"]),
        unit_sources=json.loads(attrs["unit_sources"]),
        group_sources=json.loads(attrs["group_sources"]),
    )


# -- MAP results ---------------------------------------------------------------------------


def map_dataset(fit: MapResult) -> xr.Dataset:
    """The MAP weights, CATT table, ATT and coefficients as one Dataset with named dims."""
    design = fit.design
    data = {
        "weight": (("obs",), fit.weights.to_numpy()),
    }
    obs, _ = _label_array(design.index, "row")
    groups, _ = _label_array(design.groups, "group")
    coords: dict[str, object] = {"obs": obs, "group": groups}
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
        f"hyperparameter_{k}": json.dumps(np.asarray(v).tolist())
        for k, v in fit.hyperparameters.as_dict().items()
    }
    dataset.attrs = {
        **_provenance(),
        **hyper,
        "converged": int(fit.converged),
        "iterations": fit.iterations,
        "max_gradient": fit.max_gradient,
        "objective": fit.objective,
        "group_column": design.roles.group,
        "treatment_column": design.roles.treatment,
        "outcome_column": design.roles.outcome or "",
        "estimand": fit.estimand,
        "weights_column": design.roles.weights or "",
        "n_excluded": fit.n_excluded,
    }
    if fit.deviations != "normal":  # refits (load) need the prior of the slope deviations
        dataset.attrs["deviations"] = fit.deviations
    if fit.selection is not None:
        dataset.attrs["scale_selection"] = fit.selection.method
        dataset.attrs["log_marginal_likelihood"] = fit.selection.log_marginal_likelihood
    return dataset


def _map_from_tree(tree: xr.DataTree) -> MapResult:
    """Rebuild a saved MAP result: the saved design solved again at the saved scales.

    The solver is exact and deterministic, so the rebuilt weights are the saved ones to the
    solver's tolerance (checked below) for every estimand, with the solver's state restored
    (about the time of one fit).
    """
    import warnings

    from hierps.calibrated.fit import fit_map

    design = design_from_dataset(tree["design"].to_dataset())
    dataset = tree["map"].to_dataset()
    _check_sizes(dataset, design)
    _check_design_values(design)
    attrs = dataset.attrs
    scales = {
        name.removeprefix("hyperparameter_"): json.loads(value)
        for name, value in attrs.items()
        if name.startswith("hyperparameter_")
    }
    with warnings.catch_warnings():
        # The fit warned when it was made; loading it says nothing new.
        warnings.simplefilter("ignore")
        try:
            fit = fit_map(
                design,
                estimand=str(attrs.get("estimand", "att")),
                deviations=str(attrs.get("deviations", "normal")),
                **scales,
            )
        except (HierpsError, ValueError, TypeError) as error:
            raise ResultFileError(
                f"the saved design and scales cannot be solved again ({error}): the file is "
                f"damaged or was written by an incompatible version"
            ) from None
    saved = dataset["weight"].to_numpy()
    rebuilt = fit.weights.to_numpy()
    if not np.allclose(rebuilt, saved, rtol=1e-6, atol=1e-12, equal_nan=True):
        raise ResultFileError(
            "the saved MAP weights differ from a refit of the saved design and scales: the "
            "file is damaged or was written by an incompatible version"
        )
    return fit


def _check_design_values(design: Design) -> None:
    """Values a damaged file can hold but no design can: refused before anything is fit."""
    codes = design.group_codes
    if len(codes) and (codes.min() < 0 or codes.max() >= design.n_groups):
        raise ResultFileError("the file's group codes point outside its groups: it is damaged")
    if not np.isin(design.treatment, (0, 1)).all():
        raise ResultFileError("the file's treatment is not 0/1: it is damaged")
    for name in ("unit_matrix", "group_matrix"):
        if not np.isfinite(getattr(design, name)).all():
            raise ResultFileError(f"the file's {name} holds non-finite values: it is damaged")


def _check_sizes(dataset: xr.Dataset, design: Design) -> None:
    for dim, size in (("obs", design.n_units), ("group", design.n_groups)):
        if dim in dataset.sizes and dataset.sizes[dim] != size:
            raise ResultFileError(
                f"the file's '{dim}' dimension has {dataset.sizes[dim]} entries but its design "
                f"has {size}: the file is damaged"
            )


# -- writing -------------------------------------------------------------------------------


def _write(tree: xr.DataTree, path: str | Path) -> Path:
    """Write ``tree`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    if path.is_dir():
        raise ResultFileError(f"{str(path)!r} is a directory; give a file name such as fit.nc")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tree.to_netcdf(temporary, engine="h5netcdf")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def save(tree: xr.DataTree, path: str | Path, kind: str = "analysis") -> Path:
    """Write an analysis tree to netCDF (h5netcdf engine), whole or not at all."""
    tree = tree.copy()
    tree.attrs = {**tree.attrs, **_provenance(), **_marker(kind)}
    return _write(tree, path)


def save_result(result: MapResult | PosteriorResult, path: str | Path) -> Path:
    """Write a MAP or posterior result with its design; :func:`load` reads it back."""
    from hierps.posterior.result import PosteriorResult

    if isinstance(result, MapResult):
        tree = xr.DataTree.from_dict(
            {"design": design_dataset(result.design), "map": map_dataset(result)}
        )
        kind = "map"
    elif isinstance(result, PosteriorResult):
        tree = result.idata.copy()
        tree["design"] = design_dataset(result.design)
        tree.attrs = {
            **tree.attrs,
            "hierps_estimand": result.estimand,
            "hierps_uncertainty": result.uncertainty,
            "hierps_problems": json.dumps(list(result.problems)),
        }
        kind = "posterior"
    else:
        raise ArgumentTypeError(
            f"result must be a MapResult or PosteriorResult, not {type(result).__name__}"
        )
    return save(tree, path, kind)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedAnalysis:
    """An analysis loaded from disk (``hierps fit``'s ``result.nc``): the tree and its tables."""

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


def _open(path: Path) -> xr.DataTree:
    if not path.exists():
        raise ResultFileError(f"result file {str(path)!r} does not exist")
    if path.is_dir():
        raise ResultFileError(f"{str(path)!r} is a directory, not a result file")
    with open(path, "rb") as handle:
        signature = handle.read(len(_HDF5_SIGNATURE))
    if signature != _HDF5_SIGNATURE:
        raise ResultFileError(
            f"{str(path)!r} is not a hierps result file (not netCDF-4/HDF5: it does not start "
            f"with the HDF5 signature)"
        )
    try:
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            return tree.load()
    except Exception as error:  # h5py and xarray raise OSError, KeyError, ValueError, …
        raise ResultFileError(
            f"{str(path)!r} cannot be read — it is truncated or damaged "
            f"({type(error).__name__}: {error})"
        ) from None


def _check_marker(tree: xr.DataTree, path: Path) -> str:
    attrs = tree.attrs
    if attrs.get("hierps_format") != FORMAT:
        raise ResultFileError(
            f"{str(path)!r} is not a hierps result file (no '{FORMAT}' format marker); only "
            f"files written by hierps fit or result.save() can be loaded"
        )
    try:
        version = int(attrs.get("hierps_format_version"))
    except (TypeError, ValueError):
        raise ResultFileError(f"{str(path)!r} has no valid format version") from None
    if version > FORMAT_VERSION:
        raise ResultFileError(
            f"{str(path)!r} has format version {version}, newer than this hierps "
            f"({__version__}) reads (≤ {FORMAT_VERSION}); upgrade hierps"
        )
    kind = str(attrs.get("hierps_kind"))
    if kind not in KINDS:
        raise ResultFileError(f"{str(path)!r} holds an unknown kind of result {kind!r}")
    for group, variables in _REQUIRED[kind].items():
        if group not in tree.children:
            raise ResultFileError(
                f"{str(path)!r} is incomplete: the {kind} result lacks its '{group}' group"
            )
        dataset = tree[group]
        missing = [name for name in variables if name not in dataset.data_vars]
        if group in ("map", "design") and "group" not in dataset.coords:
            missing.append("group (coordinate)")
        if "obs" in dataset.dims and "obs" not in dataset.coords:
            missing.append("obs (coordinate)")
        if missing:
            raise ResultFileError(
                f"{str(path)!r} is incomplete: group '{group}' lacks {', '.join(missing)}"
            )
    return kind


def load(path: str | Path) -> MapResult | PosteriorResult | SavedAnalysis:
    """Load a result written by ``result.save(path)`` or ``hierps fit``.

    Returns the kind that was saved: a :class:`~hierps.MapResult`, a
    :class:`~hierps.PosteriorResult` (both with their design, so effects, balance and plots
    work without the data frame) or, for ``hierps fit``'s ``result.nc``, a
    :class:`SavedAnalysis`.

    Raises
    ------
    ResultFileError
        The file is missing, truncated, damaged, not written by hierps, written by a newer
        format version, or lacks a group its kind needs.
    """
    path = Path(path)
    tree = _open(path)
    kind = _check_marker(tree, path)
    try:
        if kind == "analysis":
            return SavedAnalysis(tree)
        if kind == "map":
            return _map_from_tree(tree)
        return _posterior_from_tree(tree)
    except (KeyError, ValueError, TypeError, IndexError) as error:
        if isinstance(error, ResultFileError):
            raise
        raise ResultFileError(
            f"{str(path)!r} is damaged: {type(error).__name__}: {error}"
        ) from None


def _posterior_from_tree(tree: xr.DataTree) -> PosteriorResult:
    from hierps.posterior.result import PosteriorResult

    design = design_from_dataset(tree["design"].to_dataset())
    for group in ("weights", "estimands"):
        if group in tree.children:
            _check_sizes(tree[group].to_dataset(), design)
    if design.outcome is not None and "estimands" not in tree.children:
        raise ResultFileError("the posterior result is incomplete: it lacks its 'estimands' group")
    idata = tree.drop_nodes(["design"])
    for key in ("hierps_format", "hierps_format_version", "hierps_kind"):
        idata.attrs.pop(key, None)
    result = PosteriorResult(
        design,
        idata,
        estimand=str(tree.attrs.get("hierps_estimand", "att")),
        uncertainty=str(tree.attrs.get("hierps_uncertainty", "bayesian_bootstrap")),
    )
    result.problems = json.loads(tree.attrs.get("hierps_problems", "[]"))
    return result
