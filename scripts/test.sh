#!/usr/bin/env bash
# Set up (if needed), lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lightning_delayed tests examples benchmarks
.venv/bin/mypy
# The documentation site, strict: a broken link, a missing page or a docstring mkdocstrings cannot
# render fails the run. Built into a temporary directory, removed afterwards.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet -d "$site"
export OMP_NUM_THREADS=1
.venv/bin/python -m pytest "$@"
