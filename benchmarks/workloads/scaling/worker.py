"""The rank side of the phase: one process is one rank of a link sweep, the MLP runs or the calibration."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.workloads.scaling.model import ready_profile

if TYPE_CHECKING:
    pass


SWEEP_SIZES = tuple(round(4096 * (45e6 / 4096) ** (i / 7)) // 4 * 4 for i in range(8))
"""8 message sizes, geometric from 4 KB to 45 MB (a ResNet-18 gradient)."""
MLP_WIDTH, MLP_IN, MLP_DEPTH = 1024, 256, 3


def _task_sweep(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from benchmarks.base.rank import accelerator, backend

    dist.init_process_group(backend())
    device = "cuda" if accelerator() == "gpu" else "cpu"
    n = dist.get_world_size()
    points = []
    for nbytes in [int(s) for s in args.sizes.split(",")]:
        buf = torch.ones(nbytes // 4, device=device)
        dist.all_reduce(buf)  # first use of this size (allocation, connection warm-up)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.reps):
            dist.all_reduce(buf)
        if buf.is_cuda:  # NCCL returns before the GPU is done
            torch.cuda.synchronize()
        points.append([buf.numel() * 4, n, (time.perf_counter() - t0) / args.reps])
    return {"points": points}


def mlp() -> Any:
    """The cluster's model: ``MLP_IN``-``MLP_WIDTH`` x ``MLP_DEPTH``-10, ReLU between (9.5 MB of fp32)."""
    import itertools

    from torch import nn

    dims = [MLP_IN, *[MLP_WIDTH] * MLP_DEPTH]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(MLP_WIDTH, 10))


def measure_profiles(batch: int) -> dict[str, Any]:
    """:func:`ready_profile` of ResNet-18 (batch 32, as the throughput cells) and the MLP, one thread, here."""
    import torch
    import torchvision

    from benchmarks.base.rank import NUM_CLASSES

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        resnet = torchvision.models.resnet18(num_classes=NUM_CLASSES)
        x, y = torch.randn(32, 3, 32, 32), torch.randint(0, NUM_CLASSES, (32,))
        out = {"resnet18": ready_profile(resnet, x, y)}
        out["mlp"] = ready_profile(mlp(), torch.randn(batch, MLP_IN), torch.randint(0, 10, (batch,)))
    finally:
        torch.set_num_threads(threads)
    return out


def _task_mlp(args: argparse.Namespace) -> dict[str, Any]:
    """A small MLP (random data, 10 classes) trained by each of ``--strategy`` (comma-separated), ``--rounds`` times.

    Interleaved (A B C, A B C, ...) in one process per rank: one Trainer per run, on the process group
    initialised once here (Lightning reuses it), so the repeats cost no process start-up. Timed like
    the ResNet-18 throughput task: the mean step after ``--warmup`` steps.
    """

    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader

    from benchmarks.base.baselines import build_strategy
    from benchmarks.base.rank import FitEnvironment, accelerator, backend, bench_trainer, rank_and_world

    rank, _ = rank_and_world()
    gpu = accelerator() == "gpu"
    dist.init_process_group(backend())
    total = args.warmup + args.steps
    g = torch.Generator().manual_seed(1000 + rank)
    x, y = torch.randn(args.batch_size, MLP_IN, generator=g), torch.randint(0, 10, (args.batch_size,), generator=g)

    class MLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *a: Any) -> None:
            if gpu:  # the step's kernels are queued, not done, when the hook runs
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    env = FitEnvironment()  # each run starts from the runner's environment
    runs = []
    for rnd in range(args.rounds):
        for name in [n for n in args.strategy.split(",") if n]:
            env.restore()
            torch.manual_seed(0)
            clock, module = Clock(), MLP()
            trainer = bench_trainer(build_strategy(name), max_steps=total, callbacks=[clock])
            trainer.fit(module, DataLoader([(x, y)] * total, batch_size=None))
            window = clock.ends[total - 1] - clock.ends[args.warmup - 1]
            runs.append({"round": rnd, "strategy": name, "step_s": window / args.steps})
            dist.barrier()  # the next run starts together on every rank
    params = list(MLP().parameters())
    return {
        "batch_size": args.batch_size,
        "steps": args.steps,
        "runs": runs,
        "model_bytes": sum(q.numel() * q.element_size() for q in params),
        "param_bytes": [q.numel() * q.element_size() for q in reversed(params)],  # gradient-ready order
    }


def run_worker(args: argparse.Namespace) -> None:
    import warnings

    import torch
    import torch.distributed as dist

    from benchmarks.base.rank import rank_and_world

    if args.task != "sweep":  # the sweep needs no Lightning: start it fast
        import lightning_delayed  # noqa: F401  (registers the strategy names)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rank, world = rank_and_world()
    if args.task == "throughput":  # the ResNet-18 compute-only calibration, from the shared worker
        from benchmarks.base.tasks import task_throughput

        args.warmup = 2
        result = task_throughput(args)
    else:
        result = {"sweep": _task_sweep, "mlp": _task_mlp}[args.task](args)
    result.update(task=args.task, strategy=args.strategy, rank=rank, world_size=world)
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # tear gloo down while every rank is alive
        dist.destroy_process_group()
