"""Import-time benchmark: ``import hierps`` against the libraries it builds on.

Run: ``.venv/bin/python tests/benchmarks/bench_import.py`` (not part of the test suite).
Options: ``--repeats N`` (default 7), ``--source DIR`` to time the hierps checkout in DIR
(put first on ``PYTHONPATH``) instead of the installed one.

Every measurement is a fresh interpreter, so nothing is cached in memory; the rounds alternate
between statements so that a busy machine slows all of them alike. Two times per run:

* ``import``: the statement alone, timed inside the child with ``time.perf_counter``;
* ``process``: the whole child from spawn to exit (interpreter start-up included).

One untimed run of each statement first writes the bytecode caches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STATEMENTS = {
    "import hierps": "import hierps",
    "hierps.Model": "import hierps; hierps.Model",
    "import pandas": "import pandas",
    "import arviz": "import arviz",
    "import pymc": "import pymc",
    "import bambi": "import bambi",
}
BASELINE = "import pandas"  # every hierps model needs pandas: the floor of a useful import
CHILD = """
import time
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def run_once(statement: str, env: dict[str, str]) -> tuple[float, float]:
    """(import seconds, process seconds) of one fresh interpreter running ``statement``."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(statement=statement)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path.home() if env.get("PYTHONPATH") else None,
        check=False,
    )
    process = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{statement!r} failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1]), process


def measure(repeats: int, env: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {
        label: {"import": [], "process": []} for label in STATEMENTS
    }
    for statement in STATEMENTS.values():
        run_once(statement, env)  # bytecode caches
    for _ in range(repeats):
        for label, statement in STATEMENTS.items():
            seconds, process = run_once(statement, env)
            times[label]["import"].append(seconds)
            times[label]["process"].append(process)
    return times


def _ratio(value: float) -> str:
    return f"{value:.0f}×" if value >= 10 else f"{value:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--source", type=Path, help="a hierps checkout to time instead")
    arguments = parser.parse_args()
    env = dict(os.environ)
    if arguments.source is not None:
        env["PYTHONPATH"] = str(arguments.source.resolve())
    where = subprocess.run(
        [sys.executable, "-c", "import hierps; print(hierps.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path.home() if arguments.source is not None else None,
        check=True,
    ).stdout.strip()
    print(f"hierps from {where}; {arguments.repeats} fresh interpreters per statement")
    empty = [run_once("pass", env)[1] for _ in range(arguments.repeats)]
    print(f"interpreter start-up alone: median {statistics.median(empty) * 1e3:.0f} ms")

    times = measure(arguments.repeats, env)
    base = statistics.median(times[BASELINE]["import"])
    header = (
        f"{'statement':<16}{'import min':>12}{'median':>10}{'process min':>13}{'median':>10}"
        f"{'÷ ' + BASELINE:>17}"
    )
    print(header)
    print("-" * len(header))
    for label, runs in times.items():
        imp, proc = runs["import"], runs["process"]
        print(
            f"{label:<16}{min(imp) * 1e3:>10.0f}ms{statistics.median(imp) * 1e3:>8.0f}ms"
            f"{min(proc) * 1e3:>11.0f}ms{statistics.median(proc) * 1e3:>8.0f}ms"
            f"{statistics.median(imp) / base:>16.2f}×"
        )
    hierps = statistics.median(times["import hierps"]["import"])
    model = statistics.median(times["hierps.Model"]["import"])
    for peer in ("import pymc", "import bambi", "import arviz"):
        peer_median = statistics.median(times[peer]["import"])
        print(
            f"{peer} takes {_ratio(peer_median / hierps)} `import hierps` "
            f"and {_ratio(peer_median / model)} `hierps.Model`"
        )


if __name__ == "__main__":
    main()
