"""``python -m benchmarks.contention``: the code lives in :mod:`benchmarks.workloads.contention`."""

from benchmarks.workloads.contention import main

if __name__ == "__main__":
    main()
