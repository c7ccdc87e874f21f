"""The core workload ``accuracy`` (not in the default run): the digits CNN to a target accuracy.

Every strategy but the compute-only bound, ``--seeds-list``, ``--epochs``, on the slowest shaped
link; test accuracy after every epoch and the wall time to it. The page renders it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.base import netns
from benchmarks.base.baselines import strategy_list
from benchmarks.base.launch import RunFailed, Runner, log
from benchmarks.workloads.throughput import Write


def measure(
    args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any], write: Write
) -> None:
    """Every strategy but the compute-only bound on the slowest shaped link, all seeds; ``write`` after each."""
    names = strategy_list(args.strategies)
    shaped_rates = [r for r in args.rates if r is not None]
    rate = min(shaped_rates) if shaped_rates else None
    shaped.shape(rate)
    log(f"accuracy: digits on {netns.format_rate(rate)}")
    for name in [n for n in names if n != "compute_only"]:
        entry: dict[str, Any] = {"strategy": name, "bandwidth": netns.format_rate(rate), "bps": rate, "runs": []}
        extra = ["--strategy", name, "--epochs", str(args.epochs), "--batch-size", "32"]
        t0 = time.monotonic()
        try:  # all seeds in one pair of processes; if that fails, one pair per seed
            entry["runs"] = runner.run("digits", [*extra, "--seeds", args.seeds_list])[0]["runs"]
        except RunFailed as e:
            entry["error"] = str(e)
            for seed in args.seed_ints if len(args.seed_ints) > 1 else []:
                try:
                    entry["runs"] += runner.run("digits", [*extra, "--seeds", str(seed)])[0]["runs"]
                except RunFailed as e:
                    entry["error"] = str(e)
        entry["status"] = "ok" if len(entry["runs"]) == len(args.seed_ints) else "failed"
        accs = [r["epochs"][-1]["acc"] for r in entry["runs"] if r["epochs"]]
        log(f"  {name:18s} acc {accs} ({time.monotonic() - t0:.0f} s)")
        out["accuracy"].append(entry)
        write(args, out)
