"""Validation, encoding and standardization: from a DataFrame and column roles to a design.

The design knows nothing of PyMC or of any fit; the PyMC graph (:mod:`hierps.model`) and the
MAP solver (:mod:`hierps.calibrated`) both consume it.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hierps.design import validation
from hierps.design.standardize import _short_list, scaling, standardized
from hierps.exceptions import ArgumentError, ArgumentTypeError, DataError, warn

__all__ = ["ColumnRoles", "Design", "build_design"]

STANDARDIZE_METHODS = ("treated", "pooled", "none")
_MAX_LISTED = 10


@dataclass(frozen=True)
class ColumnRoles:
    """Which column of the frame plays which part in the model."""

    treatment: str
    group: str
    outcome: str | None = None
    unit_covariates: tuple[str, ...] = ()
    group_covariates: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    varying_slopes: tuple[str, ...] | None = None
    weights: str | None = None


@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class DesignViews:
    """What every design holds, in memory or on Dask: the per-group arrays, the names and the
    scaling, with the views built on them (sizes, names and the summary).

    A subclass adds the unit rows and provides ``n_units``, ``treated_per_group`` and
    ``units_per_group``.
    """

    roles: ColumnRoles
    groups: pd.Index
    unit_names: tuple[str, ...]
    group_matrix: np.ndarray
    group_names: tuple[str, ...]
    varying: np.ndarray
    unit_scaling: pd.DataFrame
    group_scaling: pd.DataFrame
    standardize: str
    unit_sources: dict[str, str] = field(default_factory=dict)
    group_sources: dict[str, str] = field(default_factory=dict)

    #: Words after "hierps design" in the summary's first line (e.g. the partition count).
    _summary_kind = ""

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def varying_names(self) -> tuple[str, ...]:
        return tuple(name for name, vary in zip(self.unit_names, self.varying, strict=True) if vary)

    def group_frame(self, original_scale: bool = False) -> pd.DataFrame:
        """The encoded group covariates, one row per group."""
        values = self.group_matrix
        if original_scale:
            values = (
                values * self.group_scaling["scale"].to_numpy()
                + self.group_scaling["center"].to_numpy()
            )
        return pd.DataFrame(values, index=self.groups, columns=list(self.group_names))

    def summary(self) -> str:
        """A readable description: size, groups, treated per group, covariates at each level."""
        treated = self.treated_per_group
        sizes = self.units_per_group
        n_treated = int(treated.sum())
        varying = self.varying_names
        fixed = [name for name in self.unit_names if name not in varying]
        lines = [
            f"hierps design{self._summary_kind}: {self.n_units:,} units in {self.n_groups:,} "
            f"groups ('{self.roles.group}'), treatment '{self.roles.treatment}'",
            f"  treated: {n_treated:,} ({n_treated / self.n_units:.1%}); per group "
            f"min {treated.min():g} / median {np.median(treated):g} / max {treated.max():g}",
            f"  group size: min {sizes.min():,} / median {np.median(sizes):g} / "
            f"max {sizes.max():,}",
            f"  outcome: {self.roles.outcome or '(none)'}",
            f"  unit covariates ({len(self.unit_names)}): varying slopes: "
            f"{_short_list(varying)}; fixed slopes: {_short_list(fixed)}",
            f"  group covariates ({len(self.group_names)}): {_short_list(self.group_names)}",
            f"  standardization: {self.standardize}",
        ]
        if getattr(self.roles, "weights", None) is not None:
            lines.append(f"  base weights: '{self.roles.weights}'")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class Design(DesignViews):
    """The validated arrays of a multilevel study, ready for the model and the solver.

    Rows keep the order of the input frame. Unit and group covariates are encoded (one-hot
    categoricals with names such as ``C1[4]``, missingness indicators ``x_missing``) and, by
    default, standardized; ``unit_scaling`` and ``group_scaling`` hold the centre and scale of
    every column so that results can be reported on the original scale.
    """

    index: pd.Index
    treatment: np.ndarray
    outcome: np.ndarray | None
    group_codes: np.ndarray
    unit_matrix: np.ndarray
    # Base (survey or frequency) weights of the units; None means every unit weighs 1.
    base_weights: np.ndarray | None = None

    @property
    def unit_weights(self) -> np.ndarray:
        """The base weight of every unit (ones without a ``weights`` column)."""
        if self.base_weights is None:
            return np.ones(self.n_units)
        return self.base_weights

    @property
    def n_units(self) -> int:
        return len(self.index)

    @property
    def treated_per_group(self) -> np.ndarray:
        return np.bincount(self.group_codes, weights=self.treatment, minlength=self.n_groups)

    @property
    def units_per_group(self) -> np.ndarray:
        return np.bincount(self.group_codes, minlength=self.n_groups)

    def unit_frame(self, original_scale: bool = False) -> pd.DataFrame:
        """The encoded unit covariates as a DataFrame on the frame's index."""
        values = self.unit_matrix
        if original_scale:
            values = (
                values * self.unit_scaling["scale"].to_numpy()
                + self.unit_scaling["center"].to_numpy()
            )
        return pd.DataFrame(values, index=self.index, columns=list(self.unit_names))


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so that messages read ``2``, not
    ``np.int64(2)``."""
    return value.item() if isinstance(value, np.generic) else value


def _list_labels(labels: Sequence[Hashable]) -> str:
    labels = list(labels)
    shown = ", ".join(repr(_plain(label)) for label in labels[:_MAX_LISTED])
    return shown + (f" and {len(labels) - _MAX_LISTED} more" if len(labels) > _MAX_LISTED else "")


def _close_matches(name: str, available: Sequence[str], n: int = 3) -> list[str]:
    """Names like ``name``, ignoring case (``'Y'`` suggests ``'y'``), exact-but-for-case first."""
    by_lower: dict[str, list[str]] = {}
    for candidate in available:
        by_lower.setdefault(str(candidate).lower(), []).append(str(candidate))
    key = str(name).lower()
    keys = [key] if key in by_lower else []
    keys += [k for k in difflib.get_close_matches(key, list(by_lower), n=n) if k != key]
    return [candidate for k in keys for candidate in by_lower[k]][:n]


def _check_columns(frame: pd.DataFrame, names: Sequence[str], role: str) -> None:
    available = [str(column) for column in frame.columns]
    for name in names:
        if name not in frame.columns:
            close = _close_matches(str(name), available)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise DataError(f"{role} column {name!r} is not in the data{hint}")


def _is_categorical(series: pd.Series, declared: bool) -> bool:
    if declared:
        return True
    return isinstance(series.dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
    )


def _levels(series: pd.Series) -> list:
    if isinstance(series.dtype, pd.CategoricalDtype):
        used = set(series.dropna().unique())
        return [level for level in series.cat.categories if level in used]
    values = series.dropna().unique()
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _level_name(name: str, level: object) -> str:
    """The encoded column of one level: ``C1[4]``, also when missing values made codes float."""
    level = _plain(level)
    if isinstance(level, float) and level.is_integer():
        level = int(level)
    return f"{name}[{level}]"


def _validate_treatment(frame: pd.DataFrame, column: str) -> np.ndarray:
    series = frame[column]
    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"treatment column {column!r} has missing values in rows "
            f"{_list_labels(frame.index[missing])}"
        )
    if pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=np.int8)
    else:
        unique = pd.unique(series)
        bad = [value for value in unique if not _is_zero_or_one(value)]
        if bad:
            raise DataError(
                f"treatment column {column!r} must be binary (0/1 or True/False); "
                f"found values {_list_labels(sorted(bad, key=str))}"
            )
        values = series.to_numpy(dtype=float).astype(np.int8)
    n_treated = int(values.sum())
    if n_treated == 0:
        raise DataError(f"treatment column {column!r} has no treated units (all are 0)")
    if n_treated == len(values):
        raise DataError(f"treatment column {column!r} has no control units (all are 1)")
    return values


def _is_zero_or_one(value: object) -> bool:
    try:
        return float(value) in (0.0, 1.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _validate_groups(frame: pd.DataFrame, column: str) -> tuple[pd.Index, np.ndarray]:
    series = frame[column]
    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"group column {column!r} has missing ids in rows {_list_labels(frame.index[missing])}"
        )
    labels = _levels(series)
    groups = pd.Index(labels, name=column, tupleize_cols=False)
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = pd.Categorical(series, categories=labels).codes.astype(np.int64)
    else:
        codes = groups.get_indexer(series)
    return groups, codes


def _validate_outcome(frame: pd.DataFrame, column: str | None) -> np.ndarray | None:
    if column is None:
        return None
    series = frame[column]
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise DataError(f"outcome column {column!r} must be numeric; it has dtype {series.dtype}")
    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"outcome column {column!r} has missing values in rows "
            f"{_list_labels(frame.index[missing])}; drop those rows explicitly "
            f"(e.g. data.dropna(subset=[{column!r}])) if that is what you intend"
        )
    return series.to_numpy(dtype=float)


def _encode(
    frame: pd.DataFrame, names: Sequence[str], categorical: set[str], rows: str = "rows"
) -> tuple[pd.DataFrame, dict[str, str]]:
    """One-hot encode categoricals (all levels) and add missingness indicators.

    Returns the encoded columns (NaN kept where a numeric value is missing) and, for every
    encoded column, the name of the input column it came from. ``rows`` names what a row of
    ``frame`` is in the missing-value warning ("rows", or "groups" for group covariates).
    """
    columns: dict[str, pd.Series] = {}
    sources: dict[str, str] = {}

    def add(encoded: str, values: pd.Series, source: str) -> None:
        if encoded in columns:
            raise DataError(
                f"covariates {sources[encoded]!r} and {source!r} both encode to a column named "
                f"{encoded!r}; rename one of them"
            )
        columns[encoded] = values
        sources[encoded] = source

    for name in names:
        series = frame[name]
        missing = series.isna()
        if _is_categorical(series, name in categorical):
            for level in _levels(series):
                add(_level_name(name, level), (series == level).astype(float), name)
        else:
            add(name, series.astype(float), name)
        if missing.any():
            indicator = f"{name}_missing"
            add(indicator, missing.astype(float), name)
            warn(
                f"covariate {name!r} has {int(missing.sum())} missing values (in {rows}): added "
                f"the indicator {indicator!r} and set the missing entries to the centre used for "
                f"standardization (the treated mean by default)"
            )
    encoded = pd.DataFrame(columns, index=frame.index)
    return encoded, sources


def _check_constant_within_groups(frame: pd.DataFrame, group: str, names: Sequence[str]) -> None:
    for name in names:
        # Missing values count as a value of their own: NaN next to a number varies too.
        per_group = frame.groupby(group, observed=True, sort=False)[name].nunique(dropna=False)
        varying = per_group.index[per_group.to_numpy() > 1]
        if len(varying):
            raise DataError(
                f"group covariate {name!r} varies within group(s) {_list_labels(varying)} "
                f"of {group!r}; a group covariate must be constant within each group "
                f"(use it as a unit covariate instead)"
            )


def check_roles(frame: pd.DataFrame, roles: ColumnRoles) -> None:
    """Check that the columns the roles name exist (in ``frame``, or a Dask frame's meta) and
    that no column plays two parts."""
    _check_columns(frame, [roles.treatment], "treatment")
    _check_columns(frame, [roles.group], "group")
    if roles.outcome is not None:
        _check_columns(frame, [roles.outcome], "outcome")
    _check_columns(frame, roles.unit_covariates, "unit covariate")
    _check_columns(frame, roles.group_covariates, "group covariate")
    _check_columns(frame, roles.categorical, "categorical")
    overlap = set(roles.unit_covariates) & set(roles.group_covariates)
    if overlap:
        raise DataError(
            f"columns {_list_labels(sorted(overlap))} are given both as unit and group covariates"
        )
    reserved = {
        roles.treatment: "treatment",
        roles.group: "group",
        roles.outcome: "outcome",
        roles.weights: "weights",
    }
    for name in (*roles.unit_covariates, *roles.group_covariates):
        if name in reserved:
            raise DataError(
                f"column {name!r} cannot be both a covariate and the {reserved[name]} column"
            )
    undeclared = set(roles.categorical) - set(roles.unit_covariates) - set(roles.group_covariates)
    if undeclared:
        raise DataError(
            f"categorical columns {_list_labels(sorted(undeclared))} are not among the covariates"
        )


def build_design(frame: pd.DataFrame, roles: ColumnRoles, standardize: bool | str) -> Design:
    """Validate the frame against the column roles and build the model's arrays.

    Parameters
    ----------
    frame
        One row per unit.
    roles
        The column roles; see :class:`ColumnRoles`.
    standardize
        ``True`` or ``"treated"`` centres each covariate at the treated mean and divides by
        the treated standard deviation (natstrat's ``denom_variance="treated"``);
        ``"pooled"`` centres at the overall mean and divides by the square root of the mean
        of the two arms' variances; ``False`` or ``"none"`` leaves covariates as they are.

    Returns
    -------
    Design
    """
    if not isinstance(frame, pd.DataFrame):
        raise ArgumentTypeError(f"data must be a pandas DataFrame, not {type(frame).__name__}")
    method = _standardize_method(standardize)
    if len(frame) == 0:
        raise DataError("the data frame is empty")
    if not frame.index.is_unique:
        duplicated = frame.index[frame.index.duplicated()].unique()
        raise DataError(
            f"the data frame's index has duplicated labels {_list_labels(duplicated)}; "
            f"weights are reported on the index, so make it unique (e.g. reset_index())"
        )
    check_roles(frame, roles)
    _check_values(frame, roles)

    treatment = _validate_treatment(frame, roles.treatment)
    groups, codes = _validate_groups(frame, roles.group)
    outcome = _validate_outcome(frame, roles.outcome)
    base_weights = None
    if roles.weights is not None:
        _check_columns(frame, [roles.weights], "weights")
        base_weights = validate_base_weights(frame, roles.weights)
    _check_constant_within_groups(frame, roles.group, roles.group_covariates)

    categorical = set(roles.categorical)
    unit_encoded, unit_sources = _encode(frame, roles.unit_covariates, categorical)
    validation.check_spread(unit_encoded, unit_sources, "unit")
    unit_scaling, dropped = scaling(unit_encoded, treatment, method, "unit", base_weights)
    unit_encoded = unit_encoded.drop(columns=dropped)
    unit_matrix = standardized(unit_encoded, unit_scaling)

    # Group covariates are encoded once per group; their centre and scale are taken over the
    # treated units (each carries its group's value), the same convention as unit covariates.
    # The statistics are those of the per-unit column, computed on one row per group
    # repeated by its treated and control counts rather than on a copy per unit.
    _, first_rows = np.unique(codes, return_index=True)
    group_rows = frame.iloc[first_rows]
    if base_weights is None:
        n_treated = np.bincount(codes, weights=treatment, minlength=len(groups))
        n_units = np.bincount(codes, minlength=len(groups))
        group_counts = (n_treated, n_units - n_treated)
    else:
        # Frequency weights: each group row stands for its units' base-weight totals per arm.
        group_counts = (
            np.bincount(codes, weights=base_weights * treatment, minlength=len(groups)),
            np.bincount(codes, weights=base_weights * (1 - treatment), minlength=len(groups)),
        )
    return Design(
        **covariate_fields(roles, method, unit_encoded.columns, unit_sources, unit_scaling),
        **group_covariate_fields(roles, method, groups, group_rows, group_counts),
        index=frame.index,
        treatment=treatment,
        outcome=outcome,
        group_codes=codes,
        unit_matrix=unit_matrix,
        base_weights=base_weights,
    )


def covariate_fields(
    roles: ColumnRoles,
    method: str,
    unit_names: Sequence[str],
    unit_sources: dict[str, str],
    unit_scaling: pd.DataFrame,
) -> dict[str, object]:
    """The design fields that name and scale the encoded unit covariates, in memory or on
    Dask: names, varying-slope mask, scaling table and each column's source column."""
    unit_names = tuple(unit_names)
    return {
        "roles": roles,
        "standardize": method,
        "unit_names": unit_names,
        "varying": _varying_mask(unit_names, unit_sources, roles.varying_slopes),
        "unit_scaling": unit_scaling,
        "unit_sources": {k: v for k, v in unit_sources.items() if k in unit_names},
    }


def group_covariate_fields(
    roles: ColumnRoles,
    method: str,
    groups: pd.Index,
    group_rows: pd.DataFrame,
    counts: tuple[np.ndarray, np.ndarray],
) -> dict[str, object]:
    """The design fields of the group covariates, in memory or on Dask: encoded once per
    group (``group_rows``, one row per group in the order of ``groups``) and standardized.

    Their centre and scale are those of the per-unit column, computed on one row per group
    weighted by its treated and control ``counts`` (or base-weight totals) instead of on a
    copy per unit.
    """
    encoded, sources = _encode(
        group_rows, roles.group_covariates, set(roles.categorical), rows="groups"
    )
    validation.check_spread(encoded, sources, "group")
    group_scaling, dropped = scaling(encoded, np.empty(0), method, "group", counts=counts)
    encoded = encoded.drop(columns=dropped).set_axis(groups)
    return {
        "groups": groups,
        "group_names": tuple(encoded.columns),
        "group_matrix": standardized(encoded, group_scaling),
        "group_scaling": group_scaling,
        "group_sources": {k: v for k, v in sources.items() if k in encoded.columns},
    }


def validate_base_weights(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The base (survey or frequency) weights: positive finite numbers, one per unit."""
    series = frame[column]
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise DataError(f"weights column {column!r} must be numeric; it has dtype {series.dtype}")
    values = series.to_numpy(dtype=float)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        raise DataError(
            f"weights column {column!r} must hold positive finite numbers; rows "
            f"{_list_labels(frame.index[bad])} have {_list_labels(pd.unique(series[bad]))}"
        )
    return values


def _check_values(frame: pd.DataFrame, roles: ColumnRoles) -> None:
    """The value checks of :mod:`hierps.design.validation`, role by role."""
    validation.check_duplicated_columns(
        frame,
        [
            roles.treatment,
            roles.group,
            *([roles.outcome] if roles.outcome is not None else []),
            *roles.unit_covariates,
            *roles.group_covariates,
        ],
    )
    validation.check_group_ids(frame, roles.group)
    if roles.outcome is not None and pd.api.types.is_numeric_dtype(frame[roles.outcome]):
        validation.check_finite(frame, roles.outcome, "outcome")
    categorical = set(roles.categorical)
    validation.check_covariate_values(frame, roles.unit_covariates, categorical, "unit")
    validation.check_covariate_values(frame, roles.group_covariates, categorical, "group")


def _standardize_method(standardize: bool | str) -> str:
    if standardize is True:
        return "treated"
    if standardize is False:
        return "none"
    if isinstance(standardize, str) and standardize in STANDARDIZE_METHODS:
        return str(standardize)
    raise ArgumentError(
        f"standardize={standardize!r} is not one of True, False, {', '.join(STANDARDIZE_METHODS)}"
    )


def _varying_mask(
    names: tuple[str, ...], sources: dict[str, str], varying_slopes: Sequence[str] | None
) -> np.ndarray:
    if varying_slopes is None:
        return np.ones(len(names), dtype=bool)
    requested = set(varying_slopes)
    known = set(names) | set(sources.values())
    unknown = requested - known
    if unknown:
        name = sorted(unknown)[0]
        close = _close_matches(name, sorted(known))
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"varying slope {name!r} is not a unit covariate{hint}")
    return np.array(
        [name in requested or sources.get(name) in requested for name in names], dtype=bool
    )
