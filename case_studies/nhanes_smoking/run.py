"""Smoking and homocysteine in NHANES 2005–2006: natstrat balance formulas as MAP priors.

Reproduces every number and figure of this folder's README:

    .venv/bin/python case_studies/nhanes_smoking/run.py

Compares four sets of control weights on the same covariates: none (unweighted), a plain
logistic-regression propensity score (ATT odds weights), the natstrat constraints of
``age + race + education + povertyr + bmi ~ 1 + strata`` fitted as calibrated-loss priors
(``hierps.constraint_weights``), and the hierarchical model with strata as groups
(``hierps.Model.fit_map``).
"""

from __future__ import annotations

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


def effect(frame: pd.DataFrame, weights: np.ndarray) -> float:
    treated = frame["z"].to_numpy() == 1
    y = frame["homocysteine"].to_numpy()
    return y[treated].mean() - np.average(y[~treated], weights=weights[~treated])


def main() -> None:
    frame = load()
    weights = survey_weight_column(frame)
    print(
        f"survey weights: {weights}"
        if weights
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
            weights=weights,
        )
        constraints = hierps.generate_constraints([FORMULA], frame["z"], frame)
        natstrat = hierps.constraint_weights(constraints, frame["z"], scale=1.0)
        hierarchical = model.fit_map()
        # The same model with its group-level scales chosen by empirical Bayes.
        auto = model.fit_map(sigma_alpha="auto", sigma_beta="auto")
    design = model.design
    weights = {
        "unweighted": np.ones(design.n_units),
        "logistic IPW": logistic_weights(design),
        "natstrat constraints": natstrat.weights.reindex(design.index).to_numpy(),
        "hierarchical MAP": hierarchical.weights.to_numpy(),
    }
    # One table and one love plot for all four weightings (balance_table's dict form).
    comparison = hierps.balance_table(
        {
            "unweighted": None,
            "logistic IPW": (model, weights["logistic IPW"]),
            "natstrat constraints": (model, natstrat.weights),
            "hierarchical MAP": hierarchical,
        }
    )
    summary = comparison.summary()
    within = comparison.by_group.assign(abs_smd=comparison.by_group["smd_after"].abs())
    within = within.groupby("weighting", observed=True)["abs_smd"]
    table = pd.DataFrame(
        {
            "max abs SMD, overall": summary["max_abs_smd"],
            "mean abs SMD, within strata": within.mean(),
            "max abs SMD, within strata": summary["max_abs_smd_within"],
            "control ESS": summary["ess"],
            "ATT (homocysteine, µmol/L)": pd.Series(
                {label: effect(frame, w) for label, w in weights.items()}
            ),
        }
    )
    table.index.name = "method"
    (HERE / "results").mkdir(exist_ok=True)
    table.to_csv(HERE / "results" / "comparison.csv")
    print(f"{len(constraints.X.columns)} natstrat constraints from {FORMULA!r}")
    print(markdown_table(table))
    chosen = ", ".join(f"{k} = {v:.3g}" for k, v in auto.selection.scales.items())
    print(
        f"empirical-Bayes scales: {chosen}; ATT {effect(frame, auto.weights.to_numpy()):.3f}, "
        f"control ESS {auto.ess:.0f} (defaults: ATT "
        f"{effect(frame, hierarchical.weights.to_numpy()):.3f}, control ESS {hierarchical.ess:.0f})"
    )

    fig, _ = hierps.plots.plot_love(comparison)
    fig.savefig(HERE / "figures" / "love.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
