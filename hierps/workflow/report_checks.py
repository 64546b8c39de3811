"""The report's checks of an analysis: overlap, balance of several weightings, sensitivity.

:func:`check_sections` writes the tables (``overlap.csv``, ``balance_comparison.csv``,
``sensitivity.csv``, ``robustness.csv``, ``benchmarks_r2.csv``) and figures of three report
sections and returns their Markdown. Overlap is a property of the weights, not of the sampler,
so the flagged groups are listed here and not by :func:`hierps.diagnose`, which judges sampling
only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hierps.balance.overlap import ALL_GROUPS, overlap
from hierps.balance.weightings import UNWEIGHTED, compare_balance
from hierps.effects.sensitivity import ATT_LABEL, robustness_value, sensitivity
from hierps.effects.sensitivity_r2 import benchmark_r2, bias_contour, sensitivity_r2
from hierps.workflow.analysis import AnalysisResult

__all__ = ["REPORT_LAMBDA", "CheckSections", "check_sections"]

#: Λ of the report's sensitivity table; groups explained away below the first are counted.
REPORT_LAMBDA = (1.25, 1.5, 2.0)
#: Bootstrap resamples (MAP refits) of the sensitivity intervals in a report.
REPORT_BOOTSTRAPS = 200
#: At most this many groups in the overlap figure (the flagged ones first).
MAX_OVERLAP_PANELS = 36


@dataclass
class CheckSections:
    """Markdown lines, written files and figures of the report's check sections."""

    lines: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    from hierps.workflow.report import markdown_table

    return markdown_table(frame, digits)


def check_sections(result: AnalysisResult, out_dir: Path) -> CheckSections:
    """Overlap, balance comparison and sensitivity sections of ``report.md``, with their files.

    Parameters
    ----------
    result
        The analysis.
    out_dir
        The output directory (figures go to ``out_dir / "figures"``).

    Returns
    -------
    CheckSections
        The Markdown lines (figures linked relative to ``out_dir``), the CSV and PNG files.
    """
    sections = CheckSections()
    wanted = set(result.spec.output.plots)
    figures_dir = out_dir / "figures"
    _overlap_section(result, out_dir, figures_dir, "overlap" in wanted, sections)
    _balance_section(result, out_dir, figures_dir, "balance_comparison" in wanted, sections)
    if result.model.design.outcome is not None:
        _sensitivity_section(result, out_dir, figures_dir, "sensitivity" in wanted, sections)
    return sections


def _save(fig: Any, name: str, out_dir: Path, figures_dir: Path, sections: CheckSections) -> None:
    import matplotlib.pyplot as plt

    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    sections.files.append(path)
    sections.figures[name] = path
    sections.lines += [f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]


def _csv(frame: pd.DataFrame, name: str, out_dir: Path, sections: CheckSections) -> None:
    path = out_dir / name
    frame.to_csv(path)
    sections.files.append(path)


def flagged_groups(table: pd.DataFrame) -> pd.DataFrame:
    """The groups an :func:`~hierps.balance.overlap.overlap` table flags, with their reasons."""
    groups = table.drop(ALL_GROUPS, errors="ignore")
    columns = ["n_treated", "n_control", "share_outside", "ess", "max_weight_share", "reasons"]
    return groups.loc[groups["limited_overlap"], columns]


