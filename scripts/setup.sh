#!/usr/bin/env bash
# Create .venv with Python 3.12 and install hierps with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${HIERPS_PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3.12" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] >= (3, 12)' 2>/dev/null; then
      python_bin="$candidate"; break
    fi
  done
fi
if [ -z "$python_bin" ]; then
  echo "hierps needs Python >= 3.12 (set HIERPS_PYTHON to its path)" >&2; exit 2
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
