#!/usr/bin/env bash
# Set up (if needed) and run the linter and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check hierps tests scripts
.venv/bin/python scripts/check_import_cycles.py
.venv/bin/python -m pytest -q -n 2 "$@"
