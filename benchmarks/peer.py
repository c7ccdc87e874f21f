"""``python -m benchmarks.peer``: the peer workload alone (the code lives in :mod:`benchmarks.workloads.peer`)."""

from __future__ import annotations

import sys

from benchmarks.workloads.peer.cli import main

if __name__ == "__main__":
    sys.exit(main())
