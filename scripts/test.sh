#!/usr/bin/env bash
# Set up (if needed), lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lightning_delayed tests examples benchmarks
.venv/bin/mypy
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest "$@"
