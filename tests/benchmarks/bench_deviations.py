"""MAP with Laplace and low-rank slope deviations against normal ones, on learning mindsets.

Run: ``.venv/bin/python tests/benchmarks/bench_deviations.py`` (not part of the test suite);
``--repeats N`` sets the timed calls per structure (default 20). One child process times every
structure with the control layout cached on the design, as ``bench_map.py`` does: the first
call, then the minimum and median of further calls, with Newton iterations, conjugate-gradient
iterations and the KKT residuals of the non-smooth problem.

The bound ``1/sigma_beta`` caps totals over a school's units, so the non-normal priors need a
small ``sigma_beta`` on this data: at ``sigma_beta = 1`` most schools cannot meet the box (the
fit names them). Each structure is timed at a scale where its bound binds somewhere (low rank
twice: rank 2 and rank 8 of 18); the normal case is timed at the same scales and at the default
``sigma_beta = 1``, and the ratios are to the normal fit at the same scale.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

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

TIMING = (
    SETUP
    + """
out = []
for deviations, sigma_beta in CASES:
    start = time.perf_counter()
    fit = model.fit_map(sigma_beta=sigma_beta, deviations=deviations)
    first = time.perf_counter() - start
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fit = model.fit_map(sigma_beta=sigma_beta, deviations=deviations)
        times.append(time.perf_counter() - start)
    kkt = fit.kkt["control"]
    out.append({
        "deviations": deviations, "sigma_beta": sigma_beta, "first": first,
        "min": min(times), "median": float(np.median(times)), "iterations": fit.iterations,
        "max_gradient": fit.max_gradient, "kkt": kkt,
    })
print(json.dumps(out))
"""
)

CASES = [
    ("normal", 1.0),
    ("normal", 0.02),
    ("laplace", 0.02),
    ("normal", 0.01),
    ("low_rank", 0.01),
    ("normal", 0.015),
    ("low_rank", 0.015),
]


def main() -> None:
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 20
    started = time.perf_counter()
    code = f"CASES = {CASES!r}\nREPEATS = {repeats}\n" + TIMING
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    normal = {row["sigma_beta"]: row for row in rows if row["deviations"] == "normal"}
    print("learning mindsets: 10,391 students, 76 schools, 18 varying unit columns")
    print(f"fit_map, layout cached; {repeats} timed calls after the first")
    header = (
        f"{'deviations':>10} {'sigma_beta':>10} {'first':>9} {'min':>9} {'median':>9} "
        f"{'Newton':>6} {'CG':>5} {'active':>6} {'KKT residual':>12} {'x normal (min, median)':>24}"
    )
    print(header)
    for row in rows:
        kkt = row["kkt"]
        base = normal[row["sigma_beta"]]
        ratio = (
            ""
            if row["deviations"] == "normal"
            else f"{row['min'] / base['min']:.1f}x, {row['median'] / base['median']:.1f}x"
        )
        residual = (
            max(kkt["smooth_gradient"], kkt["stationarity"], kkt["dual_feasibility"])
            if kkt
            else row["max_gradient"]
        )
        print(
            f"{row['deviations']:>10} {row['sigma_beta']:>10g} {row['first'] * 1e3:7.1f}ms "
            f"{row['min'] * 1e3:7.1f}ms {row['median'] * 1e3:7.1f}ms {row['iterations']:>6} "
            f"{int(kkt.get('cg_iterations', 0)):>5} {int(kkt.get('active', 0)) if kkt else '':>6} "
            f"{residual:>12.1e} {ratio:>24}"
        )
    default = normal[1.0]["median"]
    for row in rows:
        if row["deviations"] != "normal":
            print(
                f"  {row['deviations']}: median {row['median'] / default:.1f}x the default "
                f"normal fit (sigma_beta = 1); criterion/bound {row['kkt']['criterion']:.6f}"
            )
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
