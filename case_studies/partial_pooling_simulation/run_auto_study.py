"""Empirical-Bayes pooling ("auto") against a fixed grid of sigma_beta, across designs.

MAP mode only. For three designs of slope heterogeneity (the simulator's random-slope SD
``sigma_beta`` = 0.1, 0.5 and 1.5; everything else as in ``run_study.py``), and for each
simulated data set (seeds 0..N-1), it computes the ATT and the school CATTs with

* MAP balancing weights at fixed sigma_beta in {0.01, 0.1, 0.3, 1, 3, 30} (sigma_alpha = 1);
* ``fit_map(sigma_alpha="auto", sigma_beta="auto")``: both scales by the Laplace marginal
  likelihood of the Bernoulli hierarchical model;

with normal 90 % intervals from ``hierps.effects.catt_pooling.map_standard_errors``, and writes
``results/auto_per_dataset.csv``, ``results/auto_summary.csv`` and ``results/auto_summary.md``::

    python case_studies/partial_pooling_simulation/run_auto_study.py --n 200
    python case_studies/partial_pooling_simulation/run_auto_study.py --summarize-only
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PER_DATASET = RESULTS / "auto_per_dataset.csv"
SUMMARY = RESULTS / "auto_summary.csv"
SUMMARY_MD = RESULTS / "auto_summary.md"

SIM = dict(n_groups=20, group_size=(30, 80), n_unit_covariates=3, n_group_covariates=2)
DESIGNS = {"little (σβ=0.1)": 0.1, "moderate (σβ=0.5)": 0.5, "strong (σβ=1.5)": 1.5}
GRID = (0.01, 0.1, 0.3, 1.0, 3.0, 30.0)
AUTO = "auto"
Z90 = 1.6448536269514722


def method_name(sigma_beta: float) -> str:
    return f"σβ={sigma_beta:g}"


def run_one(design_name: str, true_sigma_beta: float, seed: int) -> list[dict]:
    import hierps
    from hierps.effects.catt_pooling import map_standard_errors

    study = hierps.datasets.simulate_multisite(**SIM, sigma_beta=true_sigma_beta, seed=seed)
    model = hierps.Model(
        study.data,
        treatment=study.treatment,
        group=study.group,
        outcome=study.outcome,
        unit_covariates=study.unit_covariates,
        group_covariates=study.group_covariates,
    )
    design = model.design
    truth_catt = study.catt.reindex(design.groups).to_numpy()
    truth_att = float(study.att)
    n1 = design.treated_per_group.astype(float)
    share = n1 / n1.sum()
    rows: list[dict] = []
    settings = [(method_name(s), dict(sigma_beta=s)) for s in GRID]
    settings.append((AUTO, dict(sigma_alpha="auto", sigma_beta="auto")))
    for method, options in settings:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fit = model.fit_map(**options)
            except hierps.ConvergenceError:
                rows.append(dict(design=design_name, seed=seed, method=method, failed=1))
                continue
        seconds = time.perf_counter() - start
        est = fit.catt["estimate"].to_numpy()
        se = map_standard_errors(fit).to_numpy()
        att_se = float(np.sqrt(np.nansum(share**2 * se**2)))
        common = dict(
            design=design_name,
            seed=seed,
            method=method,
            failed=0,
            seconds=seconds,
            sigma_alpha=fit.hyperparameters.sigma_alpha,
            sigma_beta=float(np.mean(fit.hyperparameters.sigma_beta)),
        )
        rows.append(
            dict(
                **common,
                target="ATT",
                truth=truth_att,
                estimate=fit.att,
                lower=fit.att - Z90 * att_se,
                upper=fit.att + Z90 * att_se,
            )
        )
        for j, label in enumerate(design.groups):
            rows.append(
                dict(
                    **common,
                    target=str(label),
                    truth=truth_catt[j],
                    estimate=est[j],
                    lower=est[j] - Z90 * se[j],
                    upper=est[j] + Z90 * se[j],
                )
            )
    return rows


def summarize(per: pd.DataFrame) -> pd.DataFrame:
    per = per[per["failed"] == 0].assign(
        level=lambda d: np.where(d["target"] == "ATT", "ATT", "CATT"),
        error=lambda d: d["estimate"] - d["truth"],
        covered=lambda d: (d["lower"] <= d["truth"]) & (d["truth"] <= d["upper"]),
    )
    grouped = per.groupby(["design", "method", "level"], sort=False)
    table = grouped.agg(
        rmse=("error", lambda e: float(np.sqrt(np.nanmean(e**2)))),
        bias=("error", "mean"),
        coverage=("covered", "mean"),
        datasets=("seed", "nunique"),
    ).reset_index()
    chosen = (
        per[per["method"] == AUTO]
        .drop_duplicates(["design", "seed"])
        .groupby("design")[["sigma_alpha", "sigma_beta"]]
        .median()
    )
    table.attrs["chosen"] = chosen
    return table


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """RMSE of "auto" over the best fixed sigma_beta of the grid, per design and level."""
    out = []
    for (design, level), rows in table.groupby(["design", "level"], sort=False):
        fixed = rows[rows["method"] != AUTO]
        best = fixed.loc[fixed["rmse"].idxmin()]
        auto = rows[rows["method"] == AUTO]["rmse"].iloc[0]
        default = rows[rows["method"] == method_name(1.0)]["rmse"].iloc[0]
        out.append(
            dict(
                design=design,
                level=level,
                best_fixed=best["method"],
                best_rmse=best["rmse"],
                auto_rmse=auto,
                auto_over_best=auto / best["rmse"],
                default_rmse=default,
                auto_over_default=auto / default,
            )
        )
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    wide = table.pivot_table(
        index=["design", "method"],
        columns="level",
        values=["rmse", "bias", "coverage"],
        sort=False,
    )
    wide.columns = [f"{level} {stat}" for stat, level in wide.columns]
    columns = [f"{lvl} {s}" for lvl in ("ATT", "CATT") for s in ("rmse", "bias", "coverage")]
    wide = wide[columns].reset_index()
    lines = ["| design | method | " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * (len(columns) + 2))
    for _, row in wide.iterrows():
        values = " | ".join(f"{row[c]:.3f}" for c in columns)
        lines.append(f"| {row['design']} | {row['method']} | {values} |")
    lines += [
        "",
        "| design | level | best fixed | its RMSE | auto RMSE | auto / best | "
        "σβ=1 RMSE | auto / σβ=1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in ratios(table).iterrows():
        lines.append(
            f"| {r['design']} | {r['level']} | {r['best_fixed']} | {r['best_rmse']:.3f} | "
            f"{r['auto_rmse']:.3f} | {r['auto_over_best']:.2f} | {r['default_rmse']:.3f} | "
            f"{r['auto_over_default']:.2f} |"
        )
    chosen = table.attrs.get("chosen")
    if chosen is not None:
        lines += ["", "| design | median σα chosen | median σβ chosen |", "|---|---|---|"]
        for design, r in chosen.iterrows():
            lines.append(f"| {design} | {r['sigma_alpha']:.3g} | {r['sigma_beta']:.3g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="data sets per design")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if not args.summarize_only:
        rows: list[dict] = []
        for design_name, sigma_beta in DESIGNS.items():
            start = time.perf_counter()
            for seed in range(args.n):
                rows += run_one(design_name, sigma_beta, seed)
            print(f"{design_name}: {args.n} data sets in {time.perf_counter() - start:.0f} s")
            pd.DataFrame(rows).to_csv(PER_DATASET, index=False)
    per = pd.read_csv(PER_DATASET)
    table = summarize(per)
    table.to_csv(SUMMARY, index=False)
    text = markdown(table)
    SUMMARY_MD.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
