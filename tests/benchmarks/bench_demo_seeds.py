"""``hierps demo`` over several sampler seeds: does the built-in study finish without warnings?

Run: ``.venv/bin/python tests/benchmarks/bench_demo_seeds.py [--seeds 1 2 3 4 5]`` (not part
of the test suite; about a minute per seed on two cores).

Runs the demo's analysis (MAP, pooling path, posterior, pooled CATTs) as ``hierps demo --seed
S`` does, without writing outputs, and prints per seed the warnings raised, the worst R-hat and
the smallest bulk and tail ESS per chain that the convergence check judged, and the wall time.
"""

from __future__ import annotations

import argparse
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args()
    from hierps.mcmc.diagnosis import diagnose
    from hierps.workflow.analysis import run_analysis
    from hierps.workflow.spec import demo_spec

    clean = 0
    for seed in args.seeds:
        spec = demo_spec()
        update = {"posterior": spec.posterior.model_copy(update={"random_seed": seed})}
        if spec.pooling is not None:
            update["pooling"] = spec.pooling.model_copy(update={"random_seed": seed})
        spec = spec.model_copy(update=update)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # run_analysis records hierps' own warnings
            result = run_analysis(spec, out_dir=None, report=lambda message: None)
        wall = time.perf_counter() - started
        messages = list(result.warnings)
        table = diagnose(result.posterior).table
        clean += not messages
        print(
            f"seed {seed}: {len(messages)} hierps warnings; posterior max R-hat "
            f"{table['r_hat'].max():.4f}, min bulk ESS {table['ess_bulk'].min():.0f}, min tail "
            f"ESS {table['ess_tail'].min():.0f}; wall {wall:.0f} s",
            flush=True,
        )
        for message in messages:
            print(f"    {message[:300]}")
    print(f"{clean} of {len(args.seeds)} seeds without warnings")


if __name__ == "__main__":
    main()
