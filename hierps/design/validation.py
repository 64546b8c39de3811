"""Checks of the values in a frame before they become a design.

:func:`hierps.design.build.build_design` calls these after it has found every column it was
given. The rules (documented in ``docs/bad-input.md``):

- A column named by a role must appear once in the frame.
- ``±inf`` is rejected in every role (treatment, group, outcome, covariates), naming the column
  and the rows: an infinite value is a data error, not a missing one, and turning it into a
  missingness indicator would hide it.
- Group ids must be of one kind: ``1`` and ``"1"`` would be two groups printed alike.
- A covariate must be numeric, boolean, or categorical. A text column is taken as categorical
  only when it looks like one: text holding numbers, values of mixed types, and ID-like text
  (more than :data:`MAX_AUTO_LEVELS` distinct values, or a distinct value in nearly every row)
  are rejected unless the column is declared in ``categorical``; so are dates, durations,
  complex numbers and Python objects. A categorical column with more than
  :data:`MAX_AUTO_LEVELS` levels is kept but warned about.
- A numeric covariate whose spread overflows or underflows double precision (``1e200``,
  ``1e-320``) cannot be standardized and is rejected.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from hierps.exceptions import DataError, warn

__all__ = [
    "MAX_AUTO_LEVELS",
    "check_covariate_values",
    "check_duplicated_columns",
    "check_finite",
    "check_group_ids",
    "check_spread",
    "constant_columns",
]

#: Text columns with more distinct values than this are taken for IDs unless declared
#: categorical; declared categoricals with more levels get a warning.
MAX_AUTO_LEVELS = 50
_SHOWN = 10
# Below this a standard deviation is subnormal: dividing by it loses every digit.
_TINY = np.finfo(float).tiny


def _labels(labels: Sequence[Hashable]) -> str:
    labels = list(labels)
    shown = ", ".join(
        repr(label.item() if isinstance(label, np.generic) else label) for label in labels[:_SHOWN]
    )
    return shown + (f" and {len(labels) - _SHOWN} more" if len(labels) > _SHOWN else "")


def check_duplicated_columns(frame: pd.DataFrame, names: Sequence[Hashable]) -> None:
    """Reject role columns that appear more than once in the frame."""
    duplicated = frame.columns[frame.columns.duplicated()].unique()
    used = [name for name in dict.fromkeys(names) if name in set(duplicated)]
    if used:
        counts = ", ".join(f"{name!r} ({int((frame.columns == name).sum())}×)" for name in used)
        raise DataError(
            f"the data frame has duplicated column names {counts}; a column must appear once "
            f"(rename or drop the copies)"
        )


def _infinite_rows(series: pd.Series) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        if series.dtype != object:
            return np.zeros(len(series), dtype=bool)
        # Text columns may still hold float('inf') objects.
        return series.map(lambda v: isinstance(v, float | np.floating) and np.isinf(v)).to_numpy(
            dtype=bool
        )
    values = series.to_numpy(dtype=float, na_value=np.nan)
    return np.isinf(values)


def check_finite(frame: pd.DataFrame, column: Hashable, role: str) -> None:
    """Reject ``±inf`` in a column, naming the rows."""
    series = frame[column]
    if pd.api.types.is_complex_dtype(series):
        raise DataError(f"{role} column {column!r} holds complex numbers; give a real column")
    infinite = _infinite_rows(series)
    if infinite.any():
        raise DataError(
            f"{role} column {column!r} has infinite values in rows "
            f"{_labels(frame.index[infinite])}; replace them (with NaN to mark them missing) "
            f"or drop those rows"
        )


def check_group_ids(frame: pd.DataFrame, column: Hashable) -> None:
    """Group ids must be finite and of one kind (not ``1`` next to ``"1"``)."""
    check_finite(frame, column, "group")
    series = frame[column]
    if series.dtype == object:
        values = series.dropna()
        kinds = values.map(_kind)
        if kinds.nunique() > 1:
            examples = ", ".join(
                f"{values[kinds == kind].iloc[0]!r} ({kind})" for kind in kinds.unique()[:4]
            )
            raise DataError(
                f"group column {column!r} mixes ids of different types ({examples}); "
                f"convert it to one type, e.g. data[{column!r}].astype(str)"
            )


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, int | float | np.integer | np.floating):
        return "number"
    return "other"


def _as_number(value: object) -> bool:
    try:
        float(str(value).strip().replace(",", ""))
    except ValueError:
        return False
    return True


def check_covariate_values(
    frame: pd.DataFrame, names: Sequence[Hashable], categorical: set, level: str
) -> None:
    """Reject covariates that cannot be encoded as numbers or categories; warn about very
    many levels. ``level`` is ``"unit"`` or ``"group"``."""
    for name in names:
        series = frame[name]
        role = f"{level} covariate"
        declared = name in categorical
        if isinstance(series.dtype, pd.CategoricalDtype) or declared:
            _check_levels(series, name, role)
            continue
        dtype = series.dtype
        if (
            pd.api.types.is_datetime64_any_dtype(dtype)
            or pd.api.types.is_timedelta64_dtype(dtype)
            or isinstance(dtype, pd.PeriodDtype | pd.IntervalDtype)
        ):
            raise DataError(
                f"{role} {name!r} has dtype {dtype} ({series.nunique()} distinct values); convert "
                f"it to a number (e.g. days since a date) or declare it in categorical"
            )
        if pd.api.types.is_complex_dtype(dtype):
            raise DataError(f"{role} {name!r} holds complex numbers; give a real column")
        if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            check_finite(frame, name, role)
            continue
        _check_text(series, name, role)


def _check_levels(series: pd.Series, name: Hashable, role: str) -> None:
    try:
        n_levels = series.nunique()
    except TypeError:
        raise DataError(
            f"{role} {name!r} holds unhashable values such as "
            f"{series.dropna().iloc[0]!r}; give numbers or text"
        ) from None
    if n_levels > MAX_AUTO_LEVELS:
        warn(
            f"categorical {role} {name!r} has {n_levels} levels: it adds {n_levels} columns "
            f"(each with a slope, varying by group unless varying_slopes says otherwise); "
            f"consider grouping rare levels"
        )


def _check_text(series: pd.Series, name: Hashable, role: str) -> None:
    values = series.dropna()
    kinds = values.map(_kind)
    if (kinds == "other").any():
        example = values[kinds == "other"].iloc[0]
        raise DataError(
            f"{role} {name!r} holds values of type {type(example).__name__} (e.g. {example!r}); "
            f"give numbers, booleans or text categories"
        )
    n_distinct = values.nunique()
    hint = f"; declare it in categorical=[{name!r}] if it really is a category"
    if kinds.nunique() > 1:
        raise DataError(
            f"{role} {name!r} mixes numbers and text ({n_distinct} distinct values){hint}, or "
            f"convert it with pandas.to_numeric"
        )
    if len(values) and values.map(_as_number).all():
        raise DataError(
            f"{role} {name!r} holds numbers stored as text ({n_distinct} distinct values, e.g. "
            f"{values.iloc[0]!r}); convert it with pandas.to_numeric(data[{name!r}]){hint}"
        )
    nearly_unique = len(values) >= 20 and n_distinct >= 0.9 * len(values)
    if n_distinct > MAX_AUTO_LEVELS or nearly_unique:
        raise DataError(
            f"{role} {name!r} is text with {n_distinct} distinct values in {len(values)} rows: "
            f"it looks like an ID or free text, which would become {n_distinct} one-hot "
            f"columns{hint}"
        )


def check_spread(values: pd.DataFrame, sources: dict, level: str) -> None:
    """Reject encoded columns whose standard deviation overflows or underflows.

    ``values`` are the encoded (not yet standardized) columns with NaN where missing.
    """
    for column in values.columns:
        data = values[column].to_numpy(dtype=float)
        data = data[~np.isnan(data)]
        if len(data) < 2 or np.all(data == data[0]):
            continue
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            spread = float(np.std(data, ddof=1))
        source = sources.get(column, column)
        largest = float(np.max(np.abs(data)))
        if not np.isfinite(spread):
            raise DataError(
                f"{level} covariate {source!r} cannot be standardized: its standard deviation "
                f"overflows (largest |value| {largest:.3g}); rescale or transform it (e.g. "
                f"divide by a power of ten, or take logs)"
            )
        if spread < _TINY:
            raise DataError(
                f"{level} covariate {source!r} cannot be standardized: its standard deviation "
                f"underflows to {spread:.3g} (largest |value| {largest:.3g}); rescale it "
                f"(e.g. multiply by a power of ten)"
            )


def constant_columns(spread: pd.Series, warning: str) -> list[str]:
    """The columns whose spread is zero (to 1e-12), each named once in one warning.

    ``warning`` is a message with a ``{columns}`` field, filled with the quoted names.
    """
    constant = [str(name) for name in spread.index if not spread[name] > 1e-12]
    if constant:
        warn(warning.format(columns=", ".join(repr(name) for name in constant)))
    return constant
