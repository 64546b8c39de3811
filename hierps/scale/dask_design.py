"""The validated design of a Dask DataFrame: the rules of the in-memory design, by aggregation.

:func:`build_dask_design` applies the validation, encoding and standardization rules of
:func:`hierps.design.build.build_design` (same checks, same order, same messages and
warnings) to a ``dask.dataframe.DataFrame`` without collecting its rows. Two passes over the
partitions do it:

1. a summary per partition — missing values (their count and first labels), values of the
   treatment that are not 0/1, treated and unit counts per group, the distinct
   ``(group, group covariates)`` rows, the levels of categorical unit covariates — combined
   in partition order on the driver;
2. the count, mean, sum of squared deviations, minimum and maximum of every encoded unit
   column, overall and in each arm, merged across partitions by Chan's update (exact to
   rounding, unlike sums of squares).

Everything per group (counts, group covariates) is small and held in memory; the unit rows
stay on the workers. The blocks the solver iterates over (the standardized controls, sorted
by group within each partition) are built and persisted by :meth:`DaskDesign.control_blocks`.

Differences from in-memory input: the index is not required to be unique (a Parquet
directory read without an index has one ``RangeIndex`` per partition; weights come back as a
Dask Series with the input's partitions, so they never need the labels), and an empty frame is
reported after the column checks rather than before.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hierps.design.build import (
    _MAX_LISTED,
    ColumnRoles,
    DesignViews,
    _check_constant_within_groups,
    _is_categorical,
    _is_zero_or_one,
    _level_name,
    _levels,
    _list_labels,
    _standardize_method,
    check_roles,
    covariate_fields,
    group_covariate_fields,
)
from hierps.design.standardize import Spread, scaling_from_spread
from hierps.exceptions import DataError, warn

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["DaskDesign", "UnitPlan", "build_dask_design"]


# ------------------------------------------------------------------------------------------
# The encoding plan: how a partition becomes rows of the design
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitPlan:
    """Everything a worker needs to turn a partition into design rows.

    ``columns`` lists the encoded unit columns as ``(source, kind, level)`` with kind
    ``"value"`` (a numeric column as float), ``"level"`` (one-hot indicator of ``level``) or
    ``"missing"`` (missingness indicator). ``center`` and ``scale`` are set once the
    standardization is known.
    """

    treatment: str
    group: str
    outcome: str | None
    groups: pd.Index
    group_categorical: bool
    columns: tuple[tuple[str, str, Any], ...]
    center: np.ndarray | None = None
    scale: np.ndarray | None = None

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        series = frame[self.group]
        if self.group_categorical:
            return pd.Categorical(series, categories=self.groups).codes.astype(np.int64)
        return self.groups.get_indexer(series)

    def treated(self, frame: pd.DataFrame) -> np.ndarray:
        series = frame[self.treatment]
        if pd.api.types.is_bool_dtype(series):
            return series.to_numpy(dtype=bool)
        return series.to_numpy(dtype=float) == 1.0

    def raw(self, frame: pd.DataFrame) -> np.ndarray:
        """The encoded unit columns (n, p) before standardization, NaN where missing."""
        out = np.empty((len(frame), len(self.columns)))
        for k, (source, kind, level) in enumerate(self.columns):
            series = frame[source]
            if kind == "value":
                out[:, k] = series.to_numpy(dtype=float, na_value=np.nan)
            elif kind == "level":
                out[:, k] = (series == level).to_numpy(dtype=float, na_value=0.0)
            else:
                out[:, k] = series.isna().to_numpy(dtype=float)
        return out

    def standardized(self, frame: pd.DataFrame) -> np.ndarray:
        """The unit rows of the design, exactly as :func:`build_design` standardizes them."""
        values = (self.raw(frame) - self.center) / self.scale
        return np.nan_to_num(values, nan=0.0)


# ------------------------------------------------------------------------------------------
# Pass 1: validation summaries
# ------------------------------------------------------------------------------------------


def _missing(frame: pd.DataFrame, column: str) -> tuple[int, list]:
    missing = frame[column].isna().to_numpy()
    return int(missing.sum()), list(frame.index[missing][:_MAX_LISTED])


def _summarize_partition(
    frame: pd.DataFrame, roles: ColumnRoles, level_columns: tuple[str, ...]
) -> dict[str, Any]:
    treatment = frame[roles.treatment]
    summary: dict[str, Any] = {
        "n": len(frame),
        "treatment_missing": _missing(frame, roles.treatment),
        "group_missing": _missing(frame, roles.group),
        "outcome_missing": None if roles.outcome is None else _missing(frame, roles.outcome),
        "unit_missing": {name: int(frame[name].isna().sum()) for name in roles.unit_covariates},
        "levels": {name: pd.unique(frame[name].dropna()) for name in level_columns},
    }
    if pd.api.types.is_bool_dtype(treatment):
        summary["bad_treatment"] = []
        arm = treatment.to_numpy(dtype=float)
    else:
        unique = pd.unique(treatment.dropna())
        summary["bad_treatment"] = [value for value in unique if not _is_zero_or_one(value)]
        arm = np.full(len(frame), np.nan)
        if not summary["bad_treatment"]:
            arm = treatment.to_numpy(dtype=float, na_value=np.nan)
    # Distinct (group, group covariate) rows in order of first appearance; the number of
    # units and treated units of each group.
    keys = [roles.group, *roles.group_covariates]
    summary["group_rows"] = frame[keys].drop_duplicates()
    counts = pd.DataFrame({"group": frame[roles.group].to_numpy(), "treated": arm})
    summary["group_counts"] = counts.groupby("group", sort=False, dropna=True).agg(
        units=("treated", "size"), treated=("treated", "sum")
    )
    return summary


def _first_labels(parts: list[tuple[int, list]]) -> tuple[int, list]:
    total = sum(count for count, _ in parts)
    labels = [label for _, part in parts for label in part][:_MAX_LISTED]
    return total, labels


def _labels_message(total: int, labels: list) -> str:
    """``_list_labels`` of all missing rows, from their count and first labels."""
    shown = ", ".join(
        repr(label.item() if isinstance(label, np.generic) else label) for label in labels
    )
    return shown + (f" and {total - _MAX_LISTED} more" if total > _MAX_LISTED else "")


# ------------------------------------------------------------------------------------------
# Pass 2: moments of the encoded unit columns, overall and per arm
# ------------------------------------------------------------------------------------------


@dataclass
class Moments:
    """Count, mean, sum of squared deviations, minimum and maximum of columns (one arm)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        present = ~np.isnan(values)
        count = present.sum(axis=0).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(values, axis=0) / count
            m2 = np.nansum((values - mean) ** 2, axis=0)
        filled = np.where(present, values, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            low, high = (
                np.nanmin(filled, axis=0, initial=np.inf),
                np.nanmax(filled, axis=0, initial=-np.inf),
            )
        return cls(count, np.where(count > 0, mean, 0.0), np.where(count > 0, m2, 0.0), low, high)

    def merge(self, other: Moments) -> Moments:
        """Chan et al.'s pairwise update of the mean and the sum of squared deviations."""
        count = self.count + other.count
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(count > 0, other.count / count, 0.0)
        delta = other.mean - self.mean
        return Moments(
            count,
            self.mean + delta * share,
            self.m2 + other.m2 + delta**2 * self.count * share,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
        )

    def spread(self, names: Sequence[str]) -> Spread:
        """The :class:`~hierps.design.standardize.Spread` these moments imply (same rules)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.count > 0, self.mean, np.nan)
            sd = np.where(self.count >= 2, np.sqrt(self.m2 / (self.count - 1)), np.nan)
        sd = np.where((self.count >= 2) & (self.low == self.high), 0.0, sd)
        index = pd.Index(list(names))
        return Spread(
            pd.Series(self.count, index=index),
            pd.Series(mean, index=index),
            pd.Series(sd, index=index),
        )


def _partition_moments(frame: pd.DataFrame, plan: UnitPlan) -> tuple[Moments, Moments]:
    values, treated = plan.raw(frame), plan.treated(frame)
    return Moments.of(values[treated]), Moments.of(values[~treated])


def _merge_pairs(a: tuple[Moments, Moments], b: tuple[Moments, Moments]) -> tuple[Moments, Moments]:
    return a[0].merge(b[0]), a[1].merge(b[1])


# ------------------------------------------------------------------------------------------
# The design
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class DaskDesign(DesignViews):
    """A design whose unit rows stay in a Dask DataFrame; per-group arrays in memory.

    Offers the attributes of :class:`~hierps.design.build.Design` that do not hold one
    entry per unit (``groups``, ``unit_names``, ``group_matrix``, ``unit_scaling``, …); the
    unit rows are reached through :attr:`frame` and :attr:`plan`.
    """

    frame: dd.DataFrame
    plan: UnitPlan
    n_units: int
    treated_per_group: np.ndarray
    units_per_group: np.ndarray

    #: Base weights are not supported on Dask input (the model refuses a weights column).
    base_weights = None

    @property
    def _summary_kind(self) -> str:
        return f" (Dask, {self.frame.npartitions} partitions)"

    @property
    def outcome(self) -> str | None:
        """The outcome column (its values stay on the workers)."""
        return self.roles.outcome

    @functools.cached_property
    def control_blocks(self) -> list:
        """The persisted solver blocks, one per partition (see
        :func:`hierps.scale.dask_solver.control_block`); built on first use."""
        from hierps.scale.dask_solver import persist_blocks

        return persist_blocks(self)


def build_dask_design(
    frame: dd.DataFrame, roles: ColumnRoles, standardize: bool | str
) -> DaskDesign:
    """Validate a Dask DataFrame against the column roles and standardize, by aggregation.

    The same rules, errors and warnings as :func:`hierps.design.build.build_design`; see the
    module docstring for the two differences (index uniqueness, order of the empty check).
    """
    import dask

    method = _standardize_method(standardize)
    meta = frame._meta
    check_roles(meta, roles)
    categorical = set(roles.categorical)
    level_columns = tuple(
        name for name in roles.unit_covariates if _is_categorical(meta[name], name in categorical)
    )
    names = [roles.treatment, roles.group, roles.outcome, *roles.unit_covariates]
    used = [c for c in dict.fromkeys([*names, *roles.group_covariates]) if c is not None]
    frame = frame[used]
    parts = frame.to_delayed()
    summarize = dask.delayed(_summarize_partition, pure=True)
    (summaries,) = dask.compute([summarize(part, roles, level_columns) for part in parts])

    n_units = sum(s["n"] for s in summaries)
    if n_units == 0:
        raise DataError("the data frame is empty")
    _check_treatment(roles.treatment, meta, summaries)
    missing = _first_labels([s["group_missing"] for s in summaries])
    if missing[0]:
        raise DataError(
            f"group column {roles.group!r} has missing ids in rows {_labels_message(*missing)}"
        )
    if roles.outcome is not None:
        series = meta[roles.outcome]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise DataError(
                f"outcome column {roles.outcome!r} must be numeric; it has dtype "
                f"{_dtype_name(series.dtype)}"
            )
        missing = _first_labels([s["outcome_missing"] for s in summaries])
        if missing[0]:
            raise DataError(
                f"outcome column {roles.outcome!r} has missing values in rows "
                f"{_labels_message(*missing)}; drop those rows explicitly "
                f"(e.g. data.dropna(subset=[{roles.outcome!r}])) if that is what you intend"
            )
    group_rows = pd.concat([s["group_rows"] for s in summaries]).drop_duplicates()
    _check_constant_within_groups(group_rows, roles.group, roles.group_covariates)

    group_series = group_rows[roles.group]
    labels = _levels(group_series)
    groups = pd.Index(labels, name=roles.group, tupleize_cols=False)
    group_categorical = isinstance(group_series.dtype, pd.CategoricalDtype)
    counts = pd.concat([s["group_counts"] for s in summaries]).groupby(level=0, sort=False).sum()
    counts = counts.reindex(groups, fill_value=0)
    n_treated = counts["treated"].to_numpy(dtype=float)
    n_per_group = counts["units"].to_numpy(dtype=np.int64)
    # Groups without controls are named when a fit needs their effect (as in memory).

    columns, unit_sources = _unit_columns(meta, roles, categorical, summaries, level_columns)
    plan = UnitPlan(
        roles.treatment, roles.group, roles.outcome, groups, group_categorical, tuple(columns)
    )
    unit_names = [_encoded_name(column) for column in columns]
    moments = dask.delayed(_partition_moments, pure=True)
    pairs = [moments(part, plan) for part in parts]
    while len(pairs) > 1:  # a tree of merges: the driver receives one pair
        pairs = [
            dask.delayed(_merge_pairs)(*pairs[i : i + 2]) if i + 1 < len(pairs) else pairs[i]
            for i in range(0, len(pairs), 2)
        ]
    ((treated_moments, control_moments),) = dask.compute(pairs[0])
    overall = treated_moments.merge(control_moments)
    unit_scaling, dropped = _unitscaling(
        overall.spread(unit_names),
        treated_moments.spread(unit_names),
        control_moments.spread(unit_names),
        method,
    )
    keep = [k for k, name in enumerate(unit_names) if name not in dropped]
    plan = UnitPlan(
        roles.treatment,
        roles.group,
        roles.outcome,
        groups,
        group_categorical,
        tuple(columns[k] for k in keep),
        unit_scaling["center"].to_numpy(),
        unit_scaling["scale"].to_numpy(),
    )
    unit_names = [unit_names[k] for k in keep]

    # Group covariates: one row per group, as in build_design.
    first = group_rows.drop_duplicates(subset=[roles.group]).set_index(roles.group, drop=False)
    first = first.loc[list(groups)].reset_index(drop=True)
    return DaskDesign(
        **covariate_fields(roles, method, unit_names, unit_sources, unit_scaling),
        **group_covariate_fields(
            roles, method, groups, first, (n_treated, n_per_group - n_treated)
        ),
        frame=frame,
        plan=plan,
        n_units=n_units,
        treated_per_group=n_treated,
        units_per_group=n_per_group,
    )


def _dtype_name(dtype: object) -> object:
    """The dtype as pandas shows it for in-memory text: Dask turns pandas' default ``str``
    columns into ``string[pyarrow]`` (shown ``string``), which the user never chose."""
    return "str" if isinstance(dtype, pd.StringDtype) else dtype


def _unitscaling(
    overall: Spread, treated: Spread, control: Spread, method: str
) -> tuple[pd.DataFrame, list[str]]:
    # One call deeper, as scaling is in build_design: the warnings point at the user's call.
    return scaling_from_spread(overall, treated, control, method=method, level="unit")


def _check_treatment(column: str, meta: pd.DataFrame, summaries: list[dict]) -> None:
    total, labels = _first_labels([s["treatment_missing"] for s in summaries])
    if total:
        raise DataError(
            f"treatment column {column!r} has missing values in rows "
            f"{_labels_message(total, labels)}"
        )
    bad = pd.unique(
        pd.Series([value for s in summaries for value in s["bad_treatment"]], dtype=object)
    )
    if len(bad):
        raise DataError(
            f"treatment column {column!r} must be binary (0/1 or True/False); "
            f"found values {_list_labels(sorted(bad, key=str))}"
        )
    n_treated = sum(float(s["group_counts"]["treated"].sum()) for s in summaries)
    n_units = sum(s["n"] for s in summaries)
    if n_treated == 0:
        raise DataError(f"treatment column {column!r} has no treated units (all are 0)")
    if n_treated == n_units:
        raise DataError(f"treatment column {column!r} has no control units (all are 1)")


def _encoded_name(column: tuple[str, str, Any]) -> str:
    source, kind, level = column
    if kind == "level":
        return _level_name(source, level)
    return f"{source}_missing" if kind == "missing" else source


def _unit_columns(
    meta: pd.DataFrame,
    roles: ColumnRoles,
    categorical: set[str],
    summaries: list[dict],
    level_columns: tuple[str, ...],
) -> tuple[list[tuple[str, str, Any]], dict[str, str]]:
    """The encoded unit columns of ``_encode``, from the global levels and missing counts."""
    columns: list[tuple[str, str, Any]] = []
    sources: dict[str, str] = {}

    def add(column: tuple[str, str, Any], source: str) -> None:
        encoded = _encoded_name(column)
        if encoded in sources:
            raise DataError(
                f"covariates {sources[encoded]!r} and {source!r} both encode to a column named "
                f"{encoded!r}; rename one of them"
            )
        columns.append(column)
        sources[encoded] = source

    for name in roles.unit_covariates:
        n_missing = sum(s["unit_missing"][name] for s in summaries)
        if name in level_columns:
            values = [s["levels"][name] for s in summaries]
            union = pd.unique(np.concatenate([np.asarray(v, dtype=object) for v in values]))
            dtype = meta[name].dtype
            known = isinstance(dtype, pd.CategoricalDtype) and (
                "__UNKNOWN_CATEGORIES__" not in dtype.categories
            )
            union = pd.Series(union, dtype=dtype if known else object)
            for level in _levels(union):
                add((name, "level", level), name)
        else:
            add((name, "value", None), name)
        if n_missing:
            indicator = f"{name}_missing"
            add((name, "missing", None), name)
            warn(
                f"covariate {name!r} has {n_missing} missing values (in rows): added "
                f"the indicator {indicator!r} and set the missing entries to the centre used for "
                f"standardization (the treated mean by default)"
            )
    return columns, sources
