"""The tasks one rank runs (``--worker``): one process is one rank; everything comes from the environment.

The same worker runs under the emulated cluster (:mod:`benchmarks.run` starts it in a network
namespace), under ``torchrun`` or under a scheduler that sets Lightning's variables::

    # on each of 2 nodes (a real cluster):
    MASTER_ADDR=node0 MASTER_PORT=29500 WORLD_SIZE=2 NODE_RANK=<0|1> LOCAL_RANK=0 RANK=<0|1> \
        OMP_NUM_THREADS=1 python -m benchmarks.run --worker --task throughput --strategy odsgd \
        --batch-size 32 --result /shared/odsgd
    torchrun --nnodes 2 --nproc-per-node 1 ... -m benchmarks.run --worker --task throughput ...

``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` (default 1) give Lightning's ``devices`` and ``num_nodes``.
Each rank writes ``<result>.rank<r>.json``. Tasks:

* ``allreduce``: time ``all_reduce`` of one fp32 buffer of ``--nbytes`` (a ResNet-18 gradient by
  default): the all-reduce throughput of the link, payload bytes per second.
* ``throughput``: ResNet-18 (torchvision, ``num_classes=10``) on random CIFAR-shaped batches
  (3x32x32, 10 classes), SGD lr 0.01 momentum 0.9; ``--warmup`` steps, then ``--steps`` timed
  steps. Records the window's wall time, :class:`lightning_delayed.CommMonitor` totals over the
  window (bytes, blocked time), the bytes the network device sent, and peak RSS.
* ``digits``: the digits CNN of ``examples/digits.py`` for ``--epochs`` epochs per seed; test
  accuracy after every epoch and the training wall time up to it (validation time excluded).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl

from benchmarks.base.rank import (
    ACCELERATOR_ENV,
    ACCELERATORS,
    NUM_CLASSES,
    REPO,
    accelerator,
    backend,
    bench_trainer,
    rank_and_world,
    tx_bytes,
    versions,
)

TASKS = ("allreduce", "throughput", "digits", "contention")
LR = 0.01
MOMENTUM = 0.9


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("worker (one rank; also for torchrun / real clusters)")
    g.add_argument("--worker", action="store_true", help="run one rank of one task (reads RANK, WORLD_SIZE, ...)")
    g.add_argument("--task", choices=TASKS, help="worker task")
    g.add_argument("--strategy", help="worker: strategy name (ours, ddp, post_local_sgd, compute_only)")
    g.add_argument("--batch-size", type=int, default=32, help="worker: batch size per rank")
    g.add_argument("--warmup", type=int, default=2, help="worker: untimed steps first")
    g.add_argument("--seeds", default="0", help="worker digits: comma-separated seeds")
    g.add_argument("--nbytes", type=int, default=0, help="worker allreduce: buffer bytes (0: ResNet-18 gradient)")
    g.add_argument("--reps", type=int, default=3, help="worker allreduce: timed repetitions")
    g.add_argument("--result", help="worker: result prefix; rank r writes <result>.rank<r>.json")
    g.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default="cpu",
        help="cpu (gloo; emulated links as root) or gpu (one CUDA device per rank, NCCL, no link emulation)",
    )
    g.add_argument(
        "--cpu-split",
        action="store_true",
        help="throughput: CPU seconds per step of the main thread, gloo's threads and the rest "
        "(/proc/<pid>/task, read at the window's ends only); given to the runner, every compared run gets it "
        "and the page shows the split under the cell's table",
    )


def resnet18_grad_bytes() -> int:
    import torchvision

    return sum(p.numel() * p.element_size() for p in torchvision.models.resnet18(num_classes=NUM_CLASSES).parameters())


def task_allreduce(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend())
    nbytes = args.nbytes or resnet18_grad_bytes()
    buf = torch.ones(nbytes // 4, device="cuda" if accelerator() == "gpu" else "cpu")
    dist.all_reduce(buf)  # connect and warm up
    dist.barrier()
    tx0, t0 = tx_bytes(), time.perf_counter()
    for _ in range(args.reps):
        dist.all_reduce(buf)
    if buf.is_cuda:  # NCCL returns before the GPU is done
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.reps
    tx1 = tx_bytes()
    return {
        "nbytes": buf.numel() * 4,
        "reps": args.reps,
        "seconds_per_op": seconds,
        "bytes_per_s": buf.numel() * 4 / seconds,
        "wire_bytes_per_op": None if tx0 is None or tx1 is None else (tx1 - tx0) / args.reps,
    }


def task_contention(args: argparse.Namespace) -> dict[str, Any]:
    """How fast compute runs while an all-reduce is in flight on the same cores.

    Overlap hides communication only if the communication leaves the compute alone. Here both
    share 2 cores, so this measures ResNet-18 steps (forward, backward, SGD; no Lightning, no
    communication of their own) alone, then with a thread running back-to-back all-reduces of a
    ResNet-18-sized buffer on its own gloo group: ``compute_speed_under_comm = t_alone / t_shared``
    bounds the overlap efficiency any overlapping strategy can reach on this link.
    """
    import threading

    import torch
    import torch.distributed as dist
    import torchvision

    dist.init_process_group("gloo")
    comm_group = dist.new_group(backend="gloo")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, NUM_CLASSES, (args.batch_size,))

    def steps(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return (time.perf_counter() - t0) / n

    steps(args.warmup)
    alone = steps(args.steps)
    buf = torch.ones(resnet18_grad_bytes() // 4)
    lock, stop, started = threading.Lock(), threading.Event(), [0]

    def communicate() -> None:
        while True:
            with lock:
                if stop.is_set():
                    return
                started[0] += 1
            dist.all_reduce(buf, group=comm_group)

    dist.barrier()
    thread = threading.Thread(target=communicate, daemon=True)
    thread.start()
    shared = steps(args.steps)
    with lock:
        stop.set()
        mine = started[0]
    # Collectives must match: the rank that started fewer all-reduces issues the missing ones.
    most = torch.tensor([mine])
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    for _ in range(int(most.item()) - mine):
        dist.all_reduce(buf, group=comm_group)
    thread.join()
    return {
        "batch_size": args.batch_size,
        "step_alone_s": alone,
        "step_under_comm_s": shared,
        "compute_speed_under_comm": alone / shared,
        "allreduces_during": mine,
    }


def resnet_task(batch_size: int, steps: int, rank: int) -> tuple[pl.LightningModule, Any]:
    """The throughput workload: ResNet-18 (10 classes, SGD lr 0.01 momentum 0.9) and a loader of
    ``steps`` copies of one random CIFAR-shaped batch, fixed per rank (seed ``1000 + rank``)."""
    import lightning.pytorch as pl
    import torch
    import torchvision
    from torch.utils.data import DataLoader, Dataset

    class Batches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(1000 + rank)
            self.x = torch.randn(batch_size, 3, 32, 32, generator=g)
            self.y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)

        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.x, self.y

    class ResNet(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=NUM_CLASSES)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    return ResNet(), DataLoader(Batches(), batch_size=None, shuffle=False)


def task_throughput(args: argparse.Namespace) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    from benchmarks.base import cputime
    from benchmarks.base.baselines import build_strategy
    from lightning_delayed import CommMonitor

    rank, _ = rank_and_world()
    torch.manual_seed(0)
    total = args.warmup + args.steps
    gpu = accelerator() == "gpu"

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.tx: dict[int, int | None] = {}
            self.cpu: dict[int, cputime.Snapshot] = {}

        def on_train_batch_end(self, trainer: pl.Trainer, *a: Any) -> None:
            if gpu:  # the step's kernels are queued, not done, when the hook runs
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            step = trainer.global_step
            if step in (args.warmup, total):
                self.tx[step] = tx_bytes()
                if getattr(args, "cpu_split", False):  # after the clock read: outside the window
                    self.cpu[step] = cputime.snapshot()

    clock, monitor = Clock(), CommMonitor(log=False, skip_steps=args.warmup)
    trainer = bench_trainer(build_strategy(args.strategy), max_steps=total, callbacks=[clock, monitor])
    trainer.fit(*resnet_task(args.batch_size, total, rank))
    ends = clock.ends
    window = ends[total - 1] - ends[args.warmup - 1]
    tx0, tx1 = clock.tx.get(args.warmup), clock.tx.get(total)
    t = monitor.totals
    return {
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "window_s": window,
        "step_s": window / args.steps,
        "step_times_s": [b - a for a, b in itertools.pairwise(ends)],
        "samples_per_s": args.batch_size * args.steps / window,
        "monitor_steps": t.steps,
        "blocked_s_per_step": t.blocked_s / max(t.steps, 1),
        "bytes_per_step": t.bytes / max(t.steps, 1),
        "staleness_mean": t.staleness_sum / t.staleness_count if t.staleness_count else None,
        "wire_bytes_per_step": None if tx0 is None or tx1 is None else (tx1 - tx0) / args.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
        "cpu_split_s_per_step": (
            {
                k: v / args.steps
                for k, v in cputime.split(
                    clock.cpu[args.warmup], clock.cpu[total], os.getpid(), cputime.clock_ticks()
                ).items()
            }
            if clock.cpu
            else None
        ),
    }


def task_digits(args: argparse.Namespace) -> dict[str, Any]:
    import lightning.pytorch as pl

    sys.path.insert(0, str(REPO / "examples"))
    from digits import DATA_DESCRIPTION, DigitsCNN, DigitsDataModule

    from benchmarks.base.baselines import build_strategy
    from benchmarks.base.clock import TrainingClock

    class EpochRecorder(TrainingClock):
        """Test accuracy after every epoch against training wall time (validation excluded)."""

        def record(self, trainer: pl.Trainer, wall_s: float) -> None:
            acc = float(trainer.callback_metrics["val_acc"])
            self.points.append({"epoch": trainer.current_epoch + 1, "wall_s": wall_s, "acc": acc})

    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        pl.seed_everything(seed, workers=True, verbose=False)
        recorder = EpochRecorder()
        trainer = bench_trainer(
            build_strategy(args.strategy),
            max_epochs=args.epochs,
            use_distributed_sampler=True,  # the data module's dataset, sharded over the ranks
            limit_val_batches=None,  # validates every epoch
            callbacks=[recorder],
        )
        trainer.fit(DigitsCNN(), datamodule=DigitsDataModule(batch_size=args.batch_size, seed=0))
        runs.append({"seed": seed, "epochs": recorder.points})
    return {"data": DATA_DESCRIPTION, "batch_size": args.batch_size, "runs": runs}


def run_worker(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    import lightning_delayed  # noqa: F401  (registers the strategy names)

    if not args.task or not args.result:
        raise ValueError("--worker needs --task and --result")
    if getattr(args, "accelerator", "cpu") == "gpu":  # a worker started by hand: tell bench_trainer
        os.environ[ACCELERATOR_ENV] = "gpu"
    if args.task not in ("allreduce", "contention") and not args.strategy:
        raise ValueError(f"--task {args.task} needs --strategy")
    if args.warmup < 1 or args.steps < 1:
        raise ValueError(f"--warmup and --steps must be >= 1, got {args.warmup} and {args.steps}")
    torch.set_num_threads(1)
    rank, world = rank_and_world()
    task = {
        "allreduce": task_allreduce,
        "throughput": task_throughput,
        "digits": task_digits,
        "contention": task_contention,
    }[args.task]
    result = task(args)
    result.update(task=args.task, strategy=args.strategy, rank=rank, world_size=world, versions=versions())
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    if dist.is_available() and dist.is_initialized():
        # Tear gloo down while every rank is alive (it sometimes aborts at interpreter exit otherwise).
        dist.barrier()
        dist.destroy_process_group()
