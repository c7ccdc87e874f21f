"""``python -m benchmarks.lowbit_cost``: the code is in :mod:`benchmarks.workloads.lowbit_cost`."""

from benchmarks.workloads.lowbit_cost import main

if __name__ == "__main__":
    main()
