"""Balance constraints: a port of natstrat's ``generate_constraints`` and ``stand``.

A constraint column is a standardized covariate restricted to one population (all units, or
one level of a right-hand-side term): it equals the covariate divided by its treated (or
pooled) standard deviation inside the population and 0 outside it. Each column carries an
importance built from the formula coefficients, ``weight_by_size`` and ``autogen_missing``.
Column names and order follow natstrat 2.0.1 exactly, e.g. ``age_1``,
``povertyr_missing_strata< 40 years:Male``, ``race.Mexican American_1``, ``colorBlue_category2``.

Departures from natstrat, all fixing its defects:

* ``- 1`` (in any position) removes the intercept constraints; ``0`` keeps them with importance
  0, as natstrat does.
* A right-hand-side level without treated units, or without any units, is skipped with a
  :class:`~hierps.exceptions.HierpsWarning` naming it (natstrat errors); ``weight_by_size``
  then averages over the remaining levels.
* ``.`` works on the right-hand side (every factor, character or boolean column except the
  covariate itself); on the left-hand side it leaves out the right-hand-side columns.
* Units with a missing value of a right-hand-side variable belong to none of its levels (with a
  warning) instead of the whole term being dropped.
* A covariate with no variance in any treatment group (e.g. an unused factor level) yields no
  constraints and a warning, instead of columns of ``NaN``/``Inf``.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from hierps.exceptions import ArgumentError, DataError, FormulaError, warn
from hierps.natstrat.balance_formula import BalanceFormula, RhsTerm, parse_balance_formula

__all__ = ["Constraints", "Standardized", "generate_constraints", "stand"]

DenomVariance = Literal["treated", "pooled"]
_Kind = Literal["factor", "character", "logical", "numeric"]


@dataclass(frozen=True)
class Constraints:
    """Balance constraints and their importances.

    Attributes
    ----------
    X
        One column per constraint (natstrat's names and order), one row per unit; the index
        is the index of ``data``. ``NaN`` where the covariate is missing inside the
        constraint's population.
    importances
        Importance of each constraint, indexed by the column names of ``X``.
    """

    X: pd.DataFrame
    importances: pd.Series


@dataclass(frozen=True)
class Standardized:
    """Result of :func:`stand`.

    Attributes
    ----------
    covariate
        The covariate divided by ``scale`` (``NaN`` stays ``NaN``).
    missingness
        The missingness indicator divided by ``missingness_scale``, or ``None`` when
        ``autogen_missing`` is ``None`` or nothing is missing.
    scale
        Standard deviation used for the covariate.
    missingness_scale
        Standard deviation used for the missingness indicator, or ``None``.
    """

    covariate: np.ndarray
    missingness: np.ndarray | None
    scale: float
    missingness_scale: float | None


# --- standardization ------------------------------------------------------------------------


def stand(
    z: Any,
    x: Any,
    denom_variance: DenomVariance = "treated",
    treated: Any = 1,
    autogen_missing: float | None = 50,
) -> Standardized:
    """Standardize a covariate for a balance constraint, as ``natstrat::stand`` does.

    Parameters
    ----------
    z
        Treatment of each unit (array-like); any number of groups, no missing values.
    x
        Numeric or boolean covariate of the same length; ``NaN`` marks missing values.
    denom_variance
        ``"treated"``: divide by the standard deviation among treated units, falling back
        to ``"pooled"`` with a :class:`HierpsWarning` when it is zero; ``"pooled"``: divide
        by the square root of the average of the treatment groups' variances.
    treated
        The value of ``z`` that marks treated units.
    autogen_missing
        ``None`` to skip the missingness indicator; otherwise (any number) the indicator
        ``isnan(x)`` is standardized the same way and returned when something is missing.

    Returns
    -------
    Standardized
        The standardized covariate and missingness indicator with the scales used.

    Raises
    ------
    DataError
        If ``z`` and ``x`` differ in length, ``z`` has missing values, ``treated`` is not a
        value of ``z``, ``x`` is not numeric, or ``x`` has no variance in any group.
    """
    _check_options(denom_variance, 0.0, autogen_missing)
    values = _numeric_values(x, "x")
    groups, is_treated = _treatment_groups(z, treated, len(values), min_groups=1)
    label = str(x.name) if isinstance(x, pd.Series) and x.name is not None else "x"
    result = _standardize(values, groups, is_treated, denom_variance, autogen_missing, label)
    if result is None:
        raise DataError(f"`{label}` has no variance in any treatment group; cannot standardize")
    return result


def _sample_variance(values: np.ndarray) -> float:
    """Sample variance ignoring NaN; 0 with fewer than two values (natstrat maps R's NA to 0)."""
    finite = values[~np.isnan(values)]
    if finite.size < 2:
        return 0.0
    return float(finite.var(ddof=1))


def _standardize(
    x: np.ndarray,
    groups: Sequence[np.ndarray],
    is_treated: np.ndarray,
    denom_variance: DenomVariance,
    autogen_missing: float | None,
    label: str,
) -> Standardized | None:
    """Core of :func:`stand`; returns ``None`` for a covariate constant within every group."""
    pooled = float(np.sqrt(np.mean([_sample_variance(x[g]) for g in groups])))
    if pooled == 0.0:
        return None
    scale = pooled
    if denom_variance == "treated":
        treated_sd = float(np.sqrt(_sample_variance(x[is_treated])))
        if treated_sd > 0.0:
            scale = treated_sd
        else:
            warn(
                f"`{label}` has no variance among treated units; it is standardized by the "
                "pooled standard deviation (the average of the group variances) instead."
            )
            # natstrat switches the whole covariate to pooled, missingness included.
            denom_variance = "pooled"

    missing = np.isnan(x)
    if autogen_missing is None or not missing.any():
        return Standardized(x / scale, None, scale, None)
    indicator = missing.astype(float)
    miss_scale = 0.0
    if denom_variance == "treated":
        miss_scale = float(np.sqrt(_sample_variance(indicator[is_treated])))
    if miss_scale == 0.0:
        miss_scale = float(np.sqrt(np.mean([_sample_variance(indicator[g]) for g in groups])))
    if miss_scale == 0.0:
        warn(
            f"Missingness of `{label}` is constant within each treatment group; no "
            "missingness constraint is generated for it."
        )
        return Standardized(x / scale, None, scale, None)
    return Standardized(x / scale, indicator / miss_scale, scale, miss_scale)


# --- input checks ---------------------------------------------------------------------------


def _check_options(
    denom_variance: str, weight_by_size: float, autogen_missing: float | None
) -> None:
    if denom_variance not in ("treated", "pooled"):
        raise ArgumentError(f"denom_variance must be 'treated' or 'pooled', got {denom_variance!r}")
    if not 0.0 <= weight_by_size <= 1.0:
        raise ArgumentError(f"weight_by_size must be between 0 and 1, got {weight_by_size!r}")
    if autogen_missing is not None and not (np.isfinite(autogen_missing) and autogen_missing >= 0):
        raise ArgumentError(
            f"autogen_missing must be None or a non-negative number, got {autogen_missing!r}"
        )


def _treatment_groups(
    z: Any, treated: Any, n: int, *, min_groups: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Masks of each treatment group (sorted levels) and of the treated group."""
    z_values = z.to_numpy() if isinstance(z, pd.Series | pd.Index) else np.asarray(z)
    if z_values.ndim != 1:
        raise DataError(f"z must be one-dimensional, got shape {z_values.shape}")
    if len(z_values) != n:
        raise DataError(f"z has {len(z_values)} entries but there are {n} units")
    if pd.isna(z_values).any():
        raise DataError("z has missing values")
    codes, uniques = pd.factorize(z_values, sort=True)
    levels = list(uniques)
    if len(levels) < min_groups:
        raise DataError(
            f"z must have at least {min_groups} distinct values (treatment groups), found "
            f"{len(levels)}: {levels[:10]}"
        )
    matches = [k for k, level in enumerate(levels) if level == treated]
    if not matches:
        raise DataError(f"treated={treated!r} is not among the values of z: {levels[:10]}")
    groups = [codes == k for k in range(len(levels))]
    return groups, groups[matches[0]]


def _kind(series: pd.Series, name: str) -> _Kind:
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "factor"
    if pd.api.types.is_bool_dtype(dtype):
        return "logical"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        if pd.api.types.infer_dtype(series, skipna=True) == "boolean":
            return "logical"
        return "character"
    raise DataError(
        f"column {name!r} has dtype {dtype}; balance formulas need numeric, boolean, "
        "categorical or string columns"
    )


def _numeric_values(x: Any, name: str) -> np.ndarray:
    series = x if isinstance(x, pd.Series) else pd.Series(np.asarray(x))
    kind = _kind(series, name)
    if kind not in ("numeric", "logical"):
        raise DataError(f"`{name}` must be numeric or boolean to be standardized")
    return series.to_numpy(dtype=float, na_value=np.nan)


def _r_label(value: Any) -> str:
    """Format a level as R's ``as.character`` would (TRUE/FALSE, 1 rather than 1.0)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _levels(series: pd.Series, kind: _Kind) -> tuple[list[str], np.ndarray]:
    """Level labels (in R's order) and integer codes (-1 for missing) of a categorical column."""
    if kind == "factor":
        return [_r_label(c) for c in series.cat.categories], series.cat.codes.to_numpy()
    if kind == "logical":
        categories: list[Any] = [False, True]
    else:
        # R's factor() sorts character levels; code-point order equals the C locale.
        categories = sorted(pd.unique(series.dropna()), key=_r_label)
    codes = pd.Categorical(series, categories=categories).codes
    return [_r_label(c) for c in categories], np.asarray(codes)


# --- formula expansion ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Covariate:
    name: str
    source: str
    values: np.ndarray
    weight: float


@dataclass(frozen=True)
class _Population:
    name: str
    term: RhsTerm | None  # None for the overall ("1") population
    indicator: np.ndarray | None  # None means every unit
    weight: float


def _expand_lhs(
    formula: BalanceFormula, data: pd.DataFrame, keys: dict[str, Hashable]
) -> list[_Covariate]:
    """Covariates to balance; factor/character dummies go last, in natstrat's order."""
    plain: list[_Covariate] = []
    dummies: list[_Covariate] = []
    for name, weight in formula.lhs:
        series = data[keys[name]]
        kind = _kind(series, name)
        if kind in ("numeric", "logical"):
            values = series.to_numpy(dtype=float, na_value=np.nan)
            plain.append(_Covariate(name, name, values, weight))
            continue
        labels, codes = _levels(series, kind)
        # caret::dummyVars separates factor levels with '.', but not character levels.
        sep = "." if kind == "factor" else ""
        missing = codes < 0
        for k, label in enumerate(labels):
            values = np.where(missing, np.nan, (codes == k).astype(float))
            dummies.append(_Covariate(f"{name}{sep}{label}", name, values, weight))
    return plain + dummies


def _expand_rhs(
    formula: BalanceFormula,
    data: pd.DataFrame,
    keys: dict[str, Hashable],
    is_treated: np.ndarray,
    weight_by_size: float,
) -> list[_Population]:
    """Populations (level indicators) of every right-hand-side term, with their weights."""
    populations: list[_Population] = []
    if formula.intercept is not None:
        populations.append(_Population("1", None, None, formula.intercept))
    for term in formula.rhs:
        parts = _term_levels(term, data, keys)
        if parts is None:
            continue
        labels, codes = parts
        in_data = codes >= 0
        n_level = np.bincount(codes[in_data], minlength=len(labels))
        n_treated = np.bincount(codes[in_data & is_treated], minlength=len(labels))
        kept = []
        for k, label in enumerate(labels):
            if n_level[k] == 0:
                reason = "is not used by any unit"
            elif n_treated[k] == 0:
                reason = "has no treated units"
            else:
                kept.append(k)
                continue
            warn(f"Level {label!r} of `{term.name}` {reason}; no constraints are generated for it.")
        if not kept:
            continue
        mean_treated = float(np.mean(n_treated[kept]))
        for k in kept:
            # weight_by_size = 1 gives every level the weight of an average-sized level.
            size = float(n_treated[k])
            multiplier = (size + weight_by_size * (mean_treated - size)) / size
            populations.append(
                _Population(f"{term.name}{labels[k]}", term, codes == k, term.weight * multiplier)
            )
    return populations


def _term_levels(
    term: RhsTerm, data: pd.DataFrame, keys: dict[str, Hashable]
) -> tuple[list[str], np.ndarray] | None:
    """Labels and codes of a term's levels; ``None`` (with a warning) for unusable terms."""
    per_variable = []
    for variable in term.variables:
        series = data[keys[variable]]
        kind = _kind(series, variable)
        if kind == "numeric":
            values = series.to_numpy(dtype=float, na_value=np.nan)
            finite = values[~np.isnan(values)]
            if len(term.variables) == 1 and np.isin(finite, (0.0, 1.0)).all():
                # natstrat uses a 0/1 numeric column directly as the indicator of one
                # population named after the column.
                per_variable.append(([""], np.where(values == 1.0, 0, -1), np.isnan(values)))
                continue
            warn(
                f"`{term.name}` is excluded from the right-hand side: `{variable}` is numeric, "
                "and populations need factor, character or boolean columns."
            )
            return None
        labels, codes = _levels(series, kind)
        per_variable.append((labels, codes, codes < 0))

    missing = np.logical_or.reduce([m for _, _, m in per_variable])
    if missing.any():
        warn(
            f"{int(missing.sum())} units have a missing value of `{term.name}` and belong to "
            "none of its levels."
        )
    # R's `a:b` on factors: levels "a_level:b_level" with the first factor varying slowest.
    labels = [":".join(combo) for combo in itertools.product(*(p[0] for p in per_variable))]
    codes = np.zeros(len(data), dtype=np.int64)
    for level_labels, level_codes, _ in per_variable:
        codes = codes * len(level_labels) + level_codes
    codes[missing] = -1
    return labels, codes


# --- main entry point -----------------------------------------------------------------------


def generate_constraints(
    balance_formulas: Iterable[str] | str,
    z: Any,
    data: pd.DataFrame,
    default_rhs: str | None = None,
    weight_by_size: float = 0.0,
    denom_variance: DenomVariance = "treated",
    treated: Any = 1,
    autogen_missing: float | None = 50,
) -> Constraints:
    """Generate standardized balance constraints, as ``natstrat::generate_constraints`` does.

    Parameters
    ----------
    balance_formulas
        Formulas ``"lhs ~ rhs"`` (R syntax): the left-hand side lists covariates to balance
        (``.`` for all columns except the right-hand-side ones, ``- x`` to leave one out), the
        right-hand side lists factor, character or boolean columns (or interactions ``a:b``,
        or ``.``) whose levels define the populations within which to balance. ``1`` (the
        default), a positive number, ``0`` or ``- 1`` set the weight of, or remove, the
        overall constraints. Numeric coefficients (``2 * race``) weight the constraints of a
        term. An entry without ``~`` is a left-hand side balanced according to
        ``default_rhs``.
    z
        Treatment group of each unit (array-like with at least two distinct values). With
        more than two groups the constraint matrix is the same as with two: the groups enter
        only through the standardization (``denom_variance``) and through ``weight_by_size``,
        which counts the ``treated`` group's units in each level.
    data
        One row per unit, holding every column the formulas use.
    default_rhs
        Right-hand side for entries without ``~``.
    weight_by_size
        Between 0 and 1. With 0, imbalance in a level counts in absolute terms; with 1, each
        level's constraints are reweighted by (mean treated count) / (its treated count),
        so that every level matters equally.
    denom_variance
        ``"treated"`` (treated standard deviation, falling back to pooled with a warning when
        it is zero) or ``"pooled"`` (square root of the unweighted average of the variances of
        all treatment groups).
    treated
        The value of ``z`` that marks treated units.
    autogen_missing
        ``None``, or the importance multiplier of the missingness constraints generated for
        every covariate with missing values.

    Returns
    -------
    Constraints
        ``X`` (constraint columns indexed like ``data``) and ``importances``.

    Raises
    ------
    FormulaError
        If a formula is malformed, names an unknown column, or two constraints get the same
        name.
    DataError
        If ``data`` is not a data frame or has duplicate column names, ``z`` has fewer than
        two distinct values or does not contain ``treated``, or a column has an unusable
        dtype.

    Warns
    -----
    HierpsWarning
        When a covariate falls back to the pooled standard deviation or has no variance, a
        right-hand-side level has no (treated) units, or a right-hand-side term is unusable.
    """
    _check_options(denom_variance, weight_by_size, autogen_missing)
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if data.columns.duplicated().any():
        duplicated = data.columns[data.columns.duplicated()].unique().tolist()
        raise DataError(f"data has duplicate column names: {duplicated[:5]}")
    groups, is_treated = _treatment_groups(z, treated, len(data), min_groups=2)
    if isinstance(balance_formulas, str):
        balance_formulas = [balance_formulas]

    keys: dict[str, Hashable] = {str(c): c for c in data.columns}
    columns = list(keys)

    def is_categorical(name: str) -> bool:
        return _kind(data[keys[name]], name) != "numeric"

    names: list[str] = []
    values: list[np.ndarray] = []
    importances: list[float] = []
    for entry in balance_formulas:
        formula = parse_balance_formula(entry, default_rhs, columns, is_categorical)
        populations = _expand_rhs(formula, data, keys, is_treated, weight_by_size)
        warned_self: set[tuple[str, str]] = set()
        for covariate in _expand_lhs(formula, data, keys):
            scaled = _standardize(
                covariate.values,
                groups,
                is_treated,
                denom_variance,
                autogen_missing,
                covariate.name,
            )
            if scaled is None:
                warn(
                    f"`{covariate.name}` has no variance in any treatment group (e.g. an "
                    "unused factor level); no constraints are generated for it."
                )
                continue
            for population in populations:
                term = population.term
                if term is not None and covariate.source in term.variables:
                    # Balancing a variable within its own levels is degenerate.
                    key = (covariate.source, term.name)
                    if not term.from_dot and key not in warned_self:
                        warned_self.add(key)
                        warn(
                            f"`{covariate.source}` is not balanced within `{term.name}`, "
                            "which contains it."
                        )
                    continue
                weight = covariate.weight * population.weight
                names.append(f"{covariate.name}_{population.name}")
                values.append(_restrict(scaled.covariate, population.indicator))
                importances.append(weight)
                if scaled.missingness is not None and autogen_missing is not None:
                    names.append(f"{covariate.name}_missing_{population.name}")
                    values.append(_restrict(scaled.missingness, population.indicator))
                    importances.append(weight * autogen_missing)

    index = pd.Index(names, dtype=object)
    duplicated = index[index.duplicated()].unique().tolist()
    if duplicated:
        raise FormulaError(
            f"the balance formulas generate duplicate constraints {duplicated[:5]}; each "
            "covariate/population pair may appear only once"
        )
    matrix = np.column_stack(values) if values else np.empty((len(data), 0))
    X = pd.DataFrame(matrix, index=data.index, columns=index)
    return Constraints(X=X, importances=pd.Series(importances, index=index, dtype=float))


def _restrict(column: np.ndarray, indicator: np.ndarray | None) -> np.ndarray:
    """The column inside the population, 0 outside (NaN stays NaN inside)."""
    return column if indicator is None else np.where(indicator, column, 0.0)
