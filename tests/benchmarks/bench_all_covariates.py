"""Posterior mode on learning mindsets with every covariate, at the defaults of ``Model.sample``.

Run: ``.venv/bin/python tests/benchmarks/bench_all_covariates.py [--seeds 1 2] [--coding full]``
(not part of the test suite; one to two minutes per seed on two cores).

The model: ``S3``, ``C1`` (15 levels), ``C2``, ``C3`` with varying slopes, the school covariates
``XC`` (5 levels) and ``X1``–``X5``; ``C1`` and ``XC`` categorical. Per seed it prints the
acceptance figures of posterior mode: the worst R-hat and bulk ESS of the population-level
parameters (``intercept``, ``gamma``, ``mu_beta``, ``sigma_alpha``, ``sigma_beta``), the worst
R-hat over every parameter, the worst bulk ESS over the CATTs and the ATT, the divergences, and
the wall time. ``--coding full`` samples the all-levels parameterization instead (the one MAP
mode works in), for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

POPULATION = ["intercept", "gamma", "mu_beta", "sigma_alpha", "sigma_beta"]


def all_covariates_model(data=None):
    """The learning-mindsets model with every covariate."""
    import hierps

    if data is None:
        data = hierps.datasets.load_learning_mindsets()
    return hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        outcome="Y",
        unit_covariates=["S3", "C1", "C2", "C3"],
        group_covariates=["XC", "X1", "X2", "X3", "X4", "X5"],
        categorical=["C1", "XC"],
    )


def acceptance(result) -> dict[str, float]:
    """The acceptance figures of one posterior result."""
    import arviz as az

    posterior = result.idata["posterior"].to_dataset()
    estimands = result.idata["estimands"].to_dataset()[["catt", "att"]]

    def worst(data, statistic):
        values = az.ess(data, method="bulk") if statistic == "ess" else az.rhat(data)
        reduce = np.nanmin if statistic == "ess" else np.nanmax
        return float(reduce([reduce(values[name].to_numpy()) for name in data.data_vars]))

    population = posterior[[name for name in POPULATION if name in posterior]]
    return {
        "rhat_population": worst(population, "rhat"),
        "ess_population": worst(population, "ess"),
        "rhat_all": worst(posterior, "rhat"),
        "ess_all": worst(posterior, "ess"),
        "ess_effects": worst(estimands, "ess"),
        "divergences": int(result.idata["sample_stats"]["diverging"].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--coding", choices=["identified", "full"], default="identified")
    parser.add_argument("--save", default=None, help="write each seed's DataTree to SAVE_<seed>.nc")
    parser.add_argument("--options", default="{}", help="JSON keyword arguments of sample")
    args = parser.parse_args()
    import nutpie  # noqa: F401 - imported before the clock starts
    import pymc  # noqa: F401

    model = all_covariates_model()
    options = json.loads(args.options)
    for seed in args.seeds:
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.coding == "full":
                from hierps.posterior import run

                result = run.sample(model.design, random_seed=seed, coding="full", **options)
            else:
                result = model.sample(random_seed=seed, **options)
        wall = time.perf_counter() - started
        figures = acceptance(result)
        print(
            f"seed {seed} ({args.coding}): wall {wall:.0f} s; population R-hat max "
            f"{figures['rhat_population']:.4f}, bulk ESS min {figures['ess_population']:.0f}; "
            f"all parameters R-hat max {figures['rhat_all']:.4f}, bulk ESS min "
            f"{figures['ess_all']:.0f}; CATTs+ATT bulk ESS min {figures['ess_effects']:.0f}; "
            f"{figures['divergences']} divergences; {len(caught)} warnings",
            flush=True,
        )
        if args.save:
            result.idata.to_netcdf(f"{args.save}_{seed}.nc")


if __name__ == "__main__":
    main()
