"""Rank-side code of the low-bit reduction tests (tests/comm/test_lowbit.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightning_delayed.comm import stats as comm_stats
from lightning_delayed.comm.buckets import NonFiniteReductionError
from lightning_delayed.comm.lowbit import LowBitHook
from lightning_delayed.comm.quantized import BlockQuantizer, ChunkCompressor

SHAPES = [(7, 5), (3,), (1,), (130,)]
"""Sizes that divide neither into blocks nor into 2 or 3 ranks (146 elements)."""


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def rounds(
    bits: int,
    block_size: int,
    dtype: str,
    steps: int = 3,
    error_feedback: bool = True,
    topk: float | None = None,
) -> dict[str, Any]:
    """``steps`` keyed averages through a :class:`LowBitHook`: what went in, what came out, the bytes.

    ``topk``: the example's top-k compressor (examples/topk_compression.py) keeping that fraction,
    instead of a :class:`BlockQuantizer` of ``bits`` / ``block_size``.
    """
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch_dtype = getattr(torch, dtype)
    compressor: ChunkCompressor = BlockQuantizer(bits, block_size)
    if topk is not None:
        sys.path.insert(0, str(EXAMPLES))  # as a user running the example's directory
        from topk_compression import TopK

        compressor = TopK(topk)
    hook = LowBitHook(compressor, error_feedback=error_feedback)
    hook.set_group(dist.group.WORLD)
    keys = ["model/1", "model/0", "model/3", "model/2"]  # not sorted: the hook sorts them
    out: list[dict[str, Any]] = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 * rank + step)
        tensors = [torch.randn(s, generator=gen, dtype=torch.float64).to(torch_dtype) for s in SHAPES]
        tensors[1][:] = 0.0  # a zero block (block_size <= 3) or a zero stretch
        inputs = [t.clone() for t in tensors]
        before = comm_stats.comm_stats().snapshot()
        pending = hook.launch(tensors, keys=keys, what="parameters")
        for t in tensors:  # the live tensors change while the reduction is in flight
            t.add_(1000.0)
        mean = pending.wait()
        sent = comm_stats.comm_stats().snapshot() - before
        residuals = {k: v.clone() for k, v in hook.residuals.items()}
        out.append({"inputs": inputs, "mean": mean, "bytes": sent.bytes_sent, "residuals": residuals})
    state = hook.state_dict()
    nan_error = None
    bad = [torch.ones(s, dtype=torch_dtype) for s in SHAPES]
    if rank == 1:
        bad[2].view(-1)[0] = float("nan")
    try:
        hook.launch(bad, keys=keys).wait()
    except NonFiniteReductionError as e:
        nan_error = str(e)
    hook.close()
    dist.destroy_process_group()
    return {"rounds": out, "state": state, "nan_error": nan_error}
