"""Partial-pooling simulation study: hierps estimators against known truth.

Reproduces every number and figure of this case study's README::

    python case_studies/partial_pooling_simulation/run_study.py --n 100
    python case_studies/partial_pooling_simulation/run_study.py --n 100 --resume   # continue
    python case_studies/partial_pooling_simulation/run_study.py --summarize-only    # table+fig

For each simulated data set (``hierps.datasets.simulate_multisite``, seeds 0..N-1) it computes
the ATT and the 20 school CATTs with

* MAP balancing weights at sigma_beta = 30 (no pooling), 1 (the default), 0.3 and 0.01
  (complete pooling), with normal 90 % intervals from
  ``hierps.effects.catt_pooling.map_standard_errors``;
* the posterior of the Bernoulli model (half-normal hyperpriors on sigma_alpha, sigma_beta),
  sampled once with nutpie, summarized with ``uncertainty="propensity"`` and
  ``"bayesian_bootstrap"`` via ``hierps.posterior.from_idata``;
* the generalized posterior under the calibrated loss (``loss="calibrated"``: the MAP
  objective with half-normal hyperpriors on sigma_alpha, sigma_beta, sampled the same way),
  with the Bayesian bootstrap;
* each of the above with and without augmentation by a Bayesian outcome model (a conjugate
  Gibbs sampler of the default hierps outcome model ``y ~ x + v + (1 | school)`` fit on the
  controls; see ``gibbs_outcome_model``).

The NUTS model is compiled once (nutpie/numba) and re-used for every data set through
``CompiledModel.with_data``: the PyMC model keeps its data in ``pm.Data`` containers and every
data set has the same 20 schools and the same covariates (unit counts may differ).

Results are appended to ``results/per_dataset.csv`` after each data set, so an interrupted
run is usable (``--resume`` skips the seeds already there).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

# One thread each for BLAS/numba: the machine is shared.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FIGURES = HERE / "figures"
PER_DATASET = RESULTS / "per_dataset.csv"
DIAGNOSTICS = RESULTS / "diagnostics.csv"
SUMMARY = RESULTS / "summary.csv"
SUMMARY_MD = RESULTS / "summary.md"
FIGURE = FIGURES / "rmse_coverage.png"

# ---- settings (the README quotes these) -----------------------------------------------------
SIM = dict(
    n_groups=20,
    group_size=(30, 80),
    n_unit_covariates=3,
    n_group_covariates=2,
    # simulator defaults, stated for the record
    sigma_alpha=1.0,
    sigma_beta=0.5,
    sigma_tau=0.5,
)
MAP_SIGMA_BETA = {
    "MAP no pooling (σβ=30)": 30.0,
    "MAP σβ=1 (default)": 1.0,
    "MAP σβ=0.3": 0.3,
    "MAP complete pooling (σβ=0.01)": 0.01,
}
DRAWS, TUNE, CHAINS = 400, 400, 2
OUTCOME_BURN, OUTCOME_DRAWS = 300, DRAWS * CHAINS  # Gibbs: one outcome draw per NUTS draw
Z90 = 1.6448536269514722  # normal quantile of a 90 % two-sided interval
CI = 0.9

POSTERIOR_METHODS = {
    "Posterior, propensity": "propensity",
    "Posterior, Bayesian bootstrap": "bayesian_bootstrap",
}
#: The generalized posterior exp(−calibrated loss) × prior, with the Bayesian bootstrap, at the
#: MAP's default scales: with half-normal hyperpriors on σ_α, σ_β it is improper (the loss is
#: unbounded below where a school's treated and controls separate, and exp(linear) × N(0, σ²)
#: integrates to exp(c²σ²/2), which outgrows the hyperprior): in 49 data sets the chains
#: stuck (median max R-hat 3.05, ~500 of 800 transitions divergent).
CALIBRATED_SIGMA = {"sigma_alpha": 1.0, "sigma_beta": 1.0}
CALIBRATED_METHODS = {"Calibrated-loss posterior σβ=1, Bayesian bootstrap": "bayesian_bootstrap"}
BASE_METHODS = [*MAP_SIGMA_BETA, *POSTERIOR_METHODS, *CALIBRATED_METHODS]
COLUMNS = [
    "seed",
    "method",
    "target",
    "truth",
    "estimate",
    "lower",
    "upper",
    "lower_outcome_only",
    "upper_outcome_only",
]


# ---------------------------------------------------------------------------------------------
# Outcome model: conjugate Gibbs sampler of y ~ 1 + x + v + (1 | school) on the controls
# ---------------------------------------------------------------------------------------------


def gibbs_outcome_model(design, n_draws: int, burn: int, seed: int) -> xr.DataArray:
    """Posterior draws of m(x_i) = b0 + x_i'b + v_j'λ + u_j for every unit (controls fit).

    The same regression as ``hierps.effects.outcome.fit_outcome_model``'s default Bambi model (the
    design's standardized unit and group covariates plus a school random intercept), with
    conditionally conjugate priors so that it can be sampled exactly by blocked Gibbs:

        b0, b, λ ~ N(0, 10²);  u_j ~ N(0, σ_u²);  σ_u² ~ InvGamma(1, 1);
        y_i ~ N(m_i, σ²),  p(σ²) ∝ 1/σ².

    Block 1 draws (b0, b, λ, u) jointly from their Gaussian full conditional, block 2 the two
    variances. Returns a DataArray ``(sample, obs)`` as ``OutcomeModel.predictions``.
    """
    rng = np.random.default_rng(seed)
    codes = design.group_codes
    n_groups = design.n_groups
    fixed = np.column_stack(
        [np.ones(design.n_units), design.unit_matrix, design.group_matrix[codes]]
    )
    onehot = np.zeros((design.n_units, n_groups))
    onehot[np.arange(design.n_units), codes] = 1.0
    full = np.hstack([fixed, onehot])
    control = design.treatment == 0
    X, y = full[control], design.outcome[control]
    n, k_fixed = X.shape[0], fixed.shape[1]
    xtx, xty = X.T @ X, X.T @ y
    sigma2, tau2 = float(np.var(y)), 1.0
    keep = np.empty((n_draws, full.shape[1]))
    for it in range(burn + n_draws):
        prior_precision = np.r_[np.full(k_fixed, 1 / 100.0), np.full(n_groups, 1 / tau2)]
        precision = xtx / sigma2 + np.diag(prior_precision)
        chol = np.linalg.cholesky(precision)
        mean = np.linalg.solve(chol.T, np.linalg.solve(chol, xty / sigma2))
        theta = mean + np.linalg.solve(chol.T, rng.standard_normal(len(mean)))
        resid = y - X @ theta
        sigma2 = (resid @ resid / 2) / rng.gamma(n / 2)
        u = theta[k_fixed:]
        tau2 = (1.0 + u @ u / 2) / rng.gamma(1.0 + n_groups / 2)
        if it >= burn:
            keep[it - burn] = theta
    return xr.DataArray(
        keep @ full.T,
        dims=("sample", "obs"),
        coords={"sample": np.arange(n_draws), "obs": list(design.index)},
        name="conditional_mean",
    )


# ---------------------------------------------------------------------------------------------
# MAP intervals
# ---------------------------------------------------------------------------------------------


def att_se(se: np.ndarray, n1: np.ndarray) -> float:
    """ATT standard error from the school SEs: the ATT is Σ_j (n1j/n1) τ̂_j and the schools'
    estimates are independent given the weights, so se² = Σ_j (n1j/n1)² se_j²."""
    share = n1 / n1.sum()
    return float(np.sqrt(np.sum(share**2 * se**2)))


# ---------------------------------------------------------------------------------------------
# One data set
# ---------------------------------------------------------------------------------------------


def rows_for(method, seed, labels, truth_catt, truth_att, catt, lo, hi, att, att_lo, att_hi):
    out = [
        dict(
            seed=seed,
            method=method,
            target="ATT",
            truth=truth_att,
            estimate=att,
            lower=att_lo,
            upper=att_hi,
        )
    ]
    for j, label in enumerate(labels):
        out.append(
            dict(
                seed=seed,
                method=method,
                target=label,
                truth=truth_catt[j],
                estimate=catt[j],
                lower=lo[j],
                upper=hi[j],
            )
        )
    return out


def calibrated_only(seed: int, compiled_calibrated) -> tuple[list[dict], dict]:
    """The calibrated-loss rows of one data set (the same data and outcome draws as run_one)."""
    import hierps

    study = hierps.datasets.simulate_multisite(**SIM, seed=seed)
    design = hierps.Model(
        study.data,
        treatment=study.treatment,
        group=study.group,
        outcome=study.outcome,
        unit_covariates=study.unit_covariates,
        group_covariates=study.group_covariates,
    ).design
    labels = [str(g) for g in design.groups]
    truth_catt = study.catt.reindex(design.groups).to_numpy()
    predictions = gibbs_outcome_model(design, OUTCOME_DRAWS, OUTCOME_BURN, seed=10_000 + seed)
    started = time.perf_counter()
    calibrated = sample_compiled(compiled_calibrated, design, seed)
    calibrated.attrs["hierps_loss"] = "calibrated"
    diag = {
        "seed": seed,
        "calibrated_divergences": int(calibrated["sample_stats"]["diverging"].sum()),
        "seconds_calibrated": time.perf_counter() - started,
    }
    diag["calibrated_max_rhat"], diag["calibrated_min_ess_bulk"] = convergence(calibrated)
    rows = posterior_rows(
        design,
        calibrated,
        CALIBRATED_METHODS,
        seed,
        labels,
        truth_catt,
        float(study.att),
        predictions,
    )
    return rows, diag


def run_one(seed: int, compiled, compiled_calibrated) -> tuple[list[dict], dict]:

    import hierps
    from hierps.effects.catt_pooling import hajek_standard_errors, map_standard_errors

    t_start = time.perf_counter()
    study = hierps.datasets.simulate_multisite(**SIM, seed=seed)
    model = hierps.Model(
        study.data,
        treatment=study.treatment,
        group=study.group,
        outcome=study.outcome,
        unit_covariates=study.unit_covariates,
        group_covariates=study.group_covariates,
    )
    design = model.design
    labels = [str(g) for g in design.groups]
    truth_catt = study.catt.reindex(design.groups).to_numpy()
    truth_att = float(study.att)
    n1 = design.treated_per_group.astype(float)
    rows: list[dict] = []
    diag: dict = dict(seed=seed, n_units=design.n_units, n_treated=int(n1.sum()))

    # --- outcome model (shared by all augmented estimators) ---------------------------------
    predictions = gibbs_outcome_model(design, OUTCOME_DRAWS, OUTCOME_BURN, seed=10_000 + seed)
    m_mean = predictions.mean("sample").to_numpy()
    residual = design.outcome - m_mean

    # --- MAP ----------------------------------------------------------------------------------
    for method in MAP_SIGMA_BETA:
        diag[f"{method} failed"] = 0
        diag[f"{method} warnings"] = 0
    for method, sigma_beta in MAP_SIGMA_BETA.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fit = model.fit_map(sigma_beta=sigma_beta)
            except hierps.ConvergenceError:
                diag[f"{method} failed"] = 1
                continue
        diag[f"{method} warnings"] = len(caught)
        w = fit.relative_weights.to_numpy()  # exact where exp(η) underflows in a school
        est = fit.catt["estimate"].to_numpy()
        se = map_standard_errors(fit).to_numpy()
        ase = att_se(se, n1)
        rows += rows_for(
            method,
            seed,
            labels,
            truth_catt,
            truth_att,
            est,
            est - Z90 * se,
            est + Z90 * se,
            fit.att,
            fit.att - Z90 * ase,
            fit.att + Z90 * ase,
        )
        # augmented: point = mean over outcome draws; se² = linearized se of the residual
        # estimator (outcome noise) + variance over outcome-model draws (model uncertainty)
        aug = hierps.augment(fit, predictions)
        a_est = aug["mean"].to_numpy()
        residual_se = hajek_standard_errors(design, w, residual).to_numpy()
        a_se = np.sqrt(residual_se**2 + aug["sd"].to_numpy() ** 2)
        att_info = aug.attrs["att"]
        a_ase = np.sqrt(att_se(residual_se, n1) ** 2 + att_info["sd"] ** 2)
        rows += rows_for(
            method + " + aug",
            seed,
            labels,
            truth_catt,
            truth_att,
            a_est,
            a_est - Z90 * a_se,
            a_est + Z90 * a_se,
            att_info["mean"],
            att_info["mean"] - Z90 * a_ase,
            att_info["mean"] + Z90 * a_ase,
        )
        # the library's own augment_map interval (weights fixed: outcome-model draws only)
        for r, lo, hi in zip(
            rows[-(len(labels) + 1) :],
            [att_info["lower"], *aug["lower"]],
            [att_info["upper"], *aug["upper"]],
            strict=True,
        ):
            r["lower_outcome_only"], r["upper_outcome_only"] = lo, hi
    t_map = time.perf_counter()

    # --- posterior: sample once with the compiled model, new data -------------------------
    # The containers the compiled density reads: the likelihood's (group, covariate pattern)
    # counts and the school covariates (the unit-level record is not part of it).
    idata = sample_compiled(compiled, design, seed)
    t_nuts = time.perf_counter()
    diag["divergences"] = int(idata["sample_stats"]["diverging"].sum())
    diag["max_rhat"], diag["min_ess_bulk"] = convergence(idata)
    rows += posterior_rows(
        design, idata, POSTERIOR_METHODS, seed, labels, truth_catt, truth_att, predictions
    )
    calibrated = sample_compiled(compiled_calibrated, design, seed)
    calibrated.attrs["hierps_loss"] = "calibrated"
    t_calibrated = time.perf_counter()
    diag["calibrated_divergences"] = int(calibrated["sample_stats"]["diverging"].sum())
    diag["calibrated_max_rhat"], diag["calibrated_min_ess_bulk"] = convergence(calibrated)
    rows += posterior_rows(
        design, calibrated, CALIBRATED_METHODS, seed, labels, truth_catt, truth_att, predictions
    )
    t_end = time.perf_counter()
    diag.update(
        seconds_total=t_end - t_start,
        seconds_map=t_map - t_start,
        seconds_nuts=t_nuts - t_map,
        seconds_calibrated=t_calibrated - t_nuts,
    )
    return rows, diag


def sample_compiled(compiled, design, seed: int) -> xr.DataTree:
    """Sample a model compiled once, on this data set's containers."""
    import nutpie

    from hierps.pymc_model import pattern_data

    # The containers the compiled density reads: the likelihood's (group, covariate pattern)
    # counts and the school covariates (the unit-level record is not part of it).
    used = {variable.name for variable in compiled.shared_var_keys}
    data_model = compiled.with_data(
        **{name: value for name, value in pattern_data(design).items() if name in used}
    )
    return nutpie.sample(
        data_model, draws=DRAWS, tune=TUNE, chains=CHAINS, cores=1, seed=seed, progress_bar=False
    )


