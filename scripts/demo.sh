#!/usr/bin/env bash
# Set up (if needed) and run the digits demo: every registered strategy on 2 CPU processes over gloo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/digits_demo.py "$@"
