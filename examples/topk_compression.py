"""A compressor of your own: top-k sparsification with error feedback, the shape of SparseLoCo.

:class:`TopK` keeps the ``k = ceil(fraction * n)`` entries of largest magnitude of each chunk and
sends them as ``k`` int32 indices and ``k`` values; the rest is dropped. Put it in a
:class:`~lightning_delayed.LowBitHook`, which cuts every bucket into one chunk per rank, sends each
chunk to its owner, has the owner average and compress its chunk of the mean again, and gathers
those back (docs/algorithms/index.md, "Low-bit reductions"). The hook's error feedback makes the
dropped entries count later: each rank keeps ``u - decode(encode(u))`` and adds it to its next
send, so over the rounds what a rank sends adds up to what it meant to send. (SparseLoCo, Sarfi et
al. 2025, also quantizes the kept values, and all-gathers every worker's sparse update where this
hook has each chunk's owner sparsify its chunk of the mean again; here the values travel in
float32/float64.)::

    from lightning_delayed import DiLoCoStrategy, LowBitHook
    from topk_compression import TopK

    strategy = DiLoCoStrategy(sync_every=50, comm_hook=LowBitHook(TopK(fraction=0.05)))

Each chunk of ``n`` elements costs ``k * (4 + 4)`` bytes in float32 instead of ``4 n``.
Three methods make a compressor (:class:`~lightning_delayed.ChunkCompressor`): ``wire_bytes``
(known from the chunk's size alone, so every rank sizes its buffers without asking), ``encode``
and ``decode``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_delayed import ChunkCompressor
from lightning_delayed.comm.quantized import as_bytes, compute_dtype, from_bytes


class TopK(ChunkCompressor):
    """The ``ceil(fraction * n)`` largest-magnitude entries of every chunk, as int32 indices then values.

    Args:
        fraction: share of each chunk that is sent, in (0, 1].
    """

    def __init__(self, fraction: float = 0.01) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.fraction = fraction
        self.name = f"top-{fraction:g}"

    def kept(self, numel: int) -> int:
        return min(numel, math.ceil(self.fraction * numel))

    def wire_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return self.kept(numel) * (4 + compute_dtype(dtype).itemsize)

    def encode(self, chunk: Tensor) -> Tensor:
        k = self.kept(chunk.numel())
        index = torch.topk(chunk.abs(), k, sorted=False).indices.sort().values  # ascending: one wire per chunk
        return torch.cat([as_bytes(index.to(torch.int32)), as_bytes(chunk[index])])

    def decode(self, wire: Tensor, numel: int, dtype: torch.dtype) -> Tensor:
        k = self.kept(numel)
        index = from_bytes(wire[: 4 * k], torch.int32).to(torch.int64)
        wide = compute_dtype(dtype)
        out = torch.zeros(numel, dtype=wide, device=wire.device)
        out[index] = from_bytes(wire[4 * k :], wide)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction={self.fraction})"
