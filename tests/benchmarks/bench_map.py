"""MAP solver benchmark: hierps.fit_map against pymc.find_MAP on the same model.

Run: ``.venv/bin/python tests/benchmarks/bench_map.py`` (not part of the test suite).
Prints wall times of the first call (compilation / imports included) and the second call, the
Newton iterations and final gradient, the ratios, and the scale test (10⁶ units in 2,000 groups)
with its peak memory, measured in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

LEARNING_MINDSETS = """
import time, warnings, json
warnings.simplefilter("ignore")
import hierps
data = hierps.datasets.load_learning_mindsets()
model = hierps.Model(
    data, treatment="Z", group="schoolid", outcome="Y",
    unit_covariates=["S3", "C1", "C2", "C3"],
    group_covariates=["XC", "X1", "X2", "X3", "X4", "X5"], categorical=["C1", "XC"],
)
out = {}
for call in ("first", "second"):
    start = time.perf_counter()
    fit = model.fit_map()
    out[call] = time.perf_counter() - start
out["iterations"] = fit.iterations
out["max_gradient"] = fit.max_gradient
out["objective"] = fit.objective
out["n_parameters"] = int(fit._theta_global.size + fit._theta_local.size)
if RUN_FIND_MAP:
    import pymc as pm
    hp = fit.hyperparameters.as_dict()
    for call in ("find_map_first", "find_map_second"):
        start = time.perf_counter()
        pymc_model = model.build_pymc(loss="calibrated", **hp)
        point = pm.find_MAP(model=pymc_model, progressbar=False)
        out[call] = time.perf_counter() - start
    logp = pymc_model.compile_logp()
    c = fit.coefficients
    ours = {
        "intercept": float(c["intercept"]), "gamma": c["gamma"].to_numpy(),
        "alpha_offset": c["alpha_deviation"].to_numpy() / hp["sigma_alpha"],
        "mu_beta": c["mu_beta"].to_numpy(),
        "beta_offset": c["beta_deviation"].to_numpy() / hp["sigma_beta"],
    }
    out["logp_hierps"] = float(logp(ours))
    out["logp_find_map"] = float(logp({k: point[k] for k in ours}))
print(json.dumps(out))
"""

SCALE = """
import time, warnings, json, resource
warnings.simplefilter("ignore")
import hierps
study = hierps.datasets.simulate_multisite(n_groups=2000, group_size=500, seed=7)
model = hierps.Model(study.data, treatment="z", group="school", outcome="y",
                     unit_covariates=study.unit_covariates,
                     group_covariates=study.group_covariates)
start = time.perf_counter()
fit = model.fit_map()
elapsed = time.perf_counter() - start
print(json.dumps({"n": model.design.n_units, "groups": model.design.n_groups,
                  "seconds": elapsed, "iterations": fit.iterations,
                  "max_gradient": fit.max_gradient,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    warnings.simplefilter("ignore")
    run_find_map = "--no-find-map" not in sys.argv
    started = time.perf_counter()
    mindsets = run(f"RUN_FIND_MAP = {run_find_map}\n" + LEARNING_MINDSETS)
    print("learning mindsets: 10,391 students, 76 schools, 18 unit columns (all varying),")
    print(f"  10 school columns; {mindsets['n_parameters']} parameters")
    print(
        f"  hierps.fit_map   first call {mindsets['first'] * 1e3:8.1f} ms   "
        f"second call {mindsets['second'] * 1e3:8.1f} ms   "
        f"{mindsets['iterations']} Newton iterations, max |gradient| "
        f"{mindsets['max_gradient']:.1e}"
    )
    if run_find_map:
        print(
            f"  pymc.find_MAP    first call {mindsets['find_map_first']:8.2f} s    "
            f"second call {mindsets['find_map_second']:8.2f} s"
        )
        first = mindsets["find_map_first"] / mindsets["first"]
        second = mindsets["find_map_second"] / mindsets["second"]
        print(f"  ratio find_MAP / fit_map: first {first:,.0f}x, second {second:,.0f}x")
        print(
            f"  log density at optimum: hierps {mindsets['logp_hierps']:.6f}, "
            f"find_MAP {mindsets['logp_find_map']:.6f}"
        )
    scale = run(SCALE)
    print(
        f"scale: {scale['n']:,} units in {scale['groups']:,} groups: fit_map "
        f"{scale['seconds']:.2f} s, {scale['iterations']} iterations, max |gradient| "
        f"{scale['max_gradient']:.1e}, peak memory {scale['peak_rss_gib']:.2f} GiB "
        f"(whole process, data included)"
    )
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
