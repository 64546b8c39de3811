"""Posterior-mode benchmark: hierps' NUTS posterior against Bambi + nutpie on the same model.

Run: ``.venv/bin/python tests/benchmarks/bench_posterior.py [--repeats 3] [--new-data]
[--models numeric c2_categorical] [--chains 4] [--bambi-cores 2]`` (not part of the test
suite; under a minute per fit on two cores).

Data: the learning-mindsets study (10,391 students in 76 schools), treatment ``Z``, the three
student covariates ``S3``, ``C2``, ``C3`` with varying slopes and the school covariates
``X1``–``X5``; 4 chains (``Model.sample``'s default; ``--chains``) × (1,000 tuning + 1,000
kept) draws with nutpie for both peers. Compilation is a fixed cost of a few seconds per fit
for both peers, so shorter runs (``--chains 2``) give smaller ratios on wall time. Two
models: ``numeric`` (C2, a binary code, as a number) and ``c2_categorical`` (C2 declared
categorical: hierps samples both levels in its identified coding, Bambi codes the factor with
reduced rank; the same model for the propensities, so the same CATTs).

Bambi fits ``Z ~ 1 + S3 + C2 + C3 + X1 + … + X5 + (1 + S3 + C2 + C3 | schoolid)``, family
bernoulli, on hierps' standardized covariates with hierps' priors (no centring, no auto-scaling,
non-centred group terms), so both sample the same posterior and the comparison is of the
implementations alone. Bambi's CATTs are computed from its draws with hierps' own estimator
(``alpha_j = Intercept + v_j'γ + (1|schoolid)_j``, ``beta_j = slopes + (x|schoolid)_j``).

Every run is a fresh Python process, so compilation is counted as a user pays it (PyTensor's
on-disk numba cache is warm after the first run of each peer, as on a user's machine after a
first fit; PyMC and nutpie are imported before the clock starts). Peers alternate, hierps
first. Per run it records:

- wall time of the fit call (``model.sample`` / ``bmb.Model(...).fit``) and, inside it, the
  sampler's own time (PyMC's ``sampling_time``: tuning + draws); the rest is compilation and
  set-up, and for hierps also its per-draw CATTs and convergence checks, which Bambi's fit
  does not do; hence also the wall time to the CATTs (Bambi: fit + CATTs from its draws);
- the minimum bulk ESS over the CATTs (propensity uncertainty only, so identical estimators
  for both peers) and over the hyperparameters (``sigma_alpha``, ``sigma_beta``,
  ``intercept``, ``gamma``, ``mu_beta``; Bambi's SDs, intercept and common slopes); the
  minimum over the group-level terms (hierps' ``alpha``, ``beta``; Bambi's ``1|schoolid``,
  ``S3|schoolid``, …); the divergences; the maximum R-hat over all of these;
- min ESS (CATTs and hyperparameters) per second of fit-call wall time, of wall time to the
  CATTs and of sampling time.

The ratios are hierps ÷ Bambi, pair by pair; min and median over the repeats are printed.
hierps runs its chains side by side (``cores = min(chains, CPUs)``); Bambi gets PyMC's default
(half the CPUs: one core here) unless ``--bambi-cores`` is given. ``--new-data`` leaves a
fresh random 20 students out of every run, so that neither peer finds code compiled for its
data in the cache: Bambi builds its design matrices into the graph as constants, and hierps
compiles the data in as constants too (see ``hierps.posterior.run.sample``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr

    import hierps

DRAWS, TUNE, CHAINS = 1000, 1000, 4
UNIT = ["S3", "C2", "C3"]
SCHOOL = ["X1", "X2", "X3", "X4", "X5"]
FORMULA = "Z ~ 1 + S3 + C2 + C3 + X1 + X2 + X3 + X4 + X5 + (1 + S3 + C2 + C3 | schoolid)"
#: The benchmark's models: C2 (binary) as a number, or declared categorical. hierps codes the
#: factor with both levels in the identified coding; Bambi with reduced rank (level 1 against
#: level 0), in the common and the school-level terms alike. The formula is the same.
MODELS = {"numeric": [], "c2_categorical": ["C2"]}


# --------------------------------------------------------------------------------------------
# Child processes: one fit each, a JSON line on stdout
# --------------------------------------------------------------------------------------------


def _model(drop_seed: int | None = None, model: str = "numeric") -> hierps.Model:
    """The benchmark's hierps model (hierps is imported in the children only).

    With ``drop_seed``, 20 students chosen by that seed are left out: data that no earlier
    run compiled, as on a user's first fit of a new data set.
    """
    import hierps

    data = hierps.datasets.load_learning_mindsets()
    if drop_seed is not None:
        dropped = data.sample(20, random_state=drop_seed).index
        data = data.drop(index=dropped)
    return hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        outcome="Y",
        unit_covariates=UNIT,
        group_covariates=SCHOOL,
        categorical=MODELS[model],
    )


def _extreme(data: xr.Dataset, statistic: str) -> float:
    """Smallest bulk ESS or largest R-hat over every entry of every variable of ``data``.

    NaN entries (the CATT of a school without controls, had there been one) are skipped.
    """
    import arviz as az
    import numpy as np

    if statistic == "ess":
        values = az.ess(data, method="bulk")
        return float(min(np.nanmin(values[name].to_numpy()) for name in data.data_vars))
    values = az.rhat(data)
    return float(max(np.nanmax(values[name].to_numpy()) for name in data.data_vars))


def _summary(
    posterior: xr.Dataset,
    catt: xr.DataArray,
    hyper: list[str],
    group_terms: list[str],
    sample_stats: xr.Dataset,
) -> dict[str, float]:
    """Minimum bulk ESS (CATTs, hyperparameters, group-level terms), maximum R-hat over all
    of them, and the divergences of one run."""
    catts = catt.to_dataset(name="catt")
    return {
        "ess_catt": _extreme(catts, "ess"),
        "ess_hyper": _extreme(posterior[hyper], "ess"),
        "ess_group_terms": _extreme(posterior[group_terms], "ess"),
        "rhat": max(_extreme(posterior[hyper + group_terms], "rhat"), _extreme(catts, "rhat")),
        "divergences": int(sample_stats["diverging"].sum()),
    }


def _preload() -> None:
    """Import the sampling stack before the clock starts, for both peers alike."""
    import nutpie  # noqa: F401
    import pymc  # noqa: F401


def child_hierps(seed: int, drop_seed: int | None, model_name: str) -> dict:
    import warnings

    from hierps.exceptions import HierpsWarning
    from hierps.posterior.draws import from_idata

    _preload()
    model = _model(drop_seed, model_name)
    design = model.design
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = model.sample(draws=DRAWS, tune=TUNE, chains=CHAINS, random_seed=seed)
    wall = time.perf_counter() - started
    idata = result.idata
    posterior = idata["posterior"].to_dataset()
    # The per-draw CATTs once more, to split their cost from compilation in the wall time.
    started = time.perf_counter()
    propensity = from_idata(design, idata, uncertainty="propensity")
    estimands_seconds = time.perf_counter() - started
    summary = _summary(
        posterior,
        propensity.idata["estimands"]["catt"],
        ["sigma_alpha", "sigma_beta", "intercept", "gamma", "mu_beta"],
        ["alpha", "beta"],
        idata["sample_stats"].to_dataset(),
    )
    summary["ess_catt_bootstrap"] = _extreme(idata["estimands"].to_dataset()[["catt"]], "ess")
    return {
        "wall": wall,
        "sampling": float(posterior.attrs["sampling_time"]),
        "estimands": estimands_seconds,
        "n_patterns": len(idata["constant_data"]["pattern_group"]),
        **summary,
    }


def child_bambi(seed: int, drop_seed: int | None, cores: int | None, model_name: str) -> dict:
    import warnings

    import bambi as bmb
    import numpy as np
    import pandas as pd
    import xarray as xr

    from hierps.exceptions import HierpsWarning
    from hierps.posterior.draws import from_idata

    _preload()
    hierps_model = _model(drop_seed, model_name)
    design = hierps_model.design
    categorical = MODELS[model_name]
    schools = np.asarray(design.groups).astype(str)
    # hierps' standardized covariates, the school ones repeated on their students.
    frame = pd.concat(
        [
            design.unit_frame(),
            pd.DataFrame(
                design.group_matrix[design.group_codes],
                index=design.index,
                columns=list(design.group_names),
            ),
        ],
        axis=1,
    )
    for name in categorical:
        # Bambi codes a categorical column with reduced rank (its first level the reference).
        raw = hierps_model.data.loc[design.index, name]
        frame[name] = pd.Categorical(raw.astype(int).astype(str))
    frame["Z"] = design.treatment.astype(int)
    frame["schoolid"] = pd.Categorical(schools[design.group_codes], categories=schools)
    # hierps' priors: intercept N(0, 2.5²), common slopes N(0, 1), SDs HalfNormal(1).
    hyperprior = bmb.Prior("HalfNormal", sigma=1.0)
    priors = {
        "Intercept": bmb.Prior("Normal", mu=0.0, sigma=2.5),
        **{name: bmb.Prior("Normal", mu=0.0, sigma=1.0) for name in UNIT + SCHOOL},
        **{
            f"{term}|schoolid": bmb.Prior("Normal", mu=0.0, sigma=hyperprior)
            for term in ["1", *UNIT]
        },
    }
    started = time.perf_counter()
    reference = bmb.Model(
        FORMULA,
        frame,
        family="bernoulli",
        priors=priors,
        center_predictors=False,
        auto_scale=False,
        noncentered=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = reference.fit(
            draws=DRAWS,
            tune=TUNE,
            chains=CHAINS,
            random_seed=seed,
            inference_method="nutpie",
            progressbar=False,
            **({} if cores is None else {"cores": cores}),
        )
    wall = time.perf_counter() - started

    # hierps' coefficients from Bambi's terms, then hierps' estimator of the CATTs.
    started = time.perf_counter()
    posterior = idata["posterior"].to_dataset()
    posterior = posterior.rename({"schoolid__factor_dim": "group"}).sel(group=list(schools))
    posterior = posterior.assign_coords(group=list(design.groups))
    gamma = xr.concat([posterior[name] for name in SCHOOL], dim="group_covariate")
    school_effect = xr.dot(
        gamma, xr.DataArray(design.group_matrix, dims=("group", "group_covariate"))
    )
    alpha = posterior["Intercept"] + school_effect + posterior["1|schoolid"]
    slopes = {}
    for name in UNIT:
        slope = posterior[name] + posterior[f"{name}|schoolid"]
        if name not in categorical:
            slopes[name] = slope
            continue
        # Bambi's slope b of the second level's indicator d (the first level is its
        # reference): b·d = b·s·x + b·c on hierps' standardized column x = (d − c)/s of that
        # level, and the reference level gets slope 0.
        slope = slope.squeeze([dim for dim in slope.dims if dim not in ("chain", "draw", "group")])
        reference, level = [n for n in design.unit_names if design.unit_sources[n] == name]
        center, scale = design.unit_scaling.loc[level, ["center", "scale"]]
        slopes[reference] = xr.zeros_like(slope)
        slopes[level] = slope * scale
        alpha = alpha + slope * center
    names = list(design.unit_names)
    beta = xr.concat([slopes[name] for name in names], dim="unit_covariate").assign_coords(
        unit_covariate=names
    )
    coefficients = xr.Dataset(
        {
            "alpha": alpha.transpose("chain", "draw", "group"),
            "beta": beta.transpose("chain", "draw", "group", "unit_covariate"),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        catt = from_idata(
            design, xr.DataTree.from_dict({"posterior": coefficients}), uncertainty="propensity"
        ).idata["estimands"]["catt"]
    catt_seconds = time.perf_counter() - started
    sigmas = [f"{term}|schoolid_sigma" for term in ["1", *UNIT]]
    summary = _summary(
        posterior,
        catt,
        ["Intercept", *UNIT, *SCHOOL, *sigmas],
        [f"{term}|schoolid" for term in ["1", *UNIT]],
        idata["sample_stats"].to_dataset(),
    )
    return {
        "wall": wall,
        "to_catts": wall + catt_seconds,
        "sampling": float(posterior.attrs["sampling_time"]),
        **summary,
    }


# --------------------------------------------------------------------------------------------
# Parent: alternate the peers, print the figures and the ratios
# --------------------------------------------------------------------------------------------


def run_child(
    peer: str, seed: int, new_data: bool, bambi_cores: int | None, model: str = "numeric"
) -> dict:
    """One fit in a fresh interpreter; its figures plus the min-ESS rates."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", peer, "--seed", str(seed)]
    command += ["--model", model, "--chains", str(CHAINS)]
    if new_data:
        # A fresh subset per run and per peer: nothing compiled for it before.
        command += ["--drop-seed", str(time.time_ns() % 2**31)]
    if bambi_cores is not None:
        command += ["--bambi-cores", str(bambi_cores)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{peer} run failed:\n{result.stderr[-4000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    # hierps' fit call already returns the CATTs (and runs its convergence checks).
    figures.setdefault("to_catts", figures["wall"])
    figures["min_ess"] = min(figures["ess_catt"], figures["ess_hyper"])
    for basis in ("wall", "to_catts", "sampling"):
        figures[f"ess_per_s_{basis}"] = figures["min_ess"] / figures[basis]
    return figures


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)} / {format(statistics.median(values), fmt)}"


def report(
    runs: dict[str, list[dict]], bambi_cores: int | None, new_data: bool, model: str = "numeric"
) -> None:
    """Print the table of both peers and the pairwise ratios."""
    n_runs = len(runs["hierps"])
    cores = "PyMC's default cores" if bambi_cores is None else f"cores={bambi_cores}"
    students = "10,371 of 10,391 students (new subset each run)" if new_data else "10,391 students"
    coding = "C2 categorical" if MODELS[model] else "C2 numeric"
    print(
        f"\n[{model}] learning mindsets: {students}, 76 schools; S3, C2, C3 varying "
        f"({coding}), X1-X5 school "
        f"level; {CHAINS} chains x ({TUNE} tune + {DRAWS} draws), nutpie (Bambi: {cores}); "
        f"{n_runs} runs each; every cell min / median"
    )
    print(
        f"hierps likelihood on {runs['hierps'][0]['n_patterns']:,} (school, covariate "
        f"pattern) cells"
    )
    rows = [
        ("wall time of the fit call, s", "wall", ".1f"),
        ("  of which sampling (tune+draws), s", "sampling", ".1f"),
        ("  the rest (compile, set-up, ...), s", "rest", ".1f"),
        ("wall time to the CATTs, s", "to_catts", ".1f"),
        ("min bulk ESS, CATTs", "ess_catt", ".0f"),
        ("min bulk ESS, hyperparameters", "ess_hyper", ".0f"),
        ("min bulk ESS, group-level terms", "ess_group_terms", ".0f"),
        ("max R-hat", "rhat", ".4f"),
        ("divergences", "divergences", ".0f"),
        ("min ESS / s, fit-call wall", "ess_per_s_wall", ".1f"),
        ("min ESS / s, wall to the CATTs", "ess_per_s_to_catts", ".1f"),
        ("min ESS / s, sampling time", "ess_per_s_sampling", ".1f"),
    ]
    print(f"{'':38s}{'hierps':>18s}{'bambi':>18s}")
    for label, key, fmt in rows:
        cells = []
        for peer in ("hierps", "bambi"):
            if key == "rest":
                values = [r["wall"] - r["sampling"] for r in runs[peer]]
            else:
                values = [float(r[key]) for r in runs[peer]]
            cells.append(_spread(values, fmt))
        print(f"{label:38s}{cells[0]:>18s}{cells[1]:>18s}")
    hierps_runs = runs["hierps"]
    print(
        f"hierps' fit call includes its per-draw CATTs "
        f"({_spread([r['estimands'] for r in hierps_runs], '.2f')} s alone) and convergence "
        f"checks; its default Bayesian-bootstrap CATTs have min ESS "
        f"{_spread([r['ess_catt_bootstrap'] for r in hierps_runs], '.0f')}"
    )
    print("\nratios hierps / bambi, pair by pair (min / median):")
    pairs = list(zip(runs["hierps"], runs["bambi"], strict=True))
    for label, key, faster in (
        ("min ESS / s, fit-call wall", "ess_per_s_wall", False),
        ("min ESS / s, wall to the CATTs", "ess_per_s_to_catts", False),
        ("min ESS / s, sampling time", "ess_per_s_sampling", False),
        ("speed-up, fit-call wall", "wall", True),
        ("speed-up, sampling time", "sampling", True),
    ):
        ratios = [b[key] / h[key] if faster else h[key] / b[key] for h, b in pairs]
        print(f"  {label:36s}{_spread(ratios, '.2f'):>18s}")
    clean = sum(r["divergences"] == 0 and r["rhat"] <= 1.01 for r in hierps_runs)
    print(
        f"target: hierps >= 3x Bambi's min ESS/s with 0 divergences and R-hat <= 1.01; "
        f"hierps runs with 0 divergences and R-hat <= 1.01: {clean} of {n_runs}"
    )


def main() -> None:
    global CHAINS  # --chains sets it for the children's fits and the report
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each peer")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first repeat")
    parser.add_argument(
        "--bambi-cores",
        type=int,
        default=None,
        help="cores= for Bambi's fit (default: PyMC's, half the CPUs); hierps runs its "
        "chains on min(chains, CPUs)",
    )
    parser.add_argument(
        "--new-data",
        action="store_true",
        help="leave 20 random students out in every run, so that no run finds code compiled "
        "for its data in the cache (a first fit of a new data set)",
    )
    parser.add_argument(
        "--chains",
        type=int,
        default=CHAINS,
        help=f"chains of both peers (default {CHAINS}; hierps' own default is 4)",
    )
    parser.add_argument("--child", choices=["hierps", "bambi"], help=argparse.SUPPRESS)
    parser.add_argument("--drop-seed", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        help="which models to run (default: both)",
    )
    parser.add_argument("--model", choices=list(MODELS), default="numeric", help=argparse.SUPPRESS)
    args = parser.parse_args()
    CHAINS = args.chains
    if args.child == "hierps":
        print(json.dumps(child_hierps(args.seed, args.drop_seed, args.model)))
        return
    if args.child == "bambi":
        print(json.dumps(child_bambi(args.seed, args.drop_seed, args.bambi_cores, args.model)))
        return

    started = time.perf_counter()
    every: dict[str, dict[str, list[dict]]] = {}
    for repeat in range(args.repeats):
        for model in args.models:
            runs = every.setdefault(model, {"hierps": [], "bambi": []})
            for peer in runs:
                figures = run_child(
                    peer, args.seed + repeat, args.new_data, args.bambi_cores, model
                )
                runs[peer].append(figures)
                print(
                    f"  run {repeat + 1} [{model}] {peer:6s} wall {figures['wall']:6.1f} s, "
                    f"sampling "
                    f"{figures['sampling']:5.1f} s, min ESS {figures['min_ess']:6.0f}, "
                    f"{figures['ess_per_s_wall']:6.1f} ESS/s, max R-hat {figures['rhat']:.4f}, "
                    f"{figures['divergences']} divergences",
                    flush=True,
                )
    for model, runs in every.items():
        report(runs, args.bambi_cores, args.new_data, model)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
