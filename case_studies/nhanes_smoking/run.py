"""Smoking and homocysteine in NHANES 2005–2006: natstrat selection against balancing weights.

Writes this folder's README (every number in it), ``figures/love.png`` and
``results/comparison.csv``:

    .venv/bin/python case_studies/nhanes_smoking/run.py

Compares, on the same covariates, no adjustment, a plain logistic-regression propensity score
(ATT odds weights), natstrat's control selection (``hierps.optimize_controls`` with ratio 1
and 2, as in natstrat's vignette), the natstrat constraints of
``age + race + education + povertyr + bmi ~ 1 + strata`` fitted as calibrated-loss priors
(``hierps.constraint_weights``), and the hierarchical model with strata as groups
(``hierps.Model.fit_map``).
"""

from __future__ import annotations

import re
import textwrap
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, log_expit

import hierps
from hierps.workflow.report import markdown_table

HERE = Path(__file__).resolve().parent
COVARIATES = ["age", "race", "education", "povertyr", "bmi"]
FORMULA = "age + race + education + povertyr + bmi ~ 1 + strata"
RATIOS = (1, 2)
SEED, RUNS = 1, 10  # randomized rounding: the best of RUNS roundings
MATCHED_SCALE = 0.1
MATCHED = f"MAP, natstrat priors, scale {MATCHED_SCALE:g}"


# The NHANES examination sampling weight (and the interview weight): used as base weights when
# the extract carries one. natstrat's nh0506 extract does not, so the analysis is unweighted.
SURVEY_WEIGHTS = ("WTMEC2YR", "WTINT2YR")


def survey_weight_column(frame: pd.DataFrame) -> str | None:
    """The NHANES sampling-weight column of the frame, if it has one."""
    columns = {str(column).upper(): column for column in frame.columns}
    return next((columns[name] for name in SURVEY_WEIGHTS if name in columns), None)


def load() -> pd.DataFrame:
    frame = hierps.datasets.load_nh0506()
    frame["age_cat"] = pd.cut(
        frame["age"], bins=[19, 39, 50, 85], labels=["< 40 years", "40 - 50 years", "> 50 years"]
    )
    levels = [f"{a}:{s}" for a in frame["age_cat"].cat.categories for s in ["Male", "Female"]]
    frame["strata"] = pd.Categorical(
        frame["age_cat"].astype(str) + ":" + frame["sex"].astype(str), categories=levels
    )
    return frame


def logistic_weights(design) -> np.ndarray:
    """Plain (unpenalized) logistic regression on the encoded covariates: ATT odds weights."""
    x = np.column_stack([np.ones(design.n_units), design.unit_matrix])
    # One-hot levels plus an intercept are collinear: drop each categorical's first level.
    keep = [0] + [
        1 + k
        for k, name in enumerate(design.unit_names)
        if not name.endswith(("[Mexican American]", "[< Grade 9]"))
    ]
    x = x[:, keep]
    t = design.treatment

    def negative_loglik(beta):
        eta = x @ beta
        return -np.sum(t * log_expit(eta) + (1 - t) * log_expit(-eta))

    def gradient(beta):
        return -x.T @ (t - expit(x @ beta))

    beta = minimize(negative_loglik, np.zeros(x.shape[1]), jac=gradient, method="BFGS").x
    odds = np.exp(x @ beta)
    return np.where(t == 1, 1.0, odds)


def effect(frame: pd.DataFrame, weights: pd.Series) -> float:
    """Hájek ATT: treated mean minus weighted control mean (a plain difference in means for
    0/1 weights)."""
    w = weights.reindex(frame.index).to_numpy(dtype=float)
    treated = frame["z"].to_numpy() == 1
    y = frame["homocysteine"].to_numpy()
    return y[treated].mean() - np.average(y[~treated], weights=w[~treated])


