"""``python benchmarks/import_time.py``: the code is in :mod:`benchmarks.workloads.import_time`."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workloads.import_time import main

if __name__ == "__main__":
    main()
