"""Writing an analysis to disk: netCDF result, CSV tables, figures and a Markdown report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hierps.balance.table import balance_table
from hierps.calibrated.fit import EFFECT_NAMES
from hierps.mcmc.diagnosis import diagnose
from hierps.workflow.analysis import AnalysisResult, write_tree
from hierps.workflow.report_checks import check_sections

__all__ = ["markdown_table", "write_outputs"]


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    frame = frame.astype(object)  # keeps integer columns integer row by row
    header = "| " + " | ".join([str(frame.index.name or ""), *map(str, frame.columns)]) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    rows = []
    for label, row in frame.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                cells.append("" if np.isnan(value) else f"{value:.{digits}f}")
            else:
                cells.append(str(value))
        rows.append("| " + " | ".join([str(label), *cells]) + " |")
    return "\n".join([header, rule, *rows])


def _figures(result: AnalysisResult, directory: Path) -> dict[str, Path]:
    # Imported here: only writing figures needs matplotlib. The backend stays the caller's
    # choice; without a display pyplot falls back to Agg by itself.
    import matplotlib.pyplot as plt

    from hierps import plots

    directory.mkdir(parents=True, exist_ok=True)
    wanted = set(result.spec.output.plots)
    threshold = result.spec.output.balance_threshold
    fit, posterior = result.map_fit, result.posterior
    figures: dict[str, Path] = {}

    def keep(name: str, fig) -> None:
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        figures[name] = path

    with plt.ioff():  # an interactive session does not show figures that only go to files
        if "love" in wanted:
            keep("love", plots.plot_love(fit, threshold=threshold)[0])
        if "catt" in wanted and result.model.design.outcome is not None:
            if posterior is not None:
                pooled = result.pooled.catt if result.pooled is not None else None
                keep("catt", plots.plot_catt(posterior, map_result=fit, pooled=pooled)[0])
            else:
                keep("catt", plots.plot_catt(fit)[0])
        if "map_vs_posterior" in wanted and posterior is not None:
            keep("map_vs_posterior", plots.plot_map_vs_posterior(fit, posterior)[0])
        if "pooling_path" in wanted and result.path_table is not None:
            chosen = fit.hyperparameters.sigma_beta
            chosen = float(chosen) if np.ndim(chosen) == 0 else None
            keep("pooling_path", plots.plot_pooling_path(result.path_table, chosen=chosen)[0])
        if "weights" in wanted:
            keep("weights", plots.plot_weights(fit)[0])
        if "calibration" in wanted and posterior is not None and _has_predictive(posterior):
            keep("calibration", plots.plot_calibration(posterior)[0])
    return figures


def _has_predictive(posterior) -> bool:
    return "posterior_predictive" in posterior.idata.children


def write_outputs(result: AnalysisResult, out_dir: Path) -> list[Path]:
    """Write ``result.nc``, the CSV tables, ``figures/*.png`` and ``report.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fit = result.map_fit
    files = [write_tree(result, out_dir / "result.nc")]

    weights = pd.DataFrame({"map_weight": fit.weights})
    if result.posterior is not None:
        weights["posterior_mean_weight"] = result.posterior.weights
    if result.constraint_fit is not None:
        weights["constraint_weight"] = result.constraint_fit.weights
    weights.index.name = "obs"
    weights.to_csv(out_dir / "weights.csv")
    files.append(out_dir / "weights.csv")

    has_outcome = result.model.design.outcome is not None
    if has_outcome:
        catt = fit.group_effects.add_prefix("map_")
        if result.posterior is not None:
            catt = catt.join(result.posterior.group_effects.add_prefix("posterior_"))
        if result.pooled is not None:
            catt = catt.join(
                result.pooled.catt[["mean", "sd", "lower", "upper"]].add_prefix("pooled_")
            )
        if result.truth is not None:
            catt = catt.join(result.truth.catt.rename("truth"))
        catt.to_csv(out_dir / "catt.csv")
        files.append(out_dir / "catt.csv")

    threshold = result.spec.output.balance_threshold
    balance = balance_table(fit, threshold=threshold)
    long = pd.concat(
        [balance.global_.assign(scope="global"), balance.by_group.assign(scope="group")],
        ignore_index=True,
    )
    long.to_csv(out_dir / "balance.csv", index=False)
    files.append(out_dir / "balance.csv")

    figures = _figures(result, out_dir / "figures")
    files.extend(figures.values())
    checks = check_sections(result, out_dir)
    files.extend(checks.files)
    (out_dir / "report.md").write_text(
        _report_text(result, balance, figures, out_dir, checks.lines)
    )
    files.append(out_dir / "report.md")
    return files


def _calibration_lines(posterior) -> list[str]:
    """The calibration check: observed treated shares against their predictive intervals."""
    if not _has_predictive(posterior):
        return []
    from hierps.posterior.checks import calibration

    table = calibration(posterior)
    outside = table[table["outside"]]
    prob = table.attrs["prob"]
    lines = [
        "### Calibration of the propensity model",
        "",
        f"Observed treated share of each group against its {prob:.0%} posterior predictive "
        f"interval: {len(outside)} of {len(table)} groups fall outside (about "
        f"{(1 - prob) * len(table):.0f} expected of a calibrated model).",
        "",
    ]
    if len(outside):
        lines += [markdown_table(outside.drop(columns="outside")), ""]
    return lines


def _report_text(
    result: AnalysisResult,
    balance,
    figures: dict[str, Path],
    out_dir: Path,
    checks: Sequence[str] = (),
) -> str:
    spec, fit, design = result.spec, result.map_fit, result.model.design
    lines = [f"# {spec.name}", "", spec.description, ""]
    lines += ["## Model", "", "```", design.summary(), "```", ""]
    lines += [
        "Hierarchical logistic propensity model: `logit π_i = α_j + x_i'β_j`, "
        "`α_j = a0 + v_j'γ + σ_α z_j`, `β_jk = μ_k + σ_β,k z_jk`.",
        "",
        "## MAP balancing weights (calibrated loss)",
        "",
        "Hyperparameters: "
        + ", ".join(
            f"{k} = {np.asarray(v).tolist()}" for k, v in fit.hyperparameters.as_dict().items()
        )
        + f". Newton iterations: {fit.iterations}; max |gradient| {fit.max_gradient:.1e}; "
        f"{result.timings.get('map', float('nan')) * 1e3:.0f} ms.",
        "",
    ]
    if fit.selection is not None:
        chosen = ", ".join(f"{k} = {v:.3g}" for k, v in fit.selection.scales.items())
        bound = (
            f" ({', '.join(fit.selection.at_bound)} at the end of the searched range)"
            if fit.selection.at_bound
            else ""
        )
        lines += [f"Chosen from the data ({fit.selection.method}): {chosen}{bound}.", ""]
    if design.base_weights is not None:
        lines += [
            f"Base weights: column `{design.roles.weights}` (balance targets, effects and "
            f"ESS are of the weighted population; the posterior is a pseudo-posterior).",
            "",
        ]
    if design.outcome is not None:
        name = EFFECT_NAMES[fit.estimand][1].upper()
        lines += [f"**{name} (MAP weights): {fit.overall_effect:.4f}**", ""]
    overall = balance.global_.set_index("covariate")[["smd_before", "smd_after"]]
    lines += [
        f"### Balance (threshold |SMD| ≤ {balance.threshold})",
        "",
        f"{balance.n_imbalanced} of {len(overall)} covariates exceed the threshold globally "
        f"after weighting. Kish ESS of the weights of all reweighted units: {fit.ess:.1f}.",
        "",
        markdown_table(overall),
        "",
        "Within groups (|SMD| summarised over groups):",
        "",
        markdown_table(
            balance.across_groups.set_index("covariate")[
                [c for c in balance.across_groups.columns if c != "covariate"]
            ]
        ),
        "",
    ]
    if result.path_table is not None:
        lines += ["### Pooling path", "", markdown_table(result.path_table), ""]
    if result.constraint_fit is not None:
        constraint = result.constraint_fit.balance()
        before = (constraint["control_total_before"] - constraint["treated_total"]).abs().max()
        lines += [
            "### natstrat balance formulas as priors",
            "",
            f"Formulas: {', '.join(f'`{f}`' for f in spec.balance.formulas)}; "
            f"{len(constraint)} constraints; control ESS {result.constraint_fit.ess:.1f}.",
            "",
            f"Largest |imbalance| after weighting: {constraint['imbalance'].abs().max():.3g} "
            f"(before: {before:.3g}).",
            "",
        ]
    if result.posterior is not None:
        posterior = result.posterior
        att = posterior.overall_effect
        lines += [
            "## Posterior (NUTS)",
            "",
            f"{posterior!r}",
            "",
            markdown_table(att if isinstance(att, pd.DataFrame) else att.to_frame().T),
            "",
            "### Sampling diagnostics",
            "",
            "```",
            str(diagnose(posterior)),
            "```",
            "",
            *_calibration_lines(posterior),
            "### MAP vs posterior",
            "",
        ]
        from hierps.effects.comparison import compare

        comparison = compare(fit, posterior)
        lines += [markdown_table(comparison), ""]
        lines += [
            f"Correlation of MAP and posterior-mean control weights: "
            f"{comparison.attrs.get('weight_correlation', float('nan')):.3f}.",
            "",
        ]
    elif design.outcome is not None:
        group_name = EFFECT_NAMES[fit.estimand][0].upper()
        lines += [f"## {group_name} by group (MAP)", "", markdown_table(fit.group_effects), ""]
    if result.pooled is not None:
        lines += [
            "## Pooled CATTs and moderators",
            "",
            "Normal hierarchical model on the posterior CATTs: τ̂_j ~ N(θ_j, se_j²), "
            "θ_j ~ N(μ_τ + v_j'φ, σ_τ²); covariates standardized over groups.",
            "",
            markdown_table(result.pooled.moderators),
            "",
        ]
    if result.truth is not None and design.outcome is not None and fit.estimand == "att":
        truth = result.truth
        errors = fit.catt["estimate"] - truth.catt.reindex(fit.catt.index)
        lines += [
            "## Truth (simulated study)",
            "",
            f"True ATT {truth.att:.4f}; MAP {fit.att:.4f}. CATT RMSE (MAP): "
            f"{np.sqrt(np.nanmean(errors**2)):.4f}.",
            "",
        ]
    lines += list(checks)  # overlap, balance comparison, sensitivity (report_checks.py)
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]
    if result.warnings:
        lines += ["## Warnings", ""] + [f"- {message}" for message in result.warnings] + [""]
    return "\n".join(lines)
