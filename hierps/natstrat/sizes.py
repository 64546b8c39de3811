"""Inputs of control selection: treatment groups, strata, and how many units to take.

Turns ``z``, ``st``, ``ratio``/``q_s`` and the supplemental comparisons of
:func:`hierps.optimize_controls` into integer size tables (groups × strata), checking them
against the units available, as natstrat's ``process_qs`` and ``verify_inputs`` do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hierps.exceptions import DataError, warn
from hierps.natstrat.constraints import _r_label

__all__ = ["Design", "check_total", "main_sizes", "make_design", "star_sizes"]


@dataclass(frozen=True)
class Design:
    """Units' treatment groups and strata.

    Attributes
    ----------
    groups
        Treatment levels, sorted (natstrat's ``levels(factor(z))``).
    group_codes
        Index into ``groups`` of each unit.
    strata
        Stratum labels: the categories of a categorical ``st``, else its sorted values.
    stratum_codes
        Index into ``strata`` of each unit.
    counts
        Units per group (rows) and stratum (columns).
    """

    groups: list[Any]
    group_codes: np.ndarray
    strata: list[Any]
    stratum_codes: np.ndarray
    counts: pd.DataFrame

    def group_index(self, value: Any, argument: str) -> int:
        """Position of treatment ``value`` among the groups; errors name ``argument``."""
        for k, group in enumerate(self.groups):
            if group == value:
                return k
        raise DataError(
            f"{argument}={value!r} is not among the values of z: "
            f"{[_show(g) for g in self.groups[:10]]}"
        )


def _show(value: Any) -> Any:
    """A label as users wrote it (``0`` rather than ``np.int64(0)``) for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _values(x: Any) -> np.ndarray:
    return x.to_numpy() if isinstance(x, pd.Series | pd.Index) else np.asarray(x)


def make_design(z: Any, st: Any, n: int) -> Design:
    """Check ``z`` and ``st`` (one entry per unit, no missing values) and tabulate them."""
    z_values, st_values = _values(z), _values(st)
    for name, values in (("z", z_values), ("st", st_values)):
        if values.ndim != 1:
            raise DataError(f"{name} must be one-dimensional, got shape {values.shape}")
        if len(values) != n:
            raise DataError(f"{name} has {len(values)} entries but X has {n} rows")
        if pd.isna(values).any():
            raise DataError(f"{name} has {int(pd.isna(values).sum())} missing values")
    group_codes, groups = pd.factorize(z_values, sort=True)
    if len(groups) < 2:
        raise DataError(f"z must have at least 2 distinct values, found {list(groups)}")
    if isinstance(st, pd.Series) and isinstance(st.dtype, pd.CategoricalDtype):
        strata = list(st.cat.categories)
        stratum_codes = st.cat.codes.to_numpy().astype(np.int64)
    else:
        stratum_codes, uniques = pd.factorize(st_values, sort=True)
        strata = list(uniques)
    table = np.zeros((len(groups), len(strata)), dtype=np.int64)
    np.add.at(table, (group_codes, stratum_codes), 1)
    counts = pd.DataFrame(
        table,
        index=pd.Index(list(groups), name="group"),
        columns=pd.Index(strata, name="stratum"),
    )
    return Design(list(groups), group_codes.astype(np.int64), strata, stratum_codes, counts)


def _as_int_table(values: np.ndarray, argument: str, design: Design) -> pd.DataFrame:
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise DataError(f"{argument} must hold non-negative numbers")
    if not np.allclose(values, np.round(values)):
        raise DataError(f"{argument} must hold whole numbers of units")
    return pd.DataFrame(
        np.round(values).astype(np.int64),
        index=design.counts.index,
        columns=design.counts.columns,
    )


def _table(q: Any, argument: str, design: Design, fill_group: int | None) -> pd.DataFrame:
    """A groups × strata table from a DataFrame, or from a per-stratum Series/Mapping.

    A per-stratum vector applies to every group except ``fill_group`` (left at 0 here).
    """
    strata = design.counts.columns
    if isinstance(q, pd.DataFrame):
        frame = q.copy()
        frame.columns = [_match(c, strata, argument, "stratum") for c in frame.columns]
        frame.index = [_match(g, design.counts.index, argument, "group") for g in frame.index]
        missing = [s for s in strata if s not in frame.columns]
        if missing:
            raise DataError(f"{argument} has no column for stratum {missing[0]!r}")
        frame = frame.reindex(index=design.counts.index, columns=strata)
        absent = frame.isna().all(axis=1)
        frame.loc[absent] = 0
        return _as_int_table(frame.to_numpy(dtype=float), argument, design)
    if isinstance(q, Mapping | pd.Series):
        series = pd.Series(q)
        series.index = [_match(s, strata, argument, "stratum") for s in series.index]
        missing = [s for s in strata if s not in series.index]
        if missing:
            raise DataError(f"{argument} has no entry for stratum {missing[0]!r}")
        row = series.reindex(strata).to_numpy(dtype=float)
        values = np.tile(row, (len(design.groups), 1))
        if fill_group is not None:
            values[fill_group] = 0
        return _as_int_table(values, argument, design)
    raise DataError(
        f"{argument} must be a DataFrame (groups × strata) or a Series indexed by stratum, "
        f"got {type(q).__name__}"
    )


def _match(label: Any, labels: pd.Index, argument: str, what: str) -> Any:
    """``label`` itself if it is in ``labels``, else the label with the same R spelling."""
    if label in labels:
        return label
    spelled = {_r_label(x): x for x in labels}
    if _r_label(label) in spelled:
        return spelled[_r_label(label)]
    raise DataError(f"{argument} names {what} {label!r}, which is not one of {list(labels)[:10]}")


def _check_available(q: pd.DataFrame, argument: str, design: Design) -> None:
    excess = q.to_numpy() > design.counts.to_numpy()
    if excess.any():
        g, s = np.argwhere(excess)[0]
        raise DataError(
            f"{argument} asks for {q.iat[g, s]} units of group {_show(design.groups[g])!r} in "
            f"stratum {_show(design.strata[s])!r}, which has only {design.counts.iat[g, s]}"
        )


def main_sizes(ratio: Any, q_s: Any, treated: int, design: Design) -> pd.DataFrame:
    """Sizes of the main comparison; all treated units are kept.

    ``q_s`` wins over ``ratio``. A ratio is a number (for every non-treated group), or one
    entry per group in the sorted order of the groups or a mapping group → ratio; each
    stratum takes ``round(ratio × treated count)`` units, halves rounded to even as in R.
    """
    treated_counts = design.counts.iloc[treated].to_numpy()
    if q_s is not None:
        q = _table(q_s, "q_s", design, fill_group=treated)
        given = q.iloc[treated].to_numpy()
        if isinstance(q_s, pd.DataFrame) and np.any(given != treated_counts) and given.any():
            s = int(np.flatnonzero(given != treated_counts)[0])
            raise DataError(
                f"q_s must keep every treated unit: its row for treated group "
                f"{_show(design.groups[treated])!r} has {given[s]} in stratum "
                f"{_show(design.strata[s])!r}, "
                f"which has {treated_counts[s]} treated units"
            )
        q.iloc[treated] = treated_counts
        _check_available(q, "q_s", design)
        return q
    if ratio is None:
        raise DataError("give either ratio or q_s")
    k = len(design.groups)
    if isinstance(ratio, Mapping | pd.Series):
        ratios = np.ones(k)
        for group, value in dict(ratio).items():
            ratios[design.group_index(group, "ratio")] = value
    elif np.ndim(ratio) == 0:
        ratios = np.full(k, float(ratio))
    else:
        ratios = np.asarray(ratio, dtype=float)
        if ratios.shape != (k,):
            raise DataError(
                f"ratio must be a number or have one entry per group "
                f"{[_show(g) for g in design.groups]}, got "
                f"{ratios.shape[0] if ratios.ndim == 1 else ratios.shape} entries"
            )
    if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
        raise DataError(f"ratio must be positive, got {list(ratios)}")
    ratios[treated] = 1.0
    # numpy rounds halves to even, as R's round() does.
    values = np.round(np.outer(ratios, treated_counts))
    q = _as_int_table(values, "ratio", design)
    if (design.counts.iloc[treated] == 0).any():
        warn("at least one stratum has no treated units")
    _check_available(q, "ratio × treated count", design)
    return q


def star_sizes(
    treated_star: Any, q_star_s: Any, weight_star: Any, design: Design
) -> tuple[list[int], list[pd.DataFrame], list[float]]:
    """Treated group, sizes and weight of each supplemental comparison."""
    if treated_star is None and q_star_s is None:
        return [], [], []
    if treated_star is None or q_star_s is None:
        raise DataError("treated_star and q_star_s go together: give both or neither")
    stars = list(treated_star) if _is_sequence(treated_star) else [treated_star]
    tables = list(q_star_s) if _is_sequence(q_star_s) else [q_star_s]
    weights = list(weight_star) if _is_sequence(weight_star) else [weight_star] * len(stars)
    if not len(tables) == len(weights) == len(stars):
        raise DataError(
            f"treated_star has {len(stars)} entries, q_star_s {len(tables)} and weight_star "
            f"{len(weights)}; give one of each per supplemental comparison"
        )
    codes = [design.group_index(value, "treated_star") for value in stars]
    sizes = []
    for number, table in enumerate(tables):
        argument = "q_star_s" if len(tables) == 1 else f"q_star_s[{number}]"
        q = _table(table, argument, design, fill_group=None)
        _check_available(q, argument, design)
        sizes.append(q)
    weights_out = [float(w) for w in weights]
    if any(not np.isfinite(w) or w < 0 for w in weights_out):
        raise DataError(f"weight_star must be non-negative, got {weights_out}")
    return codes, sizes, weights_out


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str)


def check_total(sizes: Sequence[pd.DataFrame], design: Design) -> None:
    """The comparisons together may not take more units than a stratum has."""
    total = sum(q.to_numpy() for q in sizes)
    excess = total > design.counts.to_numpy()
    if np.any(excess):
        g, s = np.argwhere(excess)[0]
        raise DataError(
            f"the comparisons together ask for {total[g, s]} units of group "
            f"{_show(design.groups[g])!r} in stratum {_show(design.strata[s])!r}, which has only "
            f"{design.counts.iat[g, s]}; lower q_s or q_star_s"
        )
