"""Several weightings of one design compared in one balance table.

``balance_table({"unweighted": None, "MAP": fit, "posterior": post, "logistic IPW": w})``
assesses every weighting with :func:`~hierps.balance.table.balance_table` and stacks the
tables with a ``weighting`` column, in the order given: one table (and, with
:func:`hierps.plots.plot_love`, one figure) for the question "which weights balance best?".
:func:`weights_result` turns any vector of weights (a plain logistic IPW, weights from another
package, a control selection of :func:`hierps.optimize_controls` as 0/1 weights) into
something the balance table accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from hierps.balance.table import DEFAULT_THRESHOLD, BalanceTable, balance_table
from hierps.design.build import Design
from hierps.rendering import format_number, render_text

__all__ = [
    "UNWEIGHTED",
    "BalanceComparison",
    "WeightsResult",
    "compare_balance",
    "weights_result",
]

#: Label of the unit weights a ``None`` entry stands for.
UNWEIGHTED = "unweighted"


@dataclass(frozen=True, eq=False)
class WeightsResult:
    """A design with one weight per unit: what :func:`balance_table` needs of a result.

    Attributes
    ----------
    design
        The validated design the weights belong to.
    weights
        One weight per unit, indexed like ``design.index`` (only the controls' weights are
        read: the treated are the target).
    label
        How balance tables and figures name these weights.
    """

    design: Design
    weights: pd.Series
    label: str = "user weights"

    @property
    def weights_label(self) -> str:
        """The label balance tables show (read by ``balance_table``)."""
        return self.label


def _design_of(source: Any, argument: str) -> Design:
    if isinstance(source, Design):
        return source
    design = getattr(source, "design", None)
    if isinstance(design, Design):
        return design
    raise TypeError(
        f"{argument} must be a Design or an object with a .design (Model, MapResult, "
        f"PosteriorResult), not {type(source).__name__}"
    )


def weights_result(source: Any, weights: Any, label: str = "user weights") -> WeightsResult:
    """Wrap user weights (a plain logistic IPW, weights from another package) for balance.

    Parameters
    ----------
    source
        The :class:`~hierps.design.build.Design` the weights belong to, or anything with a
        ``.design`` (a :class:`~hierps.Model`, a MAP or posterior result).
    weights
        One non-negative, finite weight per unit: an array in the design's row order, or a
        Series indexed like the data frame the model was built from (aligned on the index).
        For the ATT the treated weights are ignored; ``p / (1 − p)`` for the controls is the
        usual inverse-probability weight.

        Or a control selection, :class:`~hierps.natstrat.optimize.OptimizeControlsResult`:
        its :attr:`~hierps.natstrat.optimize.OptimizeControlsResult.weights` (1 selected, 0
        not) on the design's units, which must all be among the selection's units (units of
        the selection outside the design are ignored) and whose treated units must all be
        selected (the design's treated are the selection's ``treated`` group). With more than
        two treatment groups the view compares the design's treated with the selected units
        of whichever groups the design holds as controls: build the model on the units of
        ``treated`` and one other group to compare that pair (natstrat's pairwise ``eps``),
        or on all units with treatment ``z == treated`` to compare the treated with the
        selected units of every other group pooled.
    label
        The name balance tables and figures give these weights.

    Returns
    -------
    WeightsResult
        Accepted by :func:`~hierps.balance.table.balance_table`, in a dict of weightings and by
        :func:`hierps.plots.plot_love`.
    """
    design = _design_of(source, "source")
    # Imported here: a selection is the only natstrat object balance reads.
    from hierps.natstrat.optimize import OptimizeControlsResult

    if isinstance(weights, OptimizeControlsResult):
        weights = _selection_weights(weights, design)
    if isinstance(weights, pd.Series):
        if weights.index.has_duplicates or not weights.index.isin(design.index).all():
            raise ValueError("weights: a Series must be indexed by the design's units, once each")
        _check_every_unit(weights.index, design, "have no weight")
        values = weights.reindex(design.index).to_numpy(dtype=float)
    else:
        values = np.asarray(weights, dtype=float).reshape(-1)
    if values.shape != (design.n_units,):
        raise ValueError(
            f"weights: expected one weight per unit ({design.n_units}), got {values.shape[0]}"
        )
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("weights must be finite and non-negative")
    if not np.any(values[design.treatment == 0] > 0):
        raise ValueError("weights: every control weight is 0")
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, not {label!r}")
    return WeightsResult(design, pd.Series(values, index=design.index, name="weight"), label)


def _check_every_unit(index: pd.Index, design: Design, problem: str) -> None:
    """Raise naming the first of the design's units missing from ``index``."""
    missing = ~design.index.isin(index)
    if missing.any():
        raise ValueError(
            f"weights: {int(missing.sum())} units of the design {problem} "
            f"(first: {design.index[missing][0]!r})"
        )


def _selection_weights(selection: Any, design: Design) -> pd.Series:
    """A selection's 0/1 weights on the design's units, checked against its treated units."""
    weights = selection.weights
    if weights.index.has_duplicates:
        raise ValueError("weights: the selection's units must be labelled once each")
    _check_every_unit(weights.index, design, "are not in the selection")
    weights = weights.reindex(design.index)
    dropped = (design.treatment == 1) & (weights.to_numpy() == 0)
    if dropped.any():
        raise ValueError(
            f"weights: the selection leaves out {int(dropped.sum())} treated units of the design "
            f"(first: {design.index[dropped][0]!r}); the design's treated must be the "
            f"selection's treated group"
        )
    return weights


@dataclass(frozen=True, eq=False)
class BalanceComparison:
    """Balance of several weightings of one design (see :func:`compare_balance`).

    Attributes
    ----------
    global_, by_group, across_groups, ess
        The tables of :class:`~hierps.balance.table.BalanceTable`, stacked, with a first
        column ``weighting`` (an ordered categorical, in the order the weightings were given).
    tables
        The single-weighting tables, by label.
    threshold
        The |SMD| above which a covariate counts as imbalanced.
    """

    global_: pd.DataFrame
    by_group: pd.DataFrame
    across_groups: pd.DataFrame
    ess: pd.DataFrame
    tables: dict[str, BalanceTable]
    threshold: float

    @property
    def weightings(self) -> list[str]:
        """The labels, in order."""
        return list(self.tables)

    def summary(self) -> pd.DataFrame:
        """One row per weighting: global and worst within-group |SMD|, imbalanced counts, ESS.

        Indexed by ``weighting``; columns ``max_abs_smd`` (global, after weighting),
        ``n_imbalanced`` (covariates above the threshold globally), ``max_abs_smd_within``
        (the largest within-group |SMD| of any unit covariate), ``n_imbalanced_within``
        ((group, covariate) pairs above the threshold) and ``ess`` (Kish ESS of all control
        weights).
        """
        rows = {}
        for label, table in self.tables.items():
            within = table.by_group["smd_after"].abs()
            rows[label] = {
                "max_abs_smd": table.global_["smd_after"].abs().max(),
                "n_imbalanced": table.n_imbalanced,
                "max_abs_smd_within": within.max(),
                "n_imbalanced_within": int((within > self.threshold).sum()),
                "ess": float(table.ess["ess"].iloc[0]),
            }
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "weighting"
        return frame

    def wide(self, column: str = "smd_after", scope: str = "global") -> pd.DataFrame:
        """One column per weighting of one statistic, one row per covariate.

        Parameters
        ----------
        column
            A column of the stacked tables (``smd_after``, ``var_ratio_after``,
            ``max_abs_smd_after`` for ``scope="across_groups"`` …).
        scope
            ``"global"`` (indexed by ``covariate``), ``"by_group"`` (by ``group`` and
            ``covariate``) or ``"across_groups"`` (by ``covariate``).
        """
        frames = {
            "global": self.global_,
            "by_group": self.by_group,
            "across_groups": self.across_groups,
        }
        if scope not in frames:
            raise ValueError(f"scope must be one of {sorted(frames)}, not {scope!r}")
        frame = frames[scope]
        if column not in frame.columns or column in ("weighting", "covariate", "group"):
            raise ValueError(f"column {column!r} is not a statistic of the {scope} tables")
        keys = ["group", "covariate"] if scope == "by_group" else ["covariate"]
        order = frame.loc[frame["weighting"] == self.weightings[0], keys]
        wide = frame.pivot_table(
            index=keys, columns="weighting", values=column, sort=False, observed=True, dropna=False
        )
        wide = wide.reindex(pd.MultiIndex.from_frame(order) if len(keys) > 1 else order[keys[0]])
        wide.columns = pd.Index([str(c) for c in wide.columns], name="weighting")
        return wide[self.weightings]

    def __rich__(self) -> Group:
        table = Table(
            title=f"Global SMD after weighting (flagged when |SMD| > {self.threshold:g})",
            title_justify="left",
            show_edge=False,
        )
        table.add_column("covariate")
        for label in self.weightings:
            table.add_column(label, justify="right")
        for covariate, row in self.wide().iterrows():
            cells = [Text(str(covariate))]
            for value in row:
                flagged = np.isfinite(value) and abs(value) > self.threshold
                cells.append(
                    Text(format_number(value, "+.3f"), style="bold red" if flagged else "")
                )
            table.add_row(*cells)
        summary = Table(title="Summary by weighting", title_justify="left", show_edge=False)
        frame = self.summary()
        summary.add_column("weighting")
        for name in frame.columns:
            summary.add_column(name, justify="right")
        for label, row in frame.iterrows():
            summary.add_row(
                str(label),
                format_number(row["max_abs_smd"], ".3f"),
                str(int(row["n_imbalanced"])),
                format_number(row["max_abs_smd_within"], ".3f"),
                str(int(row["n_imbalanced_within"])),
                format_number(row["ess"], ".1f"),
            )
        return Group(table, summary)

    def __str__(self) -> str:
        return render_text(self)

    def __repr__(self) -> str:
        return self.__str__()


def _entry(label: Any, value: Any, design: Design) -> Any:
    """The result a dict entry stands for: None → unit weights, (source, weights) → wrapped."""
    if value is None:
        return WeightsResult(design, pd.Series(np.ones(design.n_units), index=design.index), label)
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(
                f"weightings[{label!r}]: a tuple must be (model or design, weights), not "
                f"{len(value)} items"
            )
        return weights_result(value[0], value[1], label=label)
    return value


def compare_balance(
    weightings: Mapping[str, Any],
    threshold: float = DEFAULT_THRESHOLD,
    ci_prob: float | None = None,
    squares: bool = False,
    interactions: bool = False,
) -> BalanceComparison:
    """Balance tables of several weightings of one design, stacked with a ``weighting`` column.

    :func:`~hierps.balance.table.balance_table` calls this when given a dict.

    Parameters
    ----------
    weightings
        Label → weighting, in the order to show: ``None`` (every unit weight 1: the balance
        before weighting), a MAP or posterior result, a :func:`weights_result`, or a pair
        ``(model_or_design, weights)`` passed to :func:`weights_result` (``weights`` may be a
        control selection from :func:`hierps.optimize_controls`). All must share one
        design (the same units, treatment and groups).
    threshold, ci_prob, squares, interactions
        As in :func:`~hierps.balance.table.balance_table`, for every weighting.

    Returns
    -------
    BalanceComparison
        Stacked tables (``weighting`` first), the single tables by label, a per-weighting
        ``summary()`` and ``wide()`` pivots.
    """
    if not isinstance(weightings, Mapping) or not weightings:
        raise ValueError("weightings must be a non-empty dict of label → weighting")
    for label in weightings:
        if not isinstance(label, str) or not label:
            raise ValueError(f"weightings: labels must be non-empty strings, not {label!r}")
    design = None
    for label, value in weightings.items():
        if value is not None:
            source = value[0] if isinstance(value, tuple) and value else value
            design = _design_of(source, f"weightings[{label!r}]")
            break
    if design is None:
        raise ValueError("weightings: at least one entry must be a weighting, not None")
    tables: dict[str, BalanceTable] = {}
    for label, value in weightings.items():
        result = _entry(label, value, design)
        other = _design_of(result, f"weightings[{label!r}]")
        if other is not design and not _same_units(design, other):
            raise ValueError(
                f"weightings[{label!r}]: its design has other units, treatment or groups than "
                f"the first weighting's"
            )
        tables[label] = balance_table(
            result, threshold=threshold, ci_prob=ci_prob, squares=squares, interactions=interactions
        )
    order = pd.CategoricalDtype(list(tables), ordered=True)

    def stack(name: str) -> pd.DataFrame:
        parts = []
        for label, table in tables.items():
            frame = getattr(table, name)
            parts.append(frame.assign(weighting=label)[["weighting", *frame.columns]])
        stacked = pd.concat(parts, ignore_index=True)
        stacked["weighting"] = stacked["weighting"].astype(order)
        stacked.index.name = "row"
        stacked.attrs.update({"threshold": float(threshold), "weightings": list(tables)})
        return stacked

    first = next(iter(tables.values()))
    return BalanceComparison(
        global_=stack("global_"),
        by_group=stack("by_group"),
        across_groups=stack("across_groups"),
        ess=stack("ess"),
        tables=tables,
        threshold=first.threshold,
    )


def _same_units(a: Design, b: Design) -> bool:
    return (
        a.n_units == b.n_units
        and a.index.equals(b.index)
        and np.array_equal(a.treatment, b.treatment)
        and a.groups.equals(b.groups)
        and np.array_equal(a.group_codes, b.group_codes)
    )
