"""Posterior-mode benchmark: hierps' NUTS posterior against Bambi + nutpie on the same model.

Run: ``.venv/bin/python tests/benchmarks/bench_posterior.py [--repeats 3]`` (not part of the
test suite; about two minutes per repeat on two cores).

Data: the learning-mindsets study (10,391 students in 76 schools), treatment ``Z``, the three
student covariates ``S3``, ``C2``, ``C3`` with varying slopes and the school covariates
``X1``–``X5``; 2 chains × (1,000 tuning + 1,000 kept) draws with nutpie for both peers.

Bambi fits ``Z ~ 1 + S3 + C2 + C3 + X1 + … + X5 + (1 + S3 + C2 + C3 | schoolid)``, family
bernoulli, on hierps' standardized covariates with hierps' priors (no centring, no auto-scaling,
non-centred group terms), so both sample the same posterior and the comparison is of the
implementations alone. Bambi's CATTs are computed from its draws with hierps' own estimator
(``alpha_j = Intercept + v_j'γ + (1|schoolid)_j``, ``beta_j = slopes + (x|schoolid)_j``).

Every run is a fresh Python process, so compilation is counted as a user pays it (PyTensor's
on-disk numba cache is warm after the first run of each peer, as on a user's machine after a
first fit). Peers alternate, hierps first. Per run it records:

- wall time of the fit call (``model.sample`` / ``bmb.Model(...).fit``) and, inside it, the
  sampler's own time (PyMC's ``sampling_time``: tuning + draws); the rest is compilation and
  set-up (and, for hierps, the per-draw CATTs, also timed on their own);
- the minimum bulk ESS over the CATTs (propensity uncertainty only, identical for both peers)
  and the hyperparameters (``sigma_alpha``, ``sigma_beta``, ``intercept``, ``gamma``,
  ``mu_beta`` and Bambi's counterparts), the minimum over the group-specific terms, the
  divergences and the maximum R-hat over all of these;
- min-ESS per second of wall time and of sampling time.

The ratios are hierps ÷ Bambi, pair by pair; min and median over the repeats are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

DRAWS, TUNE, CHAINS = 1000, 1000, 2
UNIT = ["S3", "C2", "C3"]
SCHOOL = ["X1", "X2", "X3", "X4", "X5"]
FORMULA = "Z ~ 1 + S3 + C2 + C3 + X1 + X2 + X3 + X4 + X5 + (1 + S3 + C2 + C3 | schoolid)"


# --------------------------------------------------------------------------------------------
# Child processes: one fit each, a JSON line on stdout
# --------------------------------------------------------------------------------------------


def _model():
    import hierps

    data = hierps.datasets.load_learning_mindsets()
    return hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        outcome="Y",
        unit_covariates=UNIT,
        group_covariates=SCHOOL,
    )


def _summary(
    posterior, catt, hyper: list[str], group_terms: list[str], sample_stats
) -> dict[str, float]:
    """Minimum bulk ESS, maximum R-hat and divergences of one run."""
    import arviz as az
    import numpy as np

    def ess(names: list[str]) -> float:
        data = posterior[names]
        return float(min(np.nanmin(az.ess(data, method="bulk")[n].to_numpy()) for n in names))

    def rhat(data, names: list[str]) -> float:
        return float(max(np.nanmax(az.rhat(data)[n].to_numpy()) for n in names))

    catt_data = catt.to_dataset(name="catt")
    return {
        "ess_catt": ess_of(catt_data, "catt"),
        "ess_hyper": ess(hyper),
        "ess_group_terms": ess(group_terms),
        "rhat": max(
            rhat(posterior[hyper + group_terms], hyper + group_terms), rhat(catt_data, ["catt"])
        ),
        "divergences": int(sample_stats["diverging"].sum()),
    }


def ess_of(data, name: str) -> float:
    """Smallest bulk ESS of one variable (NaN entries, e.g. inestimable CATTs, ignored)."""
    import arviz as az
    import numpy as np

    return float(np.nanmin(az.ess(data, method="bulk")[name].to_numpy()))


def _preload() -> None:
    """Import the sampling stack before the clock starts, for both peers alike."""
    import nutpie  # noqa: F401
    import pymc  # noqa: F401


def child_hierps(seed: int) -> dict:
    import warnings

    from hierps.exceptions import HierpsWarning
    from hierps.posterior import from_idata

    _preload()
    model = _model()
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
    summary["ess_catt_bootstrap"] = ess_of(idata["estimands"].to_dataset(), "catt")
    return {
        "wall": wall,
        "sampling": float(posterior.attrs["sampling_time"]),
        "estimands": estimands_seconds,
        "n_patterns": len(idata["constant_data"]["pattern_group"]),
        **summary,
    }


def child_bambi(seed: int) -> dict:
    import warnings

    import bambi as bmb
    import numpy as np
    import pandas as pd
    import xarray as xr

    from hierps.exceptions import HierpsWarning
    from hierps.posterior import from_idata

    _preload()
    design = _model().design
    schools = np.asarray(design.groups).astype(str)
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
        )
    wall = time.perf_counter() - started
    posterior = idata["posterior"].to_dataset()
    posterior = posterior.rename({"schoolid__factor_dim": "group"})
    if [str(g) for g in posterior["group"].to_numpy()] != list(schools):
        posterior = posterior.sel(group=list(schools))
    posterior = posterior.assign_coords(group=list(design.groups))

    # hierps' coefficients from Bambi's terms, then hierps' estimator of the CATTs.
    gamma = xr.concat([posterior[name] for name in SCHOOL], dim="group_covariate")
    school_effect = xr.dot(
        gamma, xr.DataArray(design.group_matrix, dims=("group", "group_covariate"))
    )
    alpha = posterior["Intercept"] + school_effect + posterior["1|schoolid"]
    beta = xr.concat(
        [posterior[name] + posterior[f"{name}|schoolid"] for name in UNIT], dim="unit_covariate"
    ).assign_coords(unit_covariate=UNIT)
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
    sigmas = [f"{term}|schoolid_sigma" for term in ["1", *UNIT]]
    summary = _summary(
        posterior,
        catt,
        ["Intercept", *UNIT, *SCHOOL, *sigmas],
        [f"{term}|schoolid" for term in ["1", *UNIT]],
        idata["sample_stats"].to_dataset(),
    )
    return {"wall": wall, "sampling": float(posterior.attrs["sampling_time"]), **summary}


# --------------------------------------------------------------------------------------------
# Parent: alternate the peers, print the figures and the ratios
# --------------------------------------------------------------------------------------------


def run_child(peer: str, seed: int) -> dict:
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", peer, "--seed", str(seed)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{peer} run failed:\n{result.stderr[-4000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["min_ess"] = min(figures["ess_catt"], figures["ess_hyper"])
    figures["ess_per_s_wall"] = figures["min_ess"] / figures["wall"]
    figures["ess_per_s_sampling"] = figures["min_ess"] / figures["sampling"]
    return figures


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)} / {format(statistics.median(values), fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each peer")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first repeat")
    parser.add_argument("--child", choices=["hierps", "bambi"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fit = child_hierps if args.child == "hierps" else child_bambi
        print(json.dumps(fit(args.seed)))
        return

    started = time.perf_counter()
    runs: dict[str, list[dict]] = {"hierps": [], "bambi": []}
    for repeat in range(args.repeats):
        for peer in runs:
            figures = run_child(peer, args.seed + repeat)
            runs[peer].append(figures)
            print(
                f"  run {repeat + 1} {peer:6s} wall {figures['wall']:6.1f} s, sampling "
                f"{figures['sampling']:5.1f} s, min ESS {figures['min_ess']:6.0f}, "
                f"{figures['ess_per_s_wall']:6.1f} ESS/s",
                flush=True,
            )

    print(
        f"\nlearning mindsets: 10,391 students, 76 schools; S3, C2, C3 varying, X1-X5 school "
        f"level; {CHAINS} chains x ({TUNE} tune + {DRAWS} draws), nutpie; "
        f"{args.repeats} runs each, figures as min / median"
    )
    n_patterns = runs["hierps"][0]["n_patterns"]
    print(f"hierps likelihood on {n_patterns:,} (school, covariate pattern) cells")
    rows = [
        ("wall time of the fit call, s", "wall", ".1f"),
        ("  sampling (tune + draws), s", "sampling", ".1f"),
        ("  compile, set-up, CATTs, s", None, ".1f"),
        ("min bulk ESS, CATTs", "ess_catt", ".0f"),
        ("min bulk ESS, hyperparameters", "ess_hyper", ".0f"),
        ("min bulk ESS, group-level terms", "ess_group_terms", ".0f"),
        ("max R-hat", "rhat", ".4f"),
        ("divergences", "divergences", ".0f"),
        ("min ESS / s of wall time", "ess_per_s_wall", ".1f"),
        ("min ESS / s of sampling time", "ess_per_s_sampling", ".1f"),
    ]
    print(f"{'':34s}{'hierps':>20s}{'bambi':>20s}")
    for label, key, fmt in rows:
        cells = []
        for peer in runs:
            if key is None:
                values = [r["wall"] - r["sampling"] for r in runs[peer]]
            else:
                values = [float(r[key]) for r in runs[peer]]
            cells.append(_spread(values, fmt))
        print(f"{label:34s}{cells[0]:>20s}{cells[1]:>20s}")
    estimands = [r["estimands"] for r in runs["hierps"]]
    bootstrap = [r["ess_catt_bootstrap"] for r in runs["hierps"]]
    print(
        f"hierps: per-draw CATTs {_spread(estimands, '.2f')} s of its wall time; min ESS of "
        f"its default (Bayesian-bootstrap) CATTs {_spread(bootstrap, '.0f')}"
    )

    print("\nratios hierps / bambi, pair by pair (min / median):")
    for label, key in (
        ("min ESS / s of wall time", "ess_per_s_wall"),
        ("min ESS / s of sampling time", "ess_per_s_sampling"),
        ("wall time (bambi / hierps)", "wall"),
        ("sampling time (bambi / hierps)", "sampling"),
    ):
        pairs = [
            (b[key] / h[key]) if key in ("wall", "sampling") else (h[key] / b[key])
            for h, b in zip(runs["hierps"], runs["bambi"], strict=True)
        ]
        print(f"  {label:34s}{_spread(pairs, '.2f'):>20s}")
    hierps_runs = runs["hierps"]
    clean = all(r["divergences"] == 0 and r["rhat"] <= 1.01 for r in hierps_runs)
    ratio = statistics.median(
        h["ess_per_s_wall"] / b["ess_per_s_wall"]
        for h, b in zip(runs["hierps"], runs["bambi"], strict=True)
    )
    print(
        f"target hierps >= 3x bambi min-ESS/s (wall), 0 divergences, R-hat <= 1.01: "
        f"median ratio {ratio:.2f}, hierps runs clean: {clean}"
    )
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
