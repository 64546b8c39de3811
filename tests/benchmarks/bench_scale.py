"""Scale benchmark: the in-memory design and fit at 1M–10M units, the Dask path at 10M and 30M.

Run: ``nice .venv/bin/python tests/benchmarks/bench_scale.py`` (not part of the test suite).
Options: ``--memory 1,3,10`` (millions of units for the in-memory runs), ``--dask 10,30``
(millions for the Dask runs), ``--baseline REV`` (also time ``hierps.Model`` with the
``hierps/design/build.py`` of git revision ``REV``, the "before" column), ``--tmp DIR``.

* **In memory** (one child process per size, data from
  ``hierps.datasets.simulate_multisite(n_groups=n/500, group_size=500)``): ``hierps.Model``,
  ``fit_map`` and the peak RSS of the process, with the frame's own size beside it.
* **Dask** (data written as Parquet, one file of 10⁶ rows per 2,000 groups, by a fast NumPy
  generator of the same kind of study, so that 30M rows never sit in one process): a
  ``LocalCluster`` of 2 worker processes with 1 thread each; ``hierps.Model(dd.read_parquet)``,
  ``fit_map``, Newton iterations and map-reduce passes, seconds per pass, peak RSS of each
  worker and of the driver; at the size shared with the in-memory runs also the in-memory fit
  of the same files and the largest CATT difference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS_PER_FILE = 1_000_000
GROUP_SIZE = 500

MEMORY = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import hierps
n = {n}
study = hierps.datasets.simulate_multisite(n_groups=n // 500, group_size=500, seed=7)
data = study.data
frame_gib = data.memory_usage(deep=True).sum() / 2**30
baseline = {baseline!r}
if baseline:
    import importlib.util, subprocess
    source = subprocess.run(["git", "show", baseline + ":hierps/design/build.py"],
                            capture_output=True, text=True, check=True).stdout
    path = "{tmp}/build_baseline.py"
    open(path, "w").write(source)
    spec = importlib.util.spec_from_file_location("build_baseline", path)
    module = importlib.util.module_from_spec(spec); sys.modules["build_baseline"] = module
    spec.loader.exec_module(module)
    import hierps.model
    hierps.model.build_design = module.build_design
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
start = time.perf_counter()
model = hierps.Model(data, treatment="z", group="school", outcome="y",
                     unit_covariates=study.unit_covariates,
                     group_covariates=study.group_covariates)
design_seconds = time.perf_counter() - start
rss_design = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
start = time.perf_counter()
fit = model.fit_map()
fit_seconds = time.perf_counter() - start
iterations = fit.iterations
# The design's own allocations (NumPy reports to tracemalloc), in a second, traced build.
import tracemalloc
del model, fit
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
model = hierps.Model(data, treatment="z", group="school", outcome="y",
                     unit_covariates=study.unit_covariates,
                     group_covariates=study.group_covariates)
design_alloc = (tracemalloc.get_traced_memory()[1] - base) / 2**30
tracemalloc.stop()
print(json.dumps({{"design_alloc": design_alloc, "n": len(data),
                  "groups": model.design.n_groups, "design": design_seconds,
                  "fit": fit_seconds, "iterations": iterations, "frame_gib": frame_gib,
                  "rss_before_design": rss_before, "rss_after_design": rss_design,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""

WRITE = """
import numpy as np, pandas as pd
from scipy.special import expit
def write(path, n_files, seed):
    groups_per_file = {rows} // {size}
    for f in range(n_files):
        rng = np.random.default_rng([seed, f])
        J, m = groups_per_file, {size}
        labels = np.array([f"g{{f * J + j:07d}}" for j in range(J)])
        group = np.repeat(np.arange(J), m)
        shift = rng.normal(size=(J, 3))
        x = 0.5 * shift[group] + rng.normal(size=(J * m, 3))
        v = rng.normal(size=(J, 2))
        alpha = -0.9 + v @ np.array([0.4, -0.3]) + rng.normal(size=J)
        beta = np.array([0.5, -0.4, 0.3]) + 0.5 * rng.normal(size=(J, 3))
        p = np.clip(expit(alpha[group] + np.einsum("ij,ij->i", x, beta[group])), 0.01, 0.99)
        z = (rng.random(J * m) < p).astype(np.int64)
        y = x @ np.array([1.0, 0.5, -0.5]) + z * (1 + 0.5 * x[:, 0]) + rng.normal(size=J * m)
        frame = pd.DataFrame({{"school": labels[group], "z": z, "y": y, "x1": x[:, 0],
                              "x2": x[:, 1], "x3": x[:, 2], "v1": v[group, 0], "v2": v[group, 1]}})
        frame.to_parquet(f"{{path}}/part-{{f:04d}}.parquet", index=False)
"""

DASK = """
import json, resource, time, warnings
warnings.simplefilter("ignore")
import numpy as np
import dask.dataframe as dd
import distributed
import hierps
path, compare = {path!r}, {compare!r}
roles = dict(treatment="z", group="school", outcome="y", unit_covariates=["x1", "x2", "x3"],
             group_covariates=["v1", "v2"])
