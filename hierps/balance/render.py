"""Rich rendering of balance tables (what ``print(balance_table(...))`` shows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.table import Table
from rich.text import Text

from hierps.rendering import format_number

if TYPE_CHECKING:
    from hierps.balance.table import BalanceTable

__all__ = ["balance_renderables"]


def _smd_cell(value: float, threshold: float, fmt: str = "+.3f") -> Text:
    text = format_number(value, fmt)
    flagged = value is not None and np.isfinite(value) and abs(value) > threshold
    return Text(text, style="bold red" if flagged else "")


_ESTIMAND_NOTE = {"atc": " (ATC: treated reweighted)", "ate": " (ATE: both arms reweighted)"}
_SD_NAME = {"att": "treated SD", "atc": "control SD", "ate": "pooled SD"}


def balance_renderables(table: BalanceTable) -> list:
    threshold = table.threshold
    intervals = table.has_intervals
    out: list = [
        Text(
            f"Balance of the {table.weights}"
            f"{_ESTIMAND_NOTE.get(table.global_.attrs.get('estimand', 'att'), '')}: SMD = "
            f"(treated − control) / "
            f"{_SD_NAME.get(table.global_.attrs.get('estimand', 'att'), 'treated SD')}; "
            f"flagged when |SMD| > {threshold:g}",
            style="bold",
        )
    ]
    overall = Table(title="Global balance", title_justify="left", show_edge=False)
    for name in ("covariate", "kind", "SMD before", "SMD after"):
        overall.add_column(name, justify="left" if name in ("covariate", "kind") else "right")
    if intervals:
        overall.add_column(f"{table.ci_prob:.0%} interval", justify="right")
    overall.add_column("VR before", justify="right")
    overall.add_column("VR after", justify="right")
    for row in table.global_.itertuples(index=False):
        cells = [
            Text(str(row.covariate) + (" (group)" if row.level == "group" else "")),
            row.kind,
            format_number(row.smd_before, "+.3f"),
            _smd_cell(row.smd_after, threshold),
        ]
        if intervals:
            lower = format_number(row.smd_after_lower, "+.3f")
            upper = format_number(row.smd_after_upper, "+.3f")
            cells.append(f"[{lower}, {upper}]")
        cells += [
            format_number(row.var_ratio_before, ".2f"),
            format_number(row.var_ratio_after, ".2f"),
        ]
        overall.add_row(*cells)
    out.append(overall)

    if len(table.across_groups):
        across = Table(
            title=f"Within groups: |SMD| over {table.ess.shape[0] - 1} groups",
            title_justify="left",
            show_edge=False,
        )
        after_max = "max after" + (f" [{table.ci_prob:.0%} int.]" if intervals else "")
        for name in ("covariate", "mean before", "mean after", "max before", after_max):
            across.add_column(name, justify="left" if name == "covariate" else "right")
        across.add_column("at group", justify="right")
        across.add_column(f"groups > {threshold:g}", justify="right")
        for row in table.across_groups.itertuples(index=False):
            worst = _smd_cell(row.max_abs_smd_after, threshold, ".3f")
            if intervals:
                worst.append(
                    f" [{format_number(row.max_abs_smd_after_lower)}, "
                    f"{format_number(row.max_abs_smd_after_upper)}]"
                )
            across.add_row(
                Text(str(row.covariate)),
                format_number(row.mean_abs_smd_before),
                _smd_cell(row.mean_abs_smd_after, threshold, ".3f"),
                format_number(row.max_abs_smd_before),
                worst,
                Text("–" if row.max_group is None else str(row.max_group)),
                f"{row.n_imbalanced} / {row.n_groups}",
            )
        out.append(across)

    ess = table.ess
    overall_row = ess.iloc[0]
    groups = ess.iloc[1:]
    # The reweighted arm: the controls (ATT, ATE) or the treated (ATC).
    arm = ess.attrs.get("arm", "control")
    count, other = ("n_treated", "n_control") if arm == "treated" else ("n_control", "n_treated")
    units, others = ("treated", "controls") if arm == "treated" else ("controls", "treated")
    estimable = groups[groups[count] > 0]
    lines = [
        f"Effective sample size of the {arm} weights: {overall_row['ess']:,.1f} of "
        f"{int(overall_row[count]):,} {units} ({overall_row['ess_ratio']:.0%}); "
        f"weights sum to {overall_row['weight_sum']:,.1f} for {int(overall_row[other]):,} "
        f"{others}"
    ]
    if len(estimable):
        smallest = estimable.nsmallest(3, "ess")
        listed = ", ".join(
            f"{row.group} ({row.ess:.1f} of {int(getattr(row, count))})"
            for row in smallest.itertuples(index=False)
        )
        lines.append(
            f"  per group: median {estimable['ess'].median():.1f}, smallest {listed}; largest "
            f"single-weight share {estimable['max_weight_share'].max():.0%}"
        )
    lines.append(f"  per-draw intervals: {table.per_draw}")
    out.append(Text("\n".join(lines)))
    return out
