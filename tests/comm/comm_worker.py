"""Rank-side code of the comm tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_delayed.comm.buckets import NonFiniteReductionError, launch_average
from lightning_delayed.comm.communicator import AllReduceHook, CommHook
from lightning_delayed.comm.compression import WIRE_DTYPES as WIRE
from lightning_delayed.comm.compression import CompressedHook
from lightning_delayed.comm.hooks import DDPGradientHook


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


def hook_across_bucket_rebuild(compression: str = "none") -> dict[str, Any]:
    """DDPGradientHook over 4 steps (DDP rebuilds its buckets after the first): launched mean vs reference.

    With compression the reference simulates each rank's error feedback per parameter by hand and
    all-gathers the wire tensors: the launched mean must equal the wire-dtype mean of those.
    """
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    params = list(model.parameters())
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)  # ~1 KB buckets: several per step
    comm: CommHook = AllReduceHook() if compression == "none" else CompressedHook(AllReduceHook(), compression)
    hook = DDPGradientHook(params, comm)
    ddp.register_comm_hook(state=None, hook=hook.hook)
    residuals = [torch.zeros_like(p) for p in params]
    errors, local_ok, steps = [], [], 4
    buckets_per_step: list[int] = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(10 * rank + step)
        x = torch.randn(6, 8, generator=gen, dtype=torch.float64)
        for p in params:
            p.grad = None
        ddp(x).pow(2).mean().backward()
        buckets_per_step.append(hook.calls - sum(buckets_per_step))
        # reference: the own gradient computed without DDP, and its mean by a blocking collective
        own = torch.autograd.grad(model(x).pow(2).mean(), params)
        mean_ref = []
        for i, g in enumerate(own):
            if compression == "none":
                g = g.clone()
                dist.all_reduce(g)
                mean_ref.append(g / 2)
                continue
            wire = (g + residuals[i]).to(WIRE[compression])
            residuals[i] = g + residuals[i] - wire.double()
            wires = [torch.empty_like(wire) for _ in range(2)]
            dist.all_gather(wires, wire)
            mean_ref.append(((wires[0] + wires[1]) / 2).double())
        launched = hook.take_launched()
        assert launched is not None
        got = launched.wait()
        errors.append(max((a - b).abs().max().item() for a, b in zip(got, mean_ref, strict=True)))
        local_ok.append(all(torch.allclose(p.grad, g, rtol=0, atol=1e-14) for p, g in zip(params, own, strict=True)))
    state = comm.state_dict()
    dist.destroy_process_group()
    return {"errors": errors, "local_ok": local_ok, "buckets_per_step": buckets_per_step, "state": state}


def compressed_average(compression: str) -> dict[str, Any]:
    """CompressedHook over the default all-reduce: 3 rounds of one keyed stream, one weighted, one one-off."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    hook = CompressedHook(AllReduceHook(bucket_cap_mb=16 / 2**20), compression)  # tiny buckets: several
    rounds = []
    for k in range(3):
        gen = torch.Generator().manual_seed(100 * rank + k)
        tensors = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen) * 1e-3]
        residuals_before = [hook.compressor.residuals.get(f"model/{i}") for i in range(2)]
        sent = [t.clone() for t in tensors]
        pending = hook.launch(tensors, keys=["model/0", "model/1"], what="parameters")
        for t in tensors:  # the live tensors change while the reduction is in flight
            t.mul_(100)
        result = pending.wait()
        rounds.append(
            {
                "sent": sent,
                "residuals_before": residuals_before,
                "residuals_after": [hook.compressor.residuals[f"model/{i}"].clone() for i in range(2)],
                "result": result,
            }
        )
    weighted_input = torch.full((4,), 0.1 * (rank + 1), dtype=torch.float64)
    weighted = hook.launch([weighted_input], weight=1.0 + 3 * rank, keys=["w/0"]).wait()[0]
    one_off_input = torch.full((3,), 1.0 / 3 + rank, dtype=torch.float64)
    one_off = hook.launch([one_off_input]).wait()[0]
    dist.destroy_process_group()
    return {
        "rounds": rounds,
        "weighted": weighted,
        "one_off": one_off,
        "weighted_residual": hook.compressor.residuals["w/0"],
    }


def own_group_does_not_block_default_group() -> dict[str, Any]:
    """Rank 0 launches an average, then joins a broadcast on the default group; rank 1 joins the
    broadcast first and launches its half of the average only afterwards. On the hook's own group
    this completes; had the average been on the default group, rank 0's broadcast would have queued
    behind it and the two ranks would wait for each other forever (gloo runs a group's collectives
    in order, which is exactly what Lightning's per-batch SIGTERM broadcast runs into)."""
    from datetime import timedelta

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    hook = AllReduceHook()
    group = dist.new_group(backend="gloo")
    hook.set_group(group)
    flag = torch.tensor([rank + 10])
    if rank == 0:
        pending = hook.launch([torch.full((4,), 1.0)])
        dist.broadcast(flag, src=1)
    else:
        dist.broadcast(flag, src=1)
        pending = hook.launch([torch.full((4,), 3.0)])
    mean = pending.wait()[0]
    dist.destroy_process_group()
    return {"mean": mean, "flag": int(flag.item())}
