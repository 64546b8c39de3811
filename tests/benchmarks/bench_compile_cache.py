"""Does PyTensor's on-disk compile cache make a second process's ``sample`` start faster?

Run: ``.venv/bin/python tests/benchmarks/bench_compile_cache.py [--repeats 2]`` (not part of
the test suite; a few minutes on two cores).

Every run is a fresh Python process that samples the learning-mindsets benchmark model (S3, C2,
C3 varying, X1–X5; 2 chains × (100 + 100) draws, so that sampling is short) and reports the
time ``sample`` spends before and after the sampler (build, compile, set-up, checks): its wall
time minus PyMC's ``sampling_time``. The runs share one fresh PyTensor compile directory
(``PYTENSOR_FLAGS=base_compiledir=…``), where PyTensor's numba backend caches the compiled
kernels of the graph (``numba__cache``, on by default):

1. cold: empty cache (a user's first fit after installing);
2. warm, same data: the cache holds this model's kernels (a second fit of the same model);
3. warm, other data: 20 students left out (the same model structure on new data; with
   ``freeze_model`` the data are constants of the graph).

nutpie's own wrapper (a numba ``cfunc`` around the logp kernel) cannot be cached on disk (it
reads dynamic globals), so part of the compile time is paid in every process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(drop: bool) -> dict:
    import warnings

    started = time.perf_counter()
    import nutpie  # noqa: F401
    import pymc  # noqa: F401

    import hierps
    from hierps.exceptions import HierpsWarning

    imported = time.perf_counter() - started
    data = hierps.datasets.load_learning_mindsets()
    if drop:
        data = data.drop(index=data.sample(20, random_state=int(time.time_ns() % 2**31)).index)
    model = hierps.Model(
        data,
        treatment="Z",
        group="schoolid",
        outcome="Y",
        unit_covariates=["S3", "C2", "C3"],
        group_covariates=["X1", "X2", "X3", "X4", "X5"],
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierpsWarning)
        result = model.sample(draws=100, tune=100, chains=2, random_seed=1, prior_draws=0)
    wall = time.perf_counter() - started
    sampling = float(result.idata["posterior"].attrs["sampling_time"])
    return {"import": imported, "wall": wall, "sampling": sampling, "overhead": wall - sampling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["same", "other"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "other")))
        return
    rows: dict[str, list[dict]] = {"cold": [], "warm, same data": [], "warm, other data": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as directory:
            env = {**os.environ, "PYTENSOR_FLAGS": f"base_compiledir={directory}"}
            for label, kind in (
                ("cold", "same"),
                ("warm, same data", "same"),
                ("warm, other data", "other"),
            ):
                command = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                rows[label].append(figures)
                print(
                    f"  {label:18s} sample {figures['wall']:6.1f} s = sampling "
                    f"{figures['sampling']:5.1f} s + the rest {figures['overhead']:5.1f} s",
                    flush=True,
                )
    print("\nmedian over repeats: time in sample() outside the sampler (build, compile, checks)")
    for label, runs in rows.items():
        print(f"  {label:18s} {statistics.median(r['overhead'] for r in runs):6.1f} s")


if __name__ == "__main__":
    main()
