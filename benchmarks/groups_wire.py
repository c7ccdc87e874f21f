"""``python -m benchmarks.groups_wire``: the code lives in :mod:`benchmarks.workloads.groups_wire`."""

from benchmarks.workloads.groups_wire import main

if __name__ == "__main__":
    main()
