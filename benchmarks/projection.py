"""``python -m benchmarks.projection``: the scaling workload alone; code in :mod:`benchmarks.workloads.scaling`."""

from __future__ import annotations

import sys

from benchmarks.workloads.scaling.cli import main

if __name__ == "__main__":
    sys.exit(main())
