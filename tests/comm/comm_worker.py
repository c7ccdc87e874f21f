"""Rank-side code of the comm tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_delayed.comm.buckets import NonFiniteReductionError, launch_average
from lightning_delayed.comm.hooks import DelayedAllReduceHook


def averaging() -> dict[str, Any]:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tensors = [
        torch.full((3, 2), float(rank + 1)),
        torch.arange(5.0) * (rank + 1),
        torch.ones(1, dtype=torch.float64),
    ]
    pending = launch_average(tensors, bucket_cap_mb=16 / 2**20)  # 16-byte cap: several buckets
    n_buckets = len(pending.buckets)
    for t in tensors:  # the live tensors change while the reduction is in flight
        t.mul_(100)
    mean = pending.wait()
    weighted = launch_average([torch.tensor([float(rank)])], weight=1.0 + 3 * rank).wait()
    nan_error = None
    try:
        launch_average([torch.tensor([float("nan") if rank == 1 else 1.0])], what="parameters").wait()
    except NonFiniteReductionError as e:
        nan_error = str(e)
    dist.destroy_process_group()
    return {"mean": mean, "buckets": n_buckets, "weighted": weighted[0], "nan_error": nan_error}


def hook_across_bucket_rebuild() -> dict[str, Any]:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    params = list(model.parameters())
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)  # ~1 KB buckets: several per step
    hook = DelayedAllReduceHook(params)
    ddp.register_comm_hook(state=None, hook=hook.hook)
    errors, local_ok, steps = [], [], 4
    buckets_per_step: list[int] = []
    for step in range(steps):
        hook.delayed = step > 0  # step 0 synchronous (warm-up path), then delayed
        gen = torch.Generator().manual_seed(10 * rank + step)
        x = torch.randn(6, 8, generator=gen, dtype=torch.float64)
        for p in params:
            p.grad = None
        ddp(x).pow(2).mean().backward()
        buckets_per_step.append(hook.calls - sum(buckets_per_step))
        # reference: the own gradient computed without DDP, and its mean by a blocking all-reduce
        own = torch.autograd.grad(model(x).pow(2).mean(), params)
        mean_ref = []
        for g in own:
            g = g.clone()
            dist.all_reduce(g)
            mean_ref.append(g / 2)
        launched = hook.take_launched()
        if hook.delayed:
            assert launched is not None
            got = launched.wait()
            errors.append(max((a - b).abs().max().item() for a, b in zip(got, mean_ref, strict=True)))
            local_ok.append(
                all(torch.allclose(p.grad, g, rtol=0, atol=1e-14) for p, g in zip(params, own, strict=True))
            )
        else:
            assert launched is None
            errors.append(max((p.grad - m).abs().max().item() for p, m in zip(params, mean_ref, strict=True)))
            local_ok.append(True)
    dist.destroy_process_group()
    return {"errors": errors, "local_ok": local_ok, "buckets_per_step": buckets_per_step}
