#!/usr/bin/env bash
# Mutation testing of hierps' core modules with mutmut 3, one module at a time.
#
#   scripts/mutation.sh                          every module of [tool.hierps.mutation]
#   scripts/mutation.sh calibrated/newton ...    the named modules
#
# Each module is mutated in a scratch copy of the working tree, against the fast tests listed
# for it in pyproject.toml ([tool.hierps.mutation]; slow tests are deselected). The survivors
# of every module are listed in $WORKDIR/<module>.txt; triage them as docs/testing.md says.
#
# Environment: PYTHON, an interpreter with hierps' dependencies and pytest (default: python);
# MUTMUT, mutmut 3 installed for that interpreter (default: the mutmut next to it);
# WORKDIR (default: ${TMPDIR:-/tmp}/hierps-mutation); JOBS, mutants run in parallel
# (default 1); NICENESS (default 15); RERUN=1 keeps a module's earlier results and checks its
# surviving mutants again against the current tests (after adding some). Not part of the
# default test run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
mutmut=${MUTMUT:-$(dirname "$(command -v "$python")")/mutmut}
workdir=${WORKDIR:-${TMPDIR:-/tmp}/hierps-mutation}
jobs=${JOBS:-1}
niceness=${NICENESS:-15}
mkdir -p "$workdir"

if [ $# -eq 0 ]; then
    mapfile -t modules < <("$python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["tool"]["hierps"]["mutation"]))
PY
)
else
    modules=("$@")
fi

for module in "${modules[@]}"; do
    name=${module//\//_}
    scratch="$workdir/$name"
    if [ "${RERUN:-0}" = 1 ] && [ -d "$scratch/mutants" ]; then
        files=(tests pyproject.toml)  # the mutants stay; their tests are refreshed
    else
        files=(hierps tests pyproject.toml)
        rm -rf "$scratch"
        mkdir -p "$scratch"
    fi
    # The tracked and new (not ignored) files of the working tree: hierps, tests, config.
    (cd "$root" && git ls-files -z --cached --others --exclude-standard -- "${files[@]}") \
        | (cd "$root" && xargs -0 tar -cf - --ignore-failed-read) | tar -C "$scratch" -xf -
    # Mutate this module only, against its own tests.
    "$python" - "$scratch/pyproject.toml" "$module" <<'PY'
import re, sys, tomllib
from pathlib import Path

path, module = Path(sys.argv[1]), sys.argv[2]
config = tomllib.loads(path.read_text())
tests = config["tool"]["hierps"]["mutation"].get(module)
if tests is None:
    sys.exit(f"{module!r} is not listed in [tool.hierps.mutation]")
tests = [f"tests/{t}" for t in tests if (path.parent / "tests" / t).exists()]
text = path.read_text()

def setting(key, values):
    global text
    listed = ", ".join(f'"{v}"' for v in values)
    text = re.sub(rf"^{key} = \[.*?\]$", f"{key} = [{listed}]", text, count=1, flags=re.S | re.M)

setting("only_mutate", [f"hierps/{module}.py"])
setting("pytest_add_cli_args_test_selection", tests)
path.write_text(text)
PY
    echo "== $module ($(date +%H:%M:%S))"
    start=$SECONDS
    (
        cd "$scratch"
        unset PYTHONPATH
        if [ -d mutants ]; then  # a rerun: new tests, so collect the stats again
            rm -f mutants/mutmut-stats.json
            "$python" - <<'PY'
import json
from pathlib import Path

for meta in Path("mutants").rglob("*.py.meta"):
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    data["exit_code_by_key"] = {k: (None if v in (0, 33) else v) for k, v in codes.items()}
    meta.write_text(json.dumps(data, indent=4))
PY
        fi
        nice -n "$niceness" "$mutmut" run --max-children "$jobs" > "$workdir/$name.log" 2>&1 || true
        # mutmut ties a function to the tests that call it, but a module-scoped fixture calls
        # it only in the first test that uses it: let every test of the test files that reach
        # a function check its mutants, and run the survivors again against them.
        "$python" - <<'PY'
import json
from collections import defaultdict
from pathlib import Path

path = Path("mutants/mutmut-stats.json")
stats = json.loads(path.read_text())
by_file = defaultdict(set)
for test in stats["duration_by_test"]:
    by_file[test.split("::")[0]].add(test)
reached = stats["tests_by_mangled_function_name"]
for function, tests in reached.items():
    files = {test.split("::")[0] for test in tests}
    reached[function] = sorted(set(tests).union(*(by_file[f] for f in files)))
# A function called only while a fixture is set up is tied to no test at all: every test of
# the selection checks its mutants.
for meta in Path("mutants").rglob("*.py.meta"):
    for key in json.loads(meta.read_text())["exit_code_by_key"]:
        reached.setdefault(key.rsplit("__mutmut_", 1)[0], sorted(stats["duration_by_test"]))
path.write_text(json.dumps(stats, indent=4))
for meta in Path("mutants").rglob("*.py.meta"):
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    data["exit_code_by_key"] = {k: (None if v in (0, 33) else v) for k, v in codes.items()}
    meta.write_text(json.dumps(data, indent=4))
PY
        nice -n "$niceness" "$mutmut" run --max-children "$jobs" >> "$workdir/$name.log" 2>&1 || true
        "$mutmut" results --all true > "$workdir/$name.txt" 2>&1 || true
    )
    elapsed=$((SECONDS - start))
    echo "   $(grep -c ": " "$workdir/$name.txt" || true) mutants in ${elapsed}s:" \
        "$(sed -n 's/.*: //p' "$workdir/$name.txt" | sort | uniq -c | xargs)"
    echo "   not killed: grep -v ': killed' $workdir/$name.txt"
done