def main() -> None:
    start = time.perf_counter()
    frame = load()
    survey_weights = survey_weight_column(frame)
    print(
        f"survey weights: {survey_weights}"
        if survey_weights
        else "survey weights: none in the nh0506 extract (no WTMEC2YR); the analysis is unweighted"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hierps.HierpsWarning)
        model = hierps.Model(
            frame,
            treatment="z",
            group="strata",
            outcome="homocysteine",
            unit_covariates=COVARIATES,
            varying_slopes=None,
            weights=survey_weights,
        )
        constraints = hierps.generate_constraints([FORMULA], frame["z"], frame)
        natstrat = hierps.constraint_weights(constraints, frame["z"], scale=1.0)
        # A smaller prior variance: about the control ESS of the ratio-1 selection.
        matched = hierps.constraint_weights(constraints, frame["z"], scale=MATCHED_SCALE)
        hierarchical = model.fit_map()
        # The same model with its group-level scales chosen by empirical Bayes.
        auto = model.fit_map(sigma_alpha="auto", sigma_beta="auto")
    selections = {
        ratio: hierps.optimize_controls(
            frame["z"],
            constraints.X,
            frame["strata"],
            importances=constraints.importances,
            ratio=ratio,
            seed=SEED,
            runs=RUNS,
        )
        for ratio in RATIOS
    }
    design = model.design
    ipw = pd.Series(logistic_weights(design), index=design.index)
    # One table and one love plot for every method (balance_table's dict form); a selection
    # enters as its 0/1 weights.
    weightings = {
        "unweighted": None,
        "logistic IPW": (model, ipw),
        **{f"selection, ratio {r}": (model, selections[r]) for r in RATIOS},
        "MAP, natstrat priors": (model, natstrat.weights),
        MATCHED: (model, matched.weights),
        "hierarchical MAP": hierarchical,
        "hierarchical MAP, auto scales": auto,
    }
    weights = {
        "unweighted": pd.Series(1.0, index=design.index),
        "logistic IPW": ipw,
        **{f"selection, ratio {r}": selections[r].weights for r in RATIOS},
        "MAP, natstrat priors": natstrat.weights,
        MATCHED: matched.weights,
        "hierarchical MAP": hierarchical.weights,
        "hierarchical MAP, auto scales": auto.weights,
    }
    comparison = hierps.balance_table(weightings)
    summary = comparison.summary()
    within = comparison.by_group.assign(abs_smd=comparison.by_group["smd_after"].abs())
    within = within.groupby("weighting", observed=True)["abs_smd"]
    controls = design.treatment == 0
    table = pd.DataFrame(
        {
            "controls used": pd.Series(
                {
                    k: int((w.reindex(design.index).to_numpy()[controls] > 0).sum())
                    for k, w in weights.items()
                }
            ),
            "control ESS": summary["ess"],
            "max abs SMD, overall": summary["max_abs_smd"],
            "mean abs SMD, within strata": within.mean(),
            "max abs SMD, within strata": summary["max_abs_smd_within"],
            "ATT (homocysteine, µmol/L)": pd.Series(
                {label: effect(frame, w) for label, w in weights.items()}
            ),
        }
    )
    table.index.name = "method"
    (HERE / "results").mkdir(exist_ok=True)
    table.to_csv(HERE / "results" / "comparison.csv")

    # The figure leaves out the ESS-matched weights, close to the others at this scale.
    fig, _ = hierps.plots.plot_love({k: v for k, v in weightings.items() if k != MATCHED})
    fig.savefig(HERE / "figures" / "love.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    elapsed = time.perf_counter() - start
    scales = ", ".join(f"{k} = {v:.3g}" for k, v in auto.selection.scales.items())
    text = readme(frame, constraints, selections, table, elapsed)
    text += (
        f"\n\n## Scales chosen by the data\n\n"
        f'With `sigma_alpha="auto", sigma_beta="auto"` (empirical Bayes: the Laplace-approximate '
        f"marginal likelihood of the Bernoulli model) the hierarchical MAP chose {scales}; its row "
        f'"hierarchical MAP, auto scales" above shows the balance, control ESS and ATT at those '
        f"scales.\n\n"
        + (
            f"The analysis uses the survey weights in `{survey_weights}`.\n"
            if survey_weights
            else "The nh0506 extract carries no NHANES survey weights (no `WTMEC2YR`), so the "
            "analysis is unweighted; with a weight column, `run.py` passes it as `weights=`.\n"
        )
    )
    (HERE / "README.md").write_text(text)
    print(markdown_table(table))
    print(f"wrote {HERE / 'README.md'} in {elapsed:.0f} s")


def readme(frame, constraints, selections, table, elapsed: float) -> str:
    """The README text, every number read from the results."""
    n_treated = int(frame["z"].sum())
    n_control = len(frame) - n_treated
    row = table.loc
    sel = {r: row[f"selection, ratio {r}"] for r in RATIOS}
    att = "ATT (homocysteine, µmol/L)"
    ipw, prior, hier = row["logistic IPW"], row["MAP, natstrat priors"], row["hierarchical MAP"]
    matched = row[MATCHED]
    stratified = table[att].drop(["unweighted", "logistic IPW"])
    low, high = stratified.min(), stratified.max()
    within = "max abs SMD, within strata"
    overall = "max abs SMD, overall"
    rounding = selections[1].rrdetails["method"]
    # The stratum where ratio 2 leaves the least choice: the largest share of controls taken.
    sizes = selections[2].sizes[0]
    available = pd.crosstab(frame["z"], frame["strata"]).loc[sizes.index, sizes.columns]
    share = (sizes / available).loc[0]
    tight = share.idxmax()
    need, have = int(sizes.loc[0, tight]), int(available.loc[0, tight])
    return reflow(f"""# Smoking and homocysteine (NHANES 2005–2006)

{len(frame):,} adults from NHANES 2005–2006 (natstrat's `nh0506`, see
[its terms](../../hierps/datasets/data/nh0506.md)): {n_treated} daily smokers and {n_control:,}
never smokers. Does smoking raise homocysteine? The comparison must balance age, race, education,
income-to-poverty ratio and BMI — and balance them within strata of age category × sex, not only
overall.

natstrat states that wish as a balance formula,

    {FORMULA}

which `hierps.generate_constraints` turns into {constraints.X.shape[1]} constraint columns (each
covariate overall and within each of the 6 strata, plus missingness indicators for `povertyr` and
`bmi`, weighted 50×). The same columns serve two ways of using the controls:

- **Selection** (natstrat's own use): `hierps.optimize_controls(z, constraints.X, strata,
  importances=constraints.importances, ratio=r)` picks, in every stratum, `r` never smokers per
  smoker so that the constraint columns balance (a linear program solved by HiGHS, rounded by
  {rounding} sampling to the exact stratum sizes; best of {RUNS} roundings, seed {SEED}). The
  comparison is then a plain difference in means between the smokers and the selected controls.
- **Weighting**: `hierps.constraint_weights` fits the calibrated loss on the columns, each
  column's coefficient with prior variance `scale × importance`: entropy-balancing weights with
  natstrat's priorities ("MAP, natstrat priors"). The hierarchical model with strata as groups
  (`hierps.Model(..., group="strata").fit_map()`) is the same idea with the priors of the
  hierarchy. A plain logistic-regression propensity score (ATT odds weights) is the usual
  baseline.

Run `.venv/bin/python case_studies/nhanes_smoking/run.py` ({elapsed:.0f} s on a 2-core machine)
to rewrite this file, the figure and `results/comparison.csv`:

{markdown_table(table)}

SMDs use the treated SD of the unweighted sample; "within strata" summarises the 6 strata × 15
encoded covariates. "Controls used" counts controls with a positive weight; control ESS is Kish's
effective sample size of the control weights (for a selection, the number selected). The ATT is
the Hájek estimate (treated mean minus weighted control mean), which for a selection is the
difference in means.

The table comes from one call, `hierps.balance_table({{"unweighted": None,
"logistic IPW": (model, ipw), "selection, ratio 1": (model, selection), ...}})`: user weights and
control selections (`optimize_controls` results, read as 0/1 weights) enter as `(model, …)`
pairs. `hierps.plots.plot_love` draws the same dict (without the `scale = {MATCHED_SCALE:g}`
weights) with a marker per method: filled for the |SMD| over all strata, open for the worst
stratum.

![|SMD| by covariate and method](figures/love.png)

Reading: a plain logistic-regression propensity score balances the covariates overall (max |SMD|
{ipw[overall]:.2f}) but leaves within-stratum imbalances up to {ipw[within]:.2f} SD.

**Selection against weighting.** Selecting one never smoker per smoker uses
{sel[1]["controls used"]:,.0f} of the {n_control:,} never smokers, each counted fully (ESS
{sel[1]["control ESS"]:.0f}): the constraints balance overall (max |SMD| {sel[1][overall]:.2f})
and on average within strata (mean |SMD| {sel[1]["mean abs SMD, within strata"]:.3f}), but the
worst stratum keeps a gap of {sel[1][within]:.2f} SD. Two per smoker double the sample (ESS
{sel[2]["control ESS"]:.0f}) but leave little to choose from: in the stratum {tight} the selection
must take {need} of its {have} never smokers, and balance degrades to max |SMD|
{sel[2][overall]:.2f} overall and {sel[2][within]:.2f} within strata.

The weights with the same
constraints as priors keep every control and make their weights unequal instead: an ESS of
{prior["control ESS"]:.0f}, a little below the ratio-1 selection's {sel[1]["control ESS"]:.0f},
buys a worst within-stratum |SMD| of {prior[within]:.3f} ({hier[within]:.3f} for the
hierarchical MAP, ESS {hier["control ESS"]:.0f}). Weighting moves along the trade-off
between sample size and balance continuously, through the prior variance `scale`; selection
moves in steps set by the ratio. At `scale = {MATCHED_SCALE:g}` the weights have about the
ratio-1 selection's effective sample (ESS
{matched["control ESS"]:.0f} against {sel[1]["control ESS"]:.0f}): they balance more closely
overall (max |SMD| {matched[overall]:.3f} against {sel[1][overall]:.3f}) and in the worst stratum
({matched[within]:.2f} against {sel[1][within]:.2f}), and about as well on average within strata
(mean |SMD| {matched["mean abs SMD, within strata"]:.3f} against
{sel[1]["mean abs SMD, within strata"]:.3f}).

Every method that targets the strata puts the effect between {low:.2f} and {high:.2f} µmol/L
(selections {sel[1][att]:.2f} and {sel[2][att]:.2f}; weights {prior[att]:.2f},
{matched[att]:.2f} and {hier[att]:.2f}), well below the unadjusted difference of
{row["unweighted"][att]:.2f}; the logistic IPW, which ignores the strata, gives
{ipw[att]:.2f}. These are point estimates; `hierps fit
models/nhanes_smoking.toml --out results/nhanes` adds the posterior of the hierarchical model.

For a selection, the SMDs of the table are those of `hierps.check_balance(z, X, strata,
selection.selected)` (natstrat's `sd_across` and `sd_strata`, signed here) for every covariate
without missing values; for `povertyr` and `bmi` they differ slightly, because the balance table
sets missing values to the treated mean (with a missingness indicator) where `check_balance`
leaves them out.
""")


def reflow(text: str, width: int = 100) -> str:
    """Refill prose paragraphs and list items to ``width``; tables, code and images as given."""
    blocks = []
    for block in text.split("\n\n"):
        if block.startswith(("|", "    ", "!", "#")):
            blocks.append(block)
            continue
        items = re.split(r"\n(?=- )", block)
        blocks.append(
            "\n".join(
                textwrap.fill(
                    " ".join(item.split()),
                    width,
                    subsequent_indent="  " if item.startswith("- ") else "",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
                for item in items
            )
        )
    return "\n\n".join(blocks)


if __name__ == "__main__":
    main()
