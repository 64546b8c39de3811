#!/usr/bin/env bash
# Set up (if needed) and run the demo on the built-in simulated study.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hierps demo "$@"