def peak():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=None, memory_limit="8GiB") as cluster, \\
        distributed.Client(cluster) as client:
    frame = dd.read_parquet(path)
    start = time.perf_counter()
    model = hierps.Model(frame, **roles)
    design_seconds = time.perf_counter() - start
    start = time.perf_counter()
    distributed.wait(distributed.futures_of(model.design.control_blocks))
    persist_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fit = model.fit_map()
    fit_seconds = time.perf_counter() - start
    catt = fit.catt["estimate"]
    workers = client.run(peak)
    out = {{"n": model.design.n_units, "groups": model.design.n_groups,
           "partitions": frame.npartitions, "design": design_seconds,
           "persist": persist_seconds, "fit": fit_seconds, "iterations": fit.iterations,
           "passes": fit.round_trips, "pass_seconds": fit.pass_seconds,
           "worker_peak_rss": sorted(workers.values()), "driver_peak_rss": peak()}}
if compare:
    import pandas as pd
    data = pd.read_parquet(path)
    start = time.perf_counter()
    memory_model = hierps.Model(data, **roles)
    out["memory_design"] = time.perf_counter() - start
    start = time.perf_counter()
    memory_fit = memory_model.fit_map()
    out["memory_fit"] = time.perf_counter() - start
    out["memory_iterations"] = memory_fit.iterations
    out["max_catt_difference"] = float(np.nanmax(np.abs(catt - memory_fit.catt["estimate"])))
    out["memory_peak_rss"] = peak()
print(json.dumps(out))
"""


def run(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[:3].__repr__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", default="1,3,10")
    parser.add_argument("--dask", default="10,30")
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    sizes = [int(x) for x in args.memory.split(",") if x]
    dask_sizes = [int(x) for x in args.dask.split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    try:
        print(f"load average at start: {uptime()}")
        for millions in sizes:
            n = millions * 1_000_000
            after = run(MEMORY.format(n=n, baseline=None, tmp=tmp))
            line = (
                f"in memory {n / 1e6:g}M units / {after['groups']:,} groups: Model "
                f"{after['design']:.2f} s, fit_map {after['fit']:.2f} s "
                f"(Model / fit {after['design'] / after['fit']:.2f}), {after['iterations']} "
                f"iterations; frame {after['frame_gib']:.2f} GiB, peak RSS "
                f"{after['peak_rss']:.2f} GiB; Model's peak allocation "
                f"{after['design_alloc']:.2f} GiB "
                f"({after['design_alloc'] / after['frame_gib']:.1f}x the frame)"
            )
            if args.baseline:
                before = run(MEMORY.format(n=n, baseline=args.baseline, tmp=tmp))
                line += (
                    f"; before ({args.baseline}): Model {before['design']:.2f} s, "
                    f"peak allocation {before['design_alloc']:.2f} GiB"
                )
            print(line + f"  [load {uptime()}]", flush=True)
        for millions in dask_sizes:
            folder = tmp / f"data-{millions}M"
            folder.mkdir()
            start = time.perf_counter()
            code = WRITE.format(rows=ROWS_PER_FILE, size=GROUP_SIZE)
            code += f"\nwrite({str(folder)!r}, {millions}, 7)\nprint('{{}}')"
            run(code)
            written = time.perf_counter() - start
            size = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
            result = run(DASK.format(path=str(folder), compare=millions in sizes))
            passes = result["pass_seconds"]
            print(
                f"Dask {millions}M units / {result['groups']:,} groups, "
                f"{result['partitions']} Parquet files ({size:.2f} GiB, written in "
                f"{written:.0f} s), 2 workers x 1 thread: Model {result['design']:.1f} s, "
                f"blocks persisted {result['persist']:.1f} s, fit_map {result['fit']:.1f} s "
                f"({result['iterations']} iterations, {result['passes']} passes, median pass "
                f"{sorted(passes)[len(passes) // 2]:.2f} s); peak RSS per worker "
                f"{', '.join(f'{x:.2f}' for x in result['worker_peak_rss'])} GiB, driver "
                f"{result['driver_peak_rss']:.2f} GiB  [load {uptime()}]",
                flush=True,
            )
            if "memory_fit" in result:
                total_dask = result["design"] + result["persist"] + result["fit"]
                total_memory = result["memory_design"] + result["memory_fit"]
                print(
                    f"  in memory, same files: Model {result['memory_design']:.1f} s, fit_map "
                    f"{result['memory_fit']:.1f} s ({result['memory_iterations']} iterations);"
                    f" Dask / in-memory: fit {result['fit'] / result['memory_fit']:.2f}x, "
                    f"Model + fit {total_dask / total_memory:.2f}x; largest CATT difference "
                    f"{result['max_catt_difference']:.1e}",
                    flush=True,
                )
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
