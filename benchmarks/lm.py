"""``python -m benchmarks.lm``: the lm workload alone (the code lives in :mod:`benchmarks.workloads.lm`)."""

from __future__ import annotations

import sys

from benchmarks.workloads.lm.cli import main

if __name__ == "__main__":
    sys.exit(main())
