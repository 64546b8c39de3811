"""The learning-mindsets case study: runs the analysis and writes this folder's README.

    .venv/bin/python case_studies/learning_mindsets/run.py

Fits ``models/learning_mindsets.toml`` (MAP weights, pooling path, NUTS posterior, pooled CATTs
with school moderators), writes the outputs to ``output/`` (tables, figures, report; the
netCDF result is not committed) and renders ``README.md`` from the numbers it computed, so
every number in the README comes from this script.

The data were simulated from a model fitted to the National Study of Learning Mindsets and may
be used only to evaluate methods for treatment effects; cite Yeager et al. (2019), Nature 573,
364–369 (see ``data/README.md``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hierps.balance.overlap import overlap
from hierps.balance.table import balance_table
from hierps.calibrated.empirical_bayes import SCALE_BOUNDS
from hierps.effects.comparison import compare
from hierps.effects.sensitivity import ATT_LABEL, robustness_value, sensitivity
from hierps.effects.sensitivity_r2 import benchmark_r2, sensitivity_r2
from hierps.mcmc.diagnosis import diagnose
from hierps.workflow.analysis import run_analysis
from hierps.workflow.report import markdown_table
from hierps.workflow.report_checks import REPORT_BOOTSTRAPS, REPORT_LAMBDA, flagged_groups
from hierps.workflow.spec import read_spec

HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE.parents[1] / "models" / "learning_mindsets.toml"


def sensitivity_checks(fit) -> dict:
    """Overlap flags, robustness values (the report's settings) and R² benchmarks of the MAP fit."""
    table = overlap(fit)
    flagged = flagged_groups(table)
    options = {"bootstrap": "refit", "n_bootstrap": REPORT_BOOTSTRAPS, "random_seed": 0}
    robustness = robustness_value(fit, **options)
    bounds = sensitivity(fit, Lambda=REPORT_LAMBDA, **options)
    att_bounds = bounds[bounds["target"] == ATT_LABEL].set_index("Lambda").drop(columns="target")
    schools = robustness.drop(ATT_LABEL).dropna(subset=["robustness_value"])
    schools = schools.join(fit.catt["n_treated"]).join(table["limited_overlap"])
    schools = schools.sort_values("robustness_value")
    schools.index.name = "school"
    r2 = sensitivity_r2(fit).iloc[0]
    benchmarks = benchmark_r2(fit)[["level", "change", "r2", "rho", "strength_to_explain_away"]]
    items = "\n".join(f"- school {g}: {r}" for g, r in flagged["reasons"].items())
    overlap_text = (
        f"{len(flagged)} of {len(schools)} schools are flagged for limited overlap:\n\n{items}"
        if len(flagged)
        else "No school is flagged for limited overlap."
    )
    return {
        "overlap_text": overlap_text,
        "att_rv": robustness.at[ATT_LABEL, "robustness_value"],
        "att_rv_ci": robustness.at[ATT_LABEL, "robustness_value_ci"],
        "n_away": int((schools["robustness_value"] < REPORT_LAMBDA[0]).sum()),
        "n_away_ci": int((schools["robustness_value_ci"] <= 1).sum()),
        "n_schools": len(schools),
        "median_rv": schools["robustness_value"].median(),
        "att_bounds": att_bounds,
        "schools": schools,
        "r2_rho1": r2["r2"],
        "r2_rv": r2["robustness_value"],
        "benchmarks": benchmarks,
    }


def empirical_bayes(model) -> tuple[object, float, float]:
    """The "auto" MAP fit and its time beside the fit at fixed scales (best of three each)."""
    model.fit_map()  # the layout of the controls, shared by both timings
    timings = {}
    for name, options in (("fixed", {}), ("auto", dict(sigma_alpha="auto", sigma_beta="auto"))):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fit = model.fit_map(**options)
            times.append(time.perf_counter() - start)
        timings[name] = (fit, min(times))
    return timings["auto"][0], timings["auto"][1], timings["fixed"][1]


def main() -> None:
    start = time.perf_counter()
    spec = read_spec(MODEL_FILE)
    result = run_analysis(spec, out_dir=HERE / "output", report=print)
    elapsed = time.perf_counter() - start
    fit, posterior, pooled = result.map_fit, result.posterior, result.pooled
    design = result.model.design
    balance = balance_table(fit)
    overall = balance.global_.set_index("covariate")[["smd_before", "smd_after"]]
    across = balance.across_groups.set_index("covariate")[
        ["mean_abs_smd_before", "mean_abs_smd_after", "max_abs_smd_after", "max_group"]
    ]
    att = posterior.att.iloc[0]
    interval = f"[{att['lower']:.3f}, {att['upper']:.3f}]"
    comparison = compare(fit, posterior)
    inside = comparison["map_in_interval"].mean()
    diagnosis = diagnose(posterior)
    moderators = pooled.moderators[["mean", "sd", "lower", "upper", "r_hat"]]
    path = result.path_table[["global_max_smd", "within_mean_smd", "within_max_smd", "ess", "att"]]
    auto, auto_seconds, fixed_seconds = empirical_bayes(result.model)
    chosen = auto.selection.scales
    bound = (
        f" ({' and '.join(auto.selection.at_bound)} at the lower end of the searched range "
        f"{SCALE_BOUNDS[0]:g}–{SCALE_BOUNDS[1]:g})"
        if auto.selection.at_bound
        else ""
    )
    choice = f"σ_α = {chosen['sigma_alpha']:.3g} and σ_β = {chosen['sigma_beta']:.3g}"
    reading = (
        ": the school covariates and common slopes describe treatment assignment as well as "
        "school-specific ones, so the data ask for (nearly) complete pooling"
        if max(chosen.values()) < 0.05
        else ""
    )
    interval_width = (posterior.catt["upper"] - posterior.catt["lower"]).median()
    checks = sensitivity_checks(fit)
    pooled_width = (pooled.catt["upper"] - pooled.catt["lower"]).median()
    text = f"""# Learning mindsets: students in 76 schools

The ACIC 2018 synthetic version of the National Study of Learning Mindsets ({design.n_units:,}
students, {design.n_groups} schools; see [data/README.md](data/README.md) for its terms: the data
may be used only to evaluate methods, and publications cite Yeager et al. 2019). Treatment `Z`
(a growth-mindset intervention) was assigned by a selection model, not at random; the outcome `Y`
is simulated. Model ([models/learning_mindsets.toml](../../models/learning_mindsets.toml)):

    Z ~ 1 + S3 + C2 + C3 + X1 + X2 + X3 + X4 + X5 + (1 + S3 + C2 + C3 | schoolid)

Reproduce everything here with `.venv/bin/python case_studies/learning_mindsets/run.py`
({elapsed / 60:.1f} minutes on a 2-core machine; equivalently
`hierps fit models/learning_mindsets.toml --out output`).
Full report: [output/report.md](output/report.md).

## Overall effect

| | ATT | 90 % interval |
|---|---|---|
| MAP balancing weights (σ_β = 1) | {fit.att:.3f} | |
| posterior (NUTS, Bayesian bootstrap) | {att["mean"]:.3f} | {interval} |

Sampling: {diagnosis.verdict}

## School effects

![CATT by school](output/figures/catt.png)

School CATTs from the posterior (90 % intervals), the MAP weights (points), and the pooled
estimates of the normal hierarchical model on the school covariates. Median interval width:
{interval_width:.3f} unpooled, {pooled_width:.3f} pooled. The MAP CATT lies inside the posterior
interval in {inside:.0%} of schools; MAP and posterior-mean control weights correlate at
{comparison.attrs["weight_correlation"]:.3f}.

### Which school covariates moderate the effect?

φ per standard deviation of each school covariate (μ_τ the average effect, σ_τ the residual
spread of school effects):

{markdown_table(moderators)}

## Balance

{balance.n_imbalanced} of {len(overall)} covariates exceed |SMD| {balance.threshold} globally
after MAP weighting (control ESS {fit.ess:.0f} of {int((design.treatment == 0).sum()):,}).

{markdown_table(overall)}

Within schools (|SMD| over the {design.n_groups} schools):

{markdown_table(across)}

![Love plot](output/figures/love.png)

Unweighted, MAP and posterior-mean weights side by side (filled: over all schools; open: the
worst school):

![Balance comparison](output/figures/balance_comparison.png)

## Overlap and sensitivity to unmeasured confounding

{checks["overlap_text"]}

![Overlap](output/figures/overlap.png)

**The ATT stays positive up to Λ = {checks["att_rv"]:.2f}** (its 90 % bootstrap interval up to
Λ = {checks["att_rv_ci"]:.2f}): an unmeasured confounder would have to move the controls' odds of
treatment by a factor of {checks["att_rv"]:.2f} to explain the effect away. **{checks["n_away"]} of
{checks["n_schools"]} schools' CATTs are explained away by Λ < 1.25**, and
{checks["n_away_ci"]} schools' 90 % intervals already include 0 at Λ = 1; the median school's
robustness value is {checks["median_rv"]:.2f}. Single-school effects are therefore fragile;
read them together (the pooled estimates above) and lean on the ATT.

ATT bounds under the marginal sensitivity model (MAP weights, 200 bootstrap refits):

{markdown_table(checks["att_bounds"])}

![Sensitivity](output/figures/sensitivity.png)

<details><summary>Robustness value of every school's CATT (smallest first)</summary>

`robustness_value`: the smallest Λ whose bounds include 0; `robustness_value_ci`: whose 90 %
interval does; `limited_overlap`: flagged by `hierps.overlap`.

{markdown_table(checks["schools"])}

</details>

Variance-based view (Huang & Pimentel; `hierps.sensitivity_r2`, docs/math.md §18): a confounder
explains the ATT away if its error in the weights explains R² ≥ {checks["r2_rho1"]:.3f} of the
ideal weights' variance with correlation ρ = 1 with the outcome, or R² = ρ² =
{checks["r2_rv"]:.3f}. Leaving out each observed covariate shows how strong real confounders are
on that scale. `change` is the ATT without the covariate minus the ATT, which the bias formula
reproduces at the covariate's (`r2`, `rho`); `strength_to_explain_away` is how many times that
bias it takes to reach 0. The school covariates change nothing: the CATTs compare students within
a school, where a school covariate is constant, so only the student covariates can confound them.

{markdown_table(checks["benchmarks"])}

![Bias contours](output/figures/bias_contour.png)

## MAP vs posterior

![MAP vs posterior](output/figures/map_vs_posterior.png)

## The pooling path

From complete pooling (σ_β → 0: global balance only) to no pooling (σ_β → ∞: exact balance within
each school where feasible), with the effective sample size it costs:

{markdown_table(path)}

![Pooling path](output/figures/pooling_path.png)

### Pooling chosen by the data

`fit_map(sigma_alpha="auto", sigma_beta="auto")` estimates both scales by empirical Bayes (the
Laplace-approximate marginal likelihood of the Bernoulli hierarchical model, maximized over the
scales). Here it chooses {choice}{bound}{reading}. At those scales the MAP ATT is
{auto.att:.3f} (control ESS {auto.ess:.0f}); with σ_β = 1 it is {fit.att:.3f}. The estimate
took {auto_seconds * 1e3:.0f} ms against {fixed_seconds * 1e3:.0f} ms for the fit at fixed scales
({auto.selection.evaluations} marginal-likelihood evaluations).

![Weights by school](output/figures/weights.png)

## Notes

- The race/ethnicity code `C1` (15 levels) and urbanicity `XC` are not in this model: their
  one-hot levels sum to the intercept, a direction only the prior identifies, along which NUTS
  mixes slowly. MAP mode balances them without difficulty (see `tests/benchmarks/bench_map.py`).
- Warnings raised during the run: {len(result.warnings)} (listed in the report).
"""
    (HERE / "README.md").write_text(text)
    print(f"wrote {HERE / 'README.md'} in {elapsed:.0f} s; ATT {att['mean']:.3f}")
    assert np.isfinite(att["mean"])


if __name__ == "__main__":
    main()