def _overlap_section(
    result: AnalysisResult, out_dir: Path, figures_dir: Path, draw: bool, sections: CheckSections
) -> None:
    fit = result.map_fit
    table = overlap(fit)
    _csv(table, "overlap.csv", out_dir, sections)
    flagged = flagged_groups(table)
    n_groups = int((table.drop(ALL_GROUPS)["n_treated"] > 0).sum())
    attrs = table.attrs
    sections.lines += [
        "## Overlap",
        "",
        f"Propensities of the MAP fit. A group is flagged for limited overlap when more than "
        f"{attrs['max_outside_share']:.0%} of its treated units lie outside its controls' "
        f"propensity range, its control ESS is below {attrs['min_ess']:g} or below "
        f"{attrs['min_ess_ratio']:.0%} of its controls, or one control holds more than "
        f"{attrs['max_weight_share']:.0%} of its control weight (`hierps.overlap`; table "
        f"`overlap.csv`). Overlap is a property of the weights, not of the sampler, so it is "
        f"listed here rather than under the sampling diagnostics.",
        "",
    ]
    if len(flagged):
        sections.lines += [
            f"**{len(flagged)} of {n_groups} groups with treated units are flagged**; their "
            f"CATTs rest on extrapolation or on few controls:",
            "",
            _table(flagged),
            "",
        ]
    else:
        sections.lines += [f"No group of the {n_groups} with treated units is flagged.", ""]
    if draw:
        from hierps import plots

        # The flagged groups, then the largest others, up to the panel limit.
        others = table.drop(ALL_GROUPS).drop(flagged.index)
        others = others[others["n_treated"] > 0].sort_values("n_treated", ascending=False)
        labels = [*flagged.index, *others.index][:MAX_OVERLAP_PANELS]
        fig, _ = plots.plot_overlap(fit, table=table, groups=labels)
        _save(fig, "overlap", out_dir, figures_dir, sections)


def _balance_section(
    result: AnalysisResult, out_dir: Path, figures_dir: Path, draw: bool, sections: CheckSections
) -> None:
    weightings: dict[str, Any] = {UNWEIGHTED: None, "MAP": result.map_fit}
    if result.posterior is not None:
        weightings["posterior"] = result.posterior
    threshold = result.spec.output.balance_threshold
    comparison = compare_balance(weightings, threshold=threshold)
    long = pd.concat(
        [
            comparison.global_.assign(scope="global"),
            comparison.by_group.assign(scope="group"),
        ],
        ignore_index=True,
    )
    long.index.name = "row"
    _csv(long, "balance_comparison.csv", out_dir, sections)
    summary = comparison.summary()
    worst = comparison.wide("max_abs_smd_after", scope="across_groups")
    sections.lines += [
        "## Balance comparison",
        "",
        f"The same covariates before weighting and under each set of weights "
        f"(`balance_table({{...}})`; posterior: posterior-mean weights). Threshold "
        f"|SMD| ≤ {threshold:g}; `max_abs_smd_within` is the largest within-group |SMD|, "
        f"`n_imbalanced_within` the (group, covariate) pairs above the threshold.",
        "",
        _table(summary),
        "",
        "Global SMD after weighting:",
        "",
        _table(comparison.wide("smd_after")),
        "",
        "Largest within-group |SMD|:",
        "",
        _table(worst),
        "",
    ]
    if draw:
        from hierps import plots

        fig, _ = plots.plot_love(comparison)
        _save(fig, "balance_comparison", out_dir, figures_dir, sections)


def _explained_away(robustness: pd.DataFrame, below: float) -> tuple[int, int]:
    groups = robustness.drop(ATT_LABEL)["robustness_value"].dropna()
    return int((groups < below).sum()), len(groups)


