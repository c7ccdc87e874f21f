"""The phase on the runner's side: its options, its budget, its measurement."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.base.launch import Runner
from benchmarks.base.phase import Options
from benchmarks.workloads.own_cost.common import (
    BOUND,
    NAME,
    PAIR_TIMEOUT_S,
    TARGET,
    bracketed,
    hooked_strategies,
    mean_over_ranks,
    summarise,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.base import netns


FIT_OVERHEAD_S = 4.0
"""A fit's Trainer set-up and teardown in the worker, on top of its steps (measured: about 4 s)."""
STEP_S = 0.2
"""A free-communication ResNet-18 step at batch 32 on one thread (the compute-only bound, about 0.18 s)."""
OWN_WORK_S = 60.0
""":mod:`benchmarks.workloads.own_work` for every rule: 3 rounds of 9 timings on ResNet-18."""
SPLIT_RUN_S = 25.0
"""One real-link throughput run of the CPU split: process start-up, set-up and its steps."""


def estimate_s(args: argparse.Namespace) -> float:
    """The phase's run time on a quiet machine (s): every bracketed fit, the isolated own work, and
    the CPU split for ``ssgd`` and (at most) every strategy."""
    n = len(args.own_cost_strategies.split(",")) if args.own_cost_strategies else 8
    fits = args.own_cost_repeats * (2 * n + 1)
    fit_s = FIT_OVERHEAD_S + STEP_S * (args.own_cost_warmup + args.own_cost_steps)
    split = {"none": 0, "missed": n + 1, "all": n + 1}[args.own_cost_split]
    return fits * fit_s + OWN_WORK_S + split * SPLIT_RUN_S


def add_args(p: argparse.ArgumentParser) -> None:
    opt = Options(p, NAME, "each strategy with communication made free")
    opt("strategies", "", "comma-separated (default: every strategy with a comm_hook)")
    opt("steps", 24, "timed steps per fit (a multiple of sync_every)")
    opt("warmup", 4, "untimed steps before each fit's timed steps")
    opt("repeats", 3, "interleaved rounds")
    opt("batch-size", 32, "batch size per rank")
    opt(
        "split",
        "missed",
        "also run the real unshaped link (throughput task, --cpu-split) for ssgd and these strategies: "
        "those that missed the target (default), none, or all",
        choices=("missed", "none", "all"),
    )


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Fill ``out["own_cost"]``: per strategy, step times and own cost over interleaved rounds (unshaped link)."""
    strategies = args.own_cost_strategies.split(",") if args.own_cost_strategies else hooked_strategies()
    shaped.shape(None)
    extra = [
        "--strategies",
        ",".join(strategies),
        "--steps",
        str(args.own_cost_steps),
        "--warmup",
        str(args.own_cost_warmup),
        "--repeats",
        str(args.own_cost_repeats),
        "--batch-size",
        str(args.own_cost_batch_size),
    ]
    start = time.monotonic()
    # One process pair runs every cell (about 5 minutes on a quiet machine): more than one run's usual timeout.
    whole = Runner(runner.link, runner.workdir, max(runner.timeout, PAIR_TIMEOUT_S))
    per_rank = whole.run(NAME, extra, world=2, module="benchmarks.workloads.own_cost.cli")
    names = [BOUND, *strategies]
    rounds = [bracketed(fits) for fits in mean_over_ranks(per_rank)]
    cpu_rounds = [bracketed(fits) for fits in mean_over_ranks(per_rank, cpu=True)]
    cpu = {
        n: {
            k: statistics.median(
                fit["cpu_s_per_step"][k] for r in per_rank for fits in r["rounds"] for fit in fits if fit["name"] == n
            )
            for k in ("main", "gloo", "other")
        }
        for n in names
    }
    out[NAME] = {
        "strategies": strategies,
        "not_measured": {
            n: "no comm_hook: its RPC parameter server is the communication"
            for n in ("sasgd", "asgd")
            if n not in strategies
        },
        "steps": args.own_cost_steps,
        "warmup": args.own_cost_warmup,
        "repeats": args.own_cost_repeats,
        "batch_size": args.own_cost_batch_size,
        "target": TARGET,
        "rounds": rounds,
        "cells": summarise(rounds, names),
        # The same ratio on CPU seconds (every thread of the rank): what a busy machine disturbs least.
        "cpu_rounds": cpu_rounds,
        "cpu_cells": summarise(cpu_rounds, names),
        "cpu_s_per_step": cpu,
        "own_work": own_work_isolated(strategies),
        "seconds": time.monotonic() - start,
    }
    cells = out[NAME]["cells"]
    if args.own_cost_split == "none":
        return
    split_names = [
        n for n in strategies if args.own_cost_split == "all" or not cells.get(n, {}).get("target_met", True)
    ]
    if not split_names:
        return
    out[NAME]["unshaped_split"] = unshaped_split(args, runner, ["ssgd", *[n for n in split_names if n != "ssgd"]])
    out[NAME]["seconds"] = time.monotonic() - start


def own_work_isolated(strategies: Sequence[str]) -> dict[str, Any]:
    """:mod:`benchmarks.workloads.own_work` for the known rules of ``strategies``, in its own process (one thread)."""
    import subprocess
    import tempfile

    from benchmarks.workloads.own_work import RULES

    rules = [n for n in strategies if n in RULES]
    if not rules:
        return {}
    with tempfile.TemporaryDirectory(prefix="ldbench-own-work-") as tmp:
        path = Path(tmp) / "own_work.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "benchmarks.workloads.own_work", "--rules", ",".join(rules), "--json", str(path)]
        subprocess.run(cmd, check=True, env=env, timeout=PAIR_TIMEOUT_S)
        result: dict[str, Any] = json.loads(path.read_text())
        return result


def unshaped_split(args: argparse.Namespace, runner: Runner, names: Sequence[str]) -> dict[str, Any]:
    """Real communication on the unshaped link: step time and per-thread CPU per step, mean over the ranks."""
    result: dict[str, Any] = {}
    for name in names:
        extra = ["--strategy", name, "--steps", str(args.own_cost_steps), "--warmup", str(args.own_cost_warmup)]
        extra += ["--batch-size", str(args.own_cost_batch_size), "--cpu-split"]
        per_rank = runner.run("throughput", extra, world=2)
        result[name] = {
            "step_s": statistics.fmean(r["step_s"] for r in per_rank),
            "cpu_s_per_step": {
                k: statistics.fmean(r["cpu_split_s_per_step"][k] for r in per_rank) for k in ("main", "gloo", "other")
            },
        }
    return result
