"""The rank side of the phase: one process is one rank (``--worker``)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.base.free_hook import FreeHook
from benchmarks.workloads.own_cost.common import BOUND, NAME, window_step_s


def build(name: str) -> Any:
    from benchmarks.base.baselines import SYNC_EVERY, ComputeOnlyStrategy, our_strategies

    if name == BOUND:
        return ComputeOnlyStrategy()
    cls = our_strategies()[name]
    # No buffer broadcast either (ssgd and odsgd keep DDP's default): nothing at all is communicated.
    kwargs: dict[str, Any] = {"comm_hook": FreeHook(), "broadcast_buffers": False}
    if "sync_every" in inspect.signature(cls.__init__).parameters:
        kwargs["sync_every"] = SYNC_EVERY
    return cls(**kwargs)


def fit_once(name: str, args: argparse.Namespace, rank: int) -> dict[str, Any]:
    """One fit of ``name``: ``warmup`` untimed steps, then ``steps`` timed; step time and CPU split."""
    import lightning.pytorch as pl

    from benchmarks.base import cputime
    from benchmarks.base.baselines import SYNC_EVERY
    from benchmarks.base.rank import bench_trainer
    from benchmarks.base.tasks import resnet_task

    torch.manual_seed(0)
    total = args.warmup + args.steps
    pid, hz = os.getpid(), cputime.clock_ticks()

    class Clock(pl.Callback):
        """The wall clock at every step end from the warm-up's on; thread CPU snapshots at the first and last."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu: dict[int, cputime.Snapshot] = {}

        def on_train_batch_end(self, trainer: pl.Trainer, *a: Any) -> None:
            if trainer.global_step >= args.warmup:
                self.ends.append(time.perf_counter())
            if trainer.global_step in (args.warmup, total):
                self.cpu[trainer.global_step] = cputime.snapshot(pid)

    clock = Clock()
    trainer = bench_trainer(build(name), max_steps=total, callbacks=[clock])
    trainer.fit(*resnet_task(args.batch_size, total, rank))
    cpu = {k: v / args.steps for k, v in cputime.split(clock.cpu[args.warmup], clock.cpu[total], pid, hz).items()}
    return {
        "name": name,
        "step_s": window_step_s(clock.ends, SYNC_EVERY),
        "mean_step_s": (clock.ends[-1] - clock.ends[0]) / args.steps,
        "cpu_s_per_step": cpu,
    }


def task_own_cost(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.base.rank import FitEnvironment, rank_and_world

    rank, _ = rank_and_world()
    # C A C B C ... C: every strategy between two compute-only fits of the same round.
    order = [BOUND]
    for name in args.strategies.split(","):
        order += [name, BOUND]
    env = FitEnvironment()  # every fit must find what the first found
    rounds = []
    for _ in range(args.repeats):
        fits = []
        for name in order:
            env.restore()
            fits.append(fit_once(name, args, rank))
        rounds.append(fits)
    return {"rounds": rounds, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size}


def run_worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from benchmarks.base.rank import rank_and_world, versions

    warnings.filterwarnings("ignore")
    import lightning_delayed  # noqa: F401  (registers the strategy names)

    torch.set_num_threads(1)
    rank, world = rank_and_world()
    result = task_own_cost(args)
    result.update(task=NAME, rank=rank, world_size=world, versions=versions())
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
