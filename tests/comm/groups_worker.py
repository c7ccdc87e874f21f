"""Rank-side code of the worker-group comm tests (4 gloo ranks; run by tests.helpers.launch.run_ranks)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from lightning_delayed.comm import stats as comm_stats
from lightning_delayed.comm.buckets import NonFiniteReductionError
from lightning_delayed.comm.communicator import AllReduceHook
from lightning_delayed.comm.compression import CompressedHook
from lightning_delayed.comm.groups import ShardedHook, WorkerGroups, WorkerLayout

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def worker_tensors(case: dict[str, Any], worker: int) -> list[torch.Tensor]:
    """The tensors of one worker: integer values (so every sum is exact), the same on its ranks."""
    out = []
    for j, (shape, dtype) in enumerate(zip(case["shapes"], case["dtypes"], strict=True)):
        n = 1
        for s in shape:
            n *= s
        values = (torch.arange(n, dtype=torch.float64) * (worker + 1) + 7 * j - 3 * worker) % 97
        out.append(values.reshape(shape).to(DTYPES[dtype]))
    return out


def expected(case: dict[str, Any], workers: int, weights: list[float] | None) -> list[torch.Tensor]:
    per_worker = [worker_tensors(case, w) for w in range(workers)]
    out = []
    for j in range(len(case["shapes"])):
        if weights is None:
            total = sum(p[j].double() for p in per_worker)
            out.append((total / workers).to(per_worker[0][j].dtype))
        else:
            total = sum(p[j].double() * weights[w] for w, p in enumerate(per_worker))
            out.append((total / sum(weights)).to(per_worker[0][j].dtype))
    return out


def sharded(cases: list[dict[str, Any]], group_sizes: list[int]) -> dict[str, Any]:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, Any] = {}
    for size in group_sizes:
        layout = WorkerLayout(world, size)
        groups = WorkerGroups.create(layout, rank, None, None)
        worker = layout.worker_of(rank)
        for i, case in enumerate(cases):
            tensors = worker_tensors(case, worker)
            # Rank weights differ inside a worker: the worker's weight is their sum.
            rank_weight = None if not case.get("weighted") else 1.0 + rank
            weights = None
            if rank_weight is not None:
                weights = [sum(1.0 + r for r in layout.intra_ranks(w)) for w in range(layout.num_workers)]
            hook = ShardedHook(AllReduceHook(bucket_cap_mb=case["cap"]), groups, bucket_cap_mb=case["cap"])
            before = comm_stats.comm_stats().snapshot()
            pending = hook.launch(tensors, weight=rank_weight, keys=[f"model/{j}" for j in range(len(tensors))])
            for t in tensors:  # the caller may change its tensors as soon as launch returns
                t.add_(1000)
            got = pending.wait()
            again = pending.wait()
            sent = (comm_stats.comm_stats().snapshot() - before).bytes_sent
            hook.close()
            results[f"G{size}/{i}"] = {
                "got": got,
                "same_on_second_wait": all(a is b for a, b in zip(got, again, strict=True)),
                "expected": expected(case, layout.num_workers, weights),
                "bytes_sent": sent,
            }
        results[f"G{size}/compressed"] = _compressed(groups)
        results[f"G{size}/nan"] = _nan(groups, layout)
        groups.destroy()
    dist.destroy_process_group()
    return results


def _compressed(groups: WorkerGroups) -> dict[str, Any]:
    """fp16 on the cross-worker wire: error feedback is keyed per shard, the result is full dtype."""
    worker = groups.layout.worker_of(groups.rank)
    tensors = [torch.full((5,), 0.1 * (worker + 1), dtype=torch.float64), torch.full((3,), 1.0 + worker)]
    hook = ShardedHook(CompressedHook(AllReduceHook(), "fp16"), groups)
    got = hook.launch(tensors, keys=["model/0", "model/1"]).wait()
    state = hook.state_dict()
    hook.close()
    return {"got": got, "residual_keys": sorted(state["inner"]["compressor"]["residuals"])}


def _nan(groups: WorkerGroups, layout: WorkerLayout) -> str:
    """A NaN in one shard of one worker: every rank raises (none waits forever, none uses the NaN)."""
    worker = layout.worker_of(groups.rank)
    t = torch.ones(8)
    if worker == layout.num_workers - 1:
        t[-1] = float("nan")  # in the last shard only
    hook = ShardedHook(AllReduceHook(), groups)
    try:
        hook.launch([t], keys=["model/0"]).wait()
    except (NonFiniteReductionError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        hook.close()
    return "no error"