def _sensitivity_section(
    result: AnalysisResult, out_dir: Path, figures_dir: Path, draw: bool, sections: CheckSections
) -> None:
    fit = result.map_fit
    options = {"bootstrap": "refit", "n_bootstrap": REPORT_BOOTSTRAPS, "random_seed": 0}
    # One bootstrap serves the table (REPORT_LAMBDA) and the figure (a finer grid).
    grid = sorted({1.0, 1.1, *REPORT_LAMBDA, 2.5, 3.0})
    bounds = sensitivity(fit, Lambda=grid, **options)
    robustness = robustness_value(fit, **options)
    _csv(bounds, "sensitivity.csv", out_dir, sections)
    _csv(robustness, "robustness.csv", out_dir, sections)
    att_bounds = bounds[(bounds["target"] == ATT_LABEL) & bounds["Lambda"].isin(REPORT_LAMBDA)]
    att_bounds = att_bounds.set_index("Lambda")
    att_bounds = att_bounds.drop(columns="target")
    att = robustness.loc[ATT_LABEL]
    prob = bounds.attrs["ci_prob"]
    first = REPORT_LAMBDA[0]
    n_away, n_groups = _explained_away(robustness, first)
    groups = robustness.drop(ATT_LABEL).dropna(subset=["robustness_value"])
    quantiles = groups["robustness_value"].quantile([0.1, 0.5, 0.9])
    fragile = groups.sort_values("robustness_value").head(10)
    sections.lines += [
        "## Sensitivity",
        "",
        "Marginal sensitivity model on the MAP control weights: each control's true odds of "
        "treatment may differ from the fitted odds by a factor up to Λ (`hierps.sensitivity`; "
        f"intervals: {prob:.0%} percentile bootstrap over {REPORT_BOOTSTRAPS} resamples, "
        "refitting the MAP weights). ATT bounds:",
        "",
        _table(att_bounds),
        "",
        f"**Robustness value of the ATT: Λ = {att['robustness_value']:.2f}** (its bounds reach "
        f"0); its {prob:.0%} interval reaches 0 at Λ = {att['robustness_value_ci']:.2f}. "
        f"{_reading(float(att['estimate']), float(att['robustness_value']))}",
        "",
        f"Groups: **{n_away} of {n_groups} CATTs are explained away by Λ < {first:g}**; the "
        f"median robustness value is {quantiles.loc[0.5]:.2f} (10% and 90% quantiles "
        f"{quantiles.loc[0.1]:.2f} and {quantiles.loc[0.9]:.2f}). The least robust groups "
        f"(`robustness.csv` has all):",
        "",
        _table(fragile),
        "",
    ]
    if draw:
        from hierps import plots

        fig, _ = plots.plot_sensitivity(bounds, highlight=list(fragile.index[:3]))
        _save(fig, "sensitivity", out_dir, figures_dir, sections)
    _variance_based(result, out_dir, figures_dir, draw, sections)


def _variance_based(
    result: AnalysisResult, out_dir: Path, figures_dir: Path, draw: bool, sections: CheckSections
) -> None:
    fit = result.map_fit
    summary = sensitivity_r2(fit, rho=1.0).iloc[0]
    benchmarks = benchmark_r2(fit)
    _csv(benchmarks, "benchmarks_r2.csv", out_dir, sections)
    strongest = benchmarks["bias"].abs().idxmax()
    sections.lines += [
        "### Variance-based sensitivity",
        "",
        "An omitted confounder as an error `ε = w* − w` in the control weights (Huang & "
        "Pimentel; `hierps.sensitivity_r2`): the ATT's bias is "
        "`ρ · sqrt(var(w) R² / (1 − R²)) · sd(Y)`, with R² the share of the ideal weights' "
        "variance that ε explains and ρ its correlation with the outcome among the controls "
        f"(var(w) = {summary['var_weights']:.3g}, sd(Y) = {summary['sd_outcome']:.3g}).",
        "",
        f"**To explain the ATT away a confounder needs R² ≥ {summary['r2']:.3f} with ρ = 1, or "
        f"R² = ρ² = {summary['robustness_value']:.3f}** (the robustness value). Leaving out "
        f"each observed covariate and refitting the MAP weights gives the parameters of a "
        f"confounder as strong as it (`benchmark_r2`; `bias` equals the change of the ATT; "
        f"`strength_to_explain_away` is the multiple of that bias that reaches 0):",
        "",
        _table(benchmarks.drop(columns="estimate")),
        "",
        f"The strongest benchmark is `{strongest}`: a confounder like it would move the ATT "
        f"from {fit.att:.3f} to {benchmarks.at[strongest, 'adjusted']:.3f}.",
        "",
    ]
    if draw:
        from hierps import plots

        fig, _ = plots.plot_bias_contour(bias_contour(fit), benchmarks=benchmarks)
        _save(fig, "bias_contour", out_dir, figures_dir, sections)


def _reading(estimate: float, value: float) -> str:
    """One sentence a reader can act on."""
    if not np.isfinite(value):
        return "No Λ explains it away."
    sign = "positive" if estimate > 0 else "negative"
    if value <= 1:
        return "The estimate itself is 0: nothing to explain away."
    return (
        f"The ATT stays {sign} up to Λ = {value:.2f}: to explain it away, an unmeasured "
        f"confounder would have to move controls' odds of treatment by a factor of "
        f"{value:.2f} from the fitted ones."
    )
