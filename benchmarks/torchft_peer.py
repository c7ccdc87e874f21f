"""``python -m benchmarks.torchft_peer``: the code lives in :mod:`benchmarks.workloads.torchft_peer`."""

from benchmarks.workloads.torchft_peer import main

if __name__ == "__main__":
    main()
