"""The phase on the runner's side: its options, its budget, its measurement."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from benchmarks.base import netns
from benchmarks.base.phase import Options
from benchmarks.workloads.lm.common import LR, MODEL, NAME, STRATEGIES, VAL_WINDOWS, schedule, summarize, sync_every

if TYPE_CHECKING:
    from benchmarks.base.launch import Runner


RUN_OVERHEAD_S = 8.0
"""Per seed, on top of its training wall time: Trainer set-up, validation (clock stopped), teardown."""
SPAWN_S = 5.0
"""Per strategy: starting the rank pair."""


def estimate_s(args: argparse.Namespace) -> float:
    """The phase's run time on a quiet machine (s): each strategy's rank pair trains every seed for
    ``--lm-max-wall`` seconds at most (measured: about 28 s per seed at the default 20 s)."""
    strategies = len([s for s in args.lm_strategies.split(",") if s.strip()])
    seeds = len([s for s in args.lm_seeds.split(",") if s.strip()])
    return strategies * (SPAWN_S + seeds * (args.lm_max_wall + RUN_OVERHEAD_S))


def add_args(p: argparse.ArgumentParser) -> None:
    opt = Options(p, NAME, "character-level transformer, time to a target validation loss")
    opt("strategies", ",".join(STRATEGIES), "comma-separated strategies")
    opt("seeds", "0,1,2", "comma-separated seeds")
    opt("bandwidth", "200mbit", "emulated link rate")
    opt("batch-size", 16, "windows per rank and step")
    opt("max-steps", 400, "steps per run at most")
    opt("max-wall", 20.0, "training seconds per run (checked at validation)")
    opt("val-every", 5, "steps between validations")
    opt("target", 2.55, "target validation loss (nats per character)")
    opt.flag(
        "interleave", "one process pair per (seed, strategy), seed-major, instead of one per strategy (+~10 s each)"
    )
    opt("timeout", 300.0, "seconds allowed per strategy (both ranks)")


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Every strategy at ``--lm-bandwidth``, all seeds inside one pair of processes; fills ``out["lm"]``."""
    from benchmarks.base import charlm
    from benchmarks.base.baselines import strategy_kwargs
    from benchmarks.base.launch import RunFailed

    rate = netns.parse_rate(args.lm_bandwidth)
    names = [s.strip() for s in args.lm_strategies.split(",") if s.strip()]
    phase: dict[str, Any] = {
        "bandwidth": netns.format_rate(rate),
        "emulated": shaped.link.emulated,
        "model": dict(MODEL),
        "batch_size": args.lm_batch_size,
        "optimizer": f"AdamW(lr={LR}) for every strategy (the inner optimizer of diloco and streaming_diloco)",
        # Only the periodic strategies: the others take no period.
        "sync_every": {n: sync_every(n) for n in names if strategy_kwargs(n, sync_every(n))},
        "seeds": [int(s) for s in args.lm_seeds.split(",") if s.strip()],
        "max_steps": args.lm_max_steps,
        "max_wall_s": args.lm_max_wall,
        "val_every": args.lm_val_every,
        "val_windows": VAL_WINDOWS,
        "target_loss": args.lm_target,
        "data": charlm.corpus().description,
        "interleaved": args.lm_interleave,
    }
    out[NAME] = phase
    t0 = time.monotonic()
    if shaped.link.emulated:
        shaped.shape(rate)
    common = [
        *("--lm-batch-size", str(args.lm_batch_size)),
        *("--lm-max-steps", str(args.lm_max_steps), "--lm-max-wall", str(args.lm_max_wall)),
        *("--lm-val-every", str(args.lm_val_every)),
    ]
    entries: dict[str, dict[str, Any]] = {n: {"strategy": n, "status": "ok", "runs": []} for n in names}
    phase["entries"] = list(entries.values())
    saved, runner.timeout = runner.timeout, args.lm_timeout
    try:
        for name, seeds in schedule(names, phase["seeds"], args.lm_interleave):
            start, entry = time.monotonic(), entries[name]
            seed_list = ",".join(map(str, seeds))
            try:
                ranks = runner.run(
                    "lm", ["--strategy", name, *common, "--lm-seeds", seed_list], module="benchmarks.workloads.lm.cli"
                )
                entry["runs"] += ranks[0]["runs"]
                entry.update(params=ranks[0]["params"], strategy_kwargs=ranks[0]["strategy_kwargs"])
                finals = [r["points"][-1]["loss"] for r in ranks[0]["runs"] if r["points"]]
                print(
                    f"  lm {name:18s} seeds {seed_list}: final val loss {finals} ({time.monotonic() - start:.0f} s)",
                    file=sys.stderr,
                )
            except RunFailed as e:
                entry.update(status="failed", error=str(e))  # a strategy with a failed seed is reported failed
                print(f"  lm {name} seeds {seed_list}: FAILED ({str(e).splitlines()[0]})", file=sys.stderr)
    finally:
        runner.timeout = saved
    phase["summary"] = [summarize(e, args.lm_target) for e in phase["entries"] if e["status"] == "ok"]
    phase["total_s"] = time.monotonic() - t0
