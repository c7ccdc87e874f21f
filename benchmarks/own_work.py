"""``python -m benchmarks.own_work``: this workload alone; the code lives in :mod:`benchmarks.workloads.own_work`."""

from __future__ import annotations

import sys

from benchmarks.workloads.own_work import main

if __name__ == "__main__":
    sys.exit(main())
