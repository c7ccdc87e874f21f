#!/usr/bin/env bash
# Runs mypy and the test suite in a second environment, .venv-latest, with the NEWEST releases of
# torch (and the torchvision built for it), lightning and jsonargparse from the registry; every
# other package keeps its pin from constraints.txt. CI tests the floor (scripts/test.sh); this is
# how we learn early that a new release breaks us. Arguments go to pytest, e.g.
#   bash scripts/test-latest.sh tests/package tests/core -x -q
# Each run re-checks the registry (pip --upgrade), so the environment follows new releases.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-latest
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
unpinned=$(mktemp)
trap 'rm -f "$unpinned"' EXIT
grep -v -E '^(torch|torchvision|lightning|jsonargparse)==' constraints.txt > "$unpinned"
# A site-wide pip constraint (a pip config file's `constraint`, or PIP_CONSTRAINT) may cap torch at
# the CI floor; this environment exists to go past the floor, so only our own constraints apply.
export PIP_CONSTRAINT=/dev/null
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --upgrade --upgrade-strategy only-if-needed -c "$unpinned" \
    -e ".[dev]" torch torchvision lightning "jsonargparse[signatures]"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
print("latest stack:", ", ".join(f"{p} {md.version(p)}" for p in ("torch", "torchvision", "lightning", "jsonargparse")))
PY
"$VENV/bin/mypy"
export OMP_NUM_THREADS=1
exec "$VENV/bin/python" -m pytest "$@"