def convergence(idata) -> tuple[float, float]:
    """Largest R-hat and smallest bulk ESS over alpha, beta and the scales (where sampled)."""
    import arviz as az

    posterior = idata["posterior"].to_dataset()
    names = [n for n in ("alpha", "beta", "sigma_alpha", "sigma_beta") if n in posterior]
    posterior = posterior[names]
    rhat = az.rhat(posterior)
    ess = az.ess(posterior, method="bulk")
    return (
        float(max(float(rhat[v].max()) for v in rhat.data_vars)),
        float(min(float(ess[v].min()) for v in ess.data_vars)),
    )


def posterior_rows(design, idata, methods, seed, labels, truth_catt, truth_att, predictions):
    """Rows of the posterior estimators of one sampled posterior, plain and augmented."""
    import hierps
    from hierps.posterior.draws import from_idata

    rows: list[dict] = []
    for method, uncertainty in methods.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = from_idata(design, idata, uncertainty=uncertainty, random_seed=seed)
            catt, att = result.catt, result.att.iloc[0]
            rows += rows_for(
                method,
                seed,
                labels,
                truth_catt,
                truth_att,
                catt["mean"].to_numpy(),
                catt["lower"].to_numpy(),
                catt["upper"].to_numpy(),
                att["mean"],
                att["lower"],
                att["upper"],
            )
            aug = hierps.augment(result, predictions)
        a = aug.attrs["att"]
        rows += rows_for(
            method + " + aug",
            seed,
            labels,
            truth_catt,
            truth_att,
            aug["mean"].to_numpy(),
            aug["lower"].to_numpy(),
            aug["upper"].to_numpy(),
            a["mean"],
            a["lower"],
            a["upper"],
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Summary and figure
# ---------------------------------------------------------------------------------------------


def summarize(per: pd.DataFrame) -> pd.DataFrame:
    per = per.assign(
        level=np.where(per["target"] == "ATT", "ATT", "CATT"),
        error=per["estimate"] - per["truth"],
        covered=(per["lower"] <= per["truth"]) & (per["truth"] <= per["upper"]),
        width=per["upper"] - per["lower"],
    )
    # An estimate or interval that came out NaN (MAP weights that underflowed to 0 in a school,
    # see README) is counted in n_nan and left out of the other statistics.
    per["nan"] = per[["estimate", "lower", "upper"]].isna().any(axis=1)
    n_nan = per.groupby(["level", "method"], sort=False)["nan"].sum()
    per = per[~per["nan"]]
    groups = per.groupby(["level", "method"], sort=False)
    table = groups.agg(
        n=("error", "size"),
        bias=("error", "mean"),
        rmse=("error", lambda e: float(np.sqrt(np.mean(e**2)))),
        coverage=("covered", "mean"),
        mean_width=("width", "mean"),
    )
    # Monte Carlo SE of the coverage (binomial; for CATTs it ignores within-data-set correlation)
    table["n_nan"] = n_nan.reindex(table.index).fillna(0).astype(int)
    table["coverage_mcse"] = np.sqrt(table["coverage"] * (1 - table["coverage"]) / table["n"])
    if "lower_outcome_only" in per:
        sub = per.dropna(subset=["lower_outcome_only"])
        cov = (sub["lower_outcome_only"] <= sub["truth"]) & (
            sub["truth"] <= sub["upper_outcome_only"]
        )
        table["coverage_outcome_only_interval"] = (
            cov.groupby([sub["level"], sub["method"]]).mean().reindex(table.index)
        )
    order = [m + s for m in BASE_METHODS for s in ("", " + aug")]
    table = table.reset_index()
    table["method"] = pd.Categorical(table["method"], order, ordered=True)
    return table.sort_values(["level", "method"]).reset_index(drop=True)


def markdown(table: pd.DataFrame) -> str:
    lines = []
    for level in ("ATT", "CATT"):
        sub = table[table["level"] == level]
        lines.append(
            f"**{level}** ({int((sub['n'] + sub['n_nan']).iloc[0])} estimates per method)\n"
        )
        lines.append("| method | bias | RMSE | coverage of 90 % interval | mean width | NaN |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for _, r in sub.iterrows():
            lines.append(
                f"| {r['method']} | {r['bias']:+.3f} | {r['rmse']:.3f} | "
                f"{r['coverage']:.1%} (±{r['coverage_mcse']:.1%}) | "
                f"{r['mean_width']:.2f} | {r['n_nan']} |"
            )
        lines.append("")
    return "\n".join(lines)


def figure(table: pd.DataFrame, n_sets: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharey=True)
    ypos = np.arange(len(BASE_METHODS))[::-1]
    for col, level in enumerate(("CATT", "ATT")):
        sub = table[table["level"] == level].set_index("method")
        for row, (stat, label) in enumerate(
            (("rmse", "RMSE"), ("coverage", "coverage of 90 % interval"))
        ):
            ax = axes[row, col]
            for suffix, marker, color, name, dy in (
                ("", "o", "tab:blue", "weighting only", 0.12),
                (" + aug", "s", "tab:orange", "augmented", -0.12),
            ):
                vals = [
                    sub.loc[m + suffix, stat] if m + suffix in sub.index else np.nan
                    for m in BASE_METHODS
                ]
                ax.plot(vals, ypos + dy, marker, color=color, label=name, ms=8)
                for y, v in zip(ypos + dy, vals, strict=True):
                    if np.isfinite(v):
                        ax.annotate(
                            f"{v:.0%}" if stat == "coverage" else f"{v:.3f}",
                            (v, y),
                            xytext=(6, -4),
                            textcoords="offset points",
                            fontsize=8,
                        )
            if stat == "coverage":
                ax.axvspan(0.85, 0.95, color="0.9", zorder=0)
                ax.axvline(0.9, color="k", lw=0.8, ls="--")
                lo = np.nanmin(sub["coverage"]) - 0.05
                ax.set_xlim(min(lo, 0.8), 1.04)
            else:
                ax.set_xlim(0, np.nanmax(sub["rmse"]) * 1.25)
            ax.set_title(f"{level}: {label}")
            ax.set_yticks(ypos, BASE_METHODS)
            ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=9)
    fig.suptitle(
        f"hierps estimators on {n_sets} simulated studies (20 schools of 30–80 students);"
        " shaded: 85–95 % coverage",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=130)
    plt.close(fig)


def write_summary() -> pd.DataFrame:
    per = pd.read_csv(PER_DATASET)
    table = summarize(per)
    table.to_csv(SUMMARY, index=False, float_format="%.5g")
    n_sets = per["seed"].nunique()
    text = f"{n_sets} data sets (seeds {per['seed'].min()}..{per['seed'].max()})\n\n" + markdown(
        table
    )
    SUMMARY_MD.write_text(text)
    figure(table, n_sets)
    return table


# ---------------------------------------------------------------------------------------------


def recompute_calibrated(seeds: list[int], compiled_calibrated, t0: float) -> None:
    """Replace the calibrated-loss rows of ``seeds`` in the CSVs, data set by data set; the
    seeds not reached keep no calibrated rows (the summary counts the data sets per method)."""
    per = pd.read_csv(PER_DATASET)
    per = per[~per["method"].str.startswith("Calibrated")]
    diagnostics = pd.read_csv(DIAGNOSTICS)
    diagnostics = diagnostics.drop(
        columns=[c for c in diagnostics if c.startswith(("calibrated_", "seconds_calibrated"))]
    )
    per.to_csv(PER_DATASET, index=False, float_format="%.6g")
    diagnostics.to_csv(DIAGNOSTICS, index=False, float_format="%.6g")
    new: list[dict] = []
    for seed in seeds:
        rows, diag = calibrated_only(seed, compiled_calibrated)
        pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(
            PER_DATASET, mode="a", header=False, index=False, float_format="%.6g"
        )
        new.append(diag)
        diagnostics.merge(pd.DataFrame(new), on="seed", how="left").to_csv(
            DIAGNOSTICS, index=False, float_format="%.6g"
        )
        print(
            f"seed {seed}: calibrated {diag['seconds_calibrated']:.1f} s, "
            f"{diag['calibrated_divergences']} divergences, max R-hat "
            f"{diag['calibrated_max_rhat']:.3f}; elapsed {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    write_summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="number of data sets (seeds 0..n-1)")
    parser.add_argument("--resume", action="store_true", help="skip seeds already in the CSV")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument(
        "--calibrated-only",
        action="store_true",
        help="recompute only the calibrated-loss rows of the data sets already in the CSV",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    FIGURES.mkdir(exist_ok=True)
    if args.summarize_only:
        print(SUMMARY_MD.read_text() if write_summary() is not None else "")
        return

    import nutpie

    import hierps
    from hierps.pymc_model import build_pymc

    done: set[int] = set()
    if args.calibrated_only:
        done = set(pd.read_csv(PER_DATASET, usecols=["seed"])["seed"].unique())
    elif args.resume and PER_DATASET.exists():
        done = set(pd.read_csv(PER_DATASET, usecols=["seed"])["seed"].unique())
    elif PER_DATASET.exists():
        PER_DATASET.unlink()
        DIAGNOSTICS.unlink(missing_ok=True)

    t0 = time.perf_counter()
    template = hierps.datasets.simulate_multisite(**SIM, seed=0)
    template_design = hierps.Model(
        template.data,
        treatment="z",
        group="school",
        outcome="y",
        unit_covariates=template.unit_covariates,
        group_covariates=template.group_covariates,
    ).design
    compiled = nutpie.compile_pymc_model(build_pymc(template_design, loss="bernoulli"))
    # The generalized posterior: the calibrated loss at the MAP's default scales.
    compiled_calibrated = nutpie.compile_pymc_model(
        build_pymc(template_design, loss="calibrated", coding="identified", **CALIBRATED_SIGMA)
    )
    print(f"compiled the NUTS models once in {time.perf_counter() - t0:.1f} s", flush=True)

    if args.calibrated_only:
        recompute_calibrated(sorted(done)[: args.n], compiled_calibrated, t0)
        return
    for seed in range(args.n):
        if seed in done:
            continue
        rows, diag = run_one(seed, compiled, compiled_calibrated)
        pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(
            PER_DATASET, mode="a", header=not PER_DATASET.exists(), index=False, float_format="%.6g"
        )
        pd.DataFrame([diag]).to_csv(
            DIAGNOSTICS, mode="a", header=not DIAGNOSTICS.exists(), index=False, float_format="%.6g"
        )
        print(
            f"seed {seed}: {diag['seconds_total']:.1f} s (NUTS {diag['seconds_nuts']:.1f} s, "
            f"{diag['divergences']} divergences, max R-hat {diag['max_rhat']:.3f}); "
            f"elapsed {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    write_summary()
    print(SUMMARY_MD.read_text())
    print(f"total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
