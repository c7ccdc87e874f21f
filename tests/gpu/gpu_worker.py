"""Rank-side code of the GPU tests (NCCL backend, CUDA streams)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from lightning_delayed import ODSGDStrategy
from lightning_delayed.comm.buckets import launch_average
from tests.helpers.models import Recorder, RegressionModule, params_of, trainer
from tests.helpers.reference import reference_odsgd


def odsgd_on_nccl() -> dict[str, Any]:
    """OD-SGD on one GPU over NCCL against the reference loop (on CPU, same float64 arithmetic)."""
    opt = {"kind": "sgd", "lr": 0.05, "momentum": 0.9}
    module = RegressionModule(opt=opt)
    recorder = Recorder()
    strategy = ODSGDStrategy(dc_lambda=0.3, process_group_backend="nccl")
    trainer(strategy, accelerator="gpu", max_epochs=2, callbacks=[recorder]).fit(module)
    backend = dist.get_backend()
    ref = reference_odsgd(opt, epochs=2, dc_lambda=0.3)  # world size 1: mean(g) = g, no collective
    return {
        "backend": backend,
        "ours": params_of(module.cpu()),
        "reference": ref["final"],
        "calls": strategy.ddp_hook.calls,
    }


def stream_overlap() -> dict[str, Any]:
    """A bucketed average in flight on NCCL's stream while the compute stream overwrites its source.

    The result must be the launched values: the copy and NCCL's stream are ordered correctly.
    """
    dist.init_process_group("nccl")
    torch.cuda.set_device(0)
    x = torch.randn(64 * 1024 * 1024 // 4, device="cuda")  # 64 MiB: several 25 MiB buckets
    expected = x.clone()
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    pending = launch_average([x])
    x.zero_()  # the live tensor changes while the reduction is in flight
    for _ in range(20):
        a = a @ a
        a = a / a.norm()
    result = pending.wait()[0]
    torch.cuda.synchronize()
    ok = bool(torch.equal(result, expected))
    dist.destroy_process_group()
    return {"correct": ok}
