"""``python -m benchmarks.own_cost``: this workload alone; the code lives in :mod:`benchmarks.workloads.own_cost`."""

from __future__ import annotations

import sys

from benchmarks.workloads.own_cost.cli import main

if __name__ == "__main__":
    sys.exit(main())
