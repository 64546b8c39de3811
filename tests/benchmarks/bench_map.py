"""MAP solver benchmark: hierps.fit_map against pymc.find_MAP on the same model.

Run: ``.venv/bin/python tests/benchmarks/bench_map.py`` (not part of the test suite);
``--no-find-map`` skips pymc. Every measurement runs in a child process:

* ``fit_map``: the first call (imports and first-use costs included), the second call, then
  the minimum and median of further calls, with the control layout cached on the design (as
  along a tuning grid or a pooling path) and rebuilt on every call (a new design);
* ``find_MAP``: first and second call with empty PyTensor compile caches, so that the first
  call pays the compilation as a new user does, then again with those caches warm, as in
  any later session;
* the scale test (10⁶ units in 2,000 groups) with its peak memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

SETUP = """
import time, warnings, json
warnings.simplefilter("ignore")
import numpy as np
import hierps
data = hierps.datasets.load_learning_mindsets()
model = hierps.Model(
    data, treatment="Z", group="schoolid", outcome="Y",
    unit_covariates=["S3", "C1", "C2", "C3"],
    group_covariates=["XC", "X1", "X2", "X3", "X4", "X5"], categorical=["C1", "XC"],
)
"""

FIT_MAP = (
    SETUP
    + """
import hierps.calibrated.problem
out = {}
for call in ("first", "second"):
    start = time.perf_counter()
    fit = model.fit_map()
    out[call] = time.perf_counter() - start

def repeat(n, rebuild_layout):
    times = []
    for _ in range(n):
        if rebuild_layout:
            hierps.calibrated.problem._LAYOUTS.clear()
        start = time.perf_counter()
        model.fit_map()
        times.append(time.perf_counter() - start)
    return [min(times), float(np.median(times))]

out["cached"] = repeat(N_CALLS, False)
# Empirical-Bayes scales: the first call lays out the covariate patterns, later ones reuse it.
start = time.perf_counter()
auto = model.fit_map(sigma_alpha="auto", sigma_beta="auto")
out["auto_first"] = time.perf_counter() - start
auto_times = []
for _ in range(N_AUTO):
    start = time.perf_counter()
    model.fit_map(sigma_alpha="auto", sigma_beta="auto")
    auto_times.append(time.perf_counter() - start)
out["auto"] = [min(auto_times), float(np.median(auto_times))]
out["auto_scales"] = auto.selection.scales
out["auto_evaluations"] = auto.selection.evaluations
out["rebuilt"] = repeat(N_CALLS, True)
out["iterations"] = fit.iterations
out["max_gradient"] = fit.max_gradient
out["n_parameters"] = int(fit._theta_global.size + fit._theta_local.size)
print(json.dumps(out))
"""
)

FIND_MAP = (
    SETUP
    + """
import pymc as pm
fit = model.fit_map()
hp = fit.hyperparameters.as_dict()
out = {}
for call in ("first", "second"):
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
)

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

N_CALLS = 30
N_AUTO = 10


def run(code: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=None if env is None else {**os.environ, **env},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.1f} ms"


def find_map_runs() -> dict[str, dict]:
    """find_MAP with empty PyTensor compile caches, then with the same ones warm.

    ``base_compiledir`` holds both the C modules (``compiledir_*``) and the Numba cache
    (``numba``) of the default backend; ``compiledir`` alone would leave the latter warm.
    """
    cache = tempfile.mkdtemp(prefix="bench-map-pytensor-")
    env = {"PYTENSOR_FLAGS": f"base_compiledir={cache}"}
    try:
        return {"cold": run(FIND_MAP, env), "warm": run(FIND_MAP, env)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    fit = run(f"N_CALLS = {N_CALLS}\nN_AUTO = {N_AUTO}\n" + FIT_MAP)
    print("learning mindsets: 10,391 students, 76 schools, 18 unit columns (all varying),")
    print(f"  10 school columns; {fit['n_parameters']} parameters")
    print(
        f"  hierps.fit_map   first call {ms(fit['first'])}   second call {ms(fit['second'])}"
        f"   {fit['iterations']} Newton iterations, max |gradient| {fit['max_gradient']:.1e}"
    )
    for key, label in (("cached", "layout cached"), ("rebuilt", "layout rebuilt")):
        low, median = fit[key]
        print(f"    {N_CALLS} more calls, {label}: min {ms(low)}, median {ms(median)}")
    low, median = fit["auto"]
    scales = ", ".join(f"{k} = {v:.3g}" for k, v in fit["auto_scales"].items())
    print(
        f"  fit_map(sigma_alpha='auto', sigma_beta='auto'): first call {ms(fit['auto_first'])}; "
        f"{N_AUTO} more calls: min {ms(low)}, median {ms(median)} "
        f"({median / fit['cached'][1]:.1f}x the fixed-scale median; {fit['auto_evaluations']} "
        f"marginal-likelihood evaluations; {scales})"
    )
    if "--no-find-map" not in sys.argv:
        titles = {
            "cold": "empty PyTensor compile caches (the first call compiles)",
            "warm": "warm PyTensor compile caches",
        }
        for key, result in find_map_runs().items():
            print(
                f"  pymc.find_MAP, {titles[key]}:\n"
                f"    first call {result['first']:7.2f} s   second call {result['second']:7.2f} s"
                f"   ratio find_MAP / fit_map: first {result['first'] / fit['first']:,.0f}x, "
                f"second {result['second'] / fit['second']:,.0f}x"
            )
        print(
            f"  log density at optimum: hierps {result['logp_hierps']:.6f}, "
            f"find_MAP {result['logp_find_map']:.6f}"
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
