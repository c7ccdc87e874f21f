r"""Chunk compressors: what one chunk of a low-bit reduction looks like on the wire.

A :class:`ChunkCompressor` turns a 1-D chunk of floats into the bytes sent for it
(:meth:`~ChunkCompressor.encode`) and back (:meth:`~ChunkCompressor.decode`). The size of the
wire depends only on the chunk's length and dtype (:meth:`~ChunkCompressor.wire_bytes`), so every
rank can size the buffers of an all-to-all without asking. The reduction that carries the chunks,
with its error feedback, is :class:`~lightning_delayed.comm.lowbit.LowBitHook`
(``docs/algorithms/index.md``, "Low-bit reductions").

:class:`BlockQuantizer` is ``compression="int8"`` / ``"int4"``: block-wise absmax scales,

.. math::

    s_b = \max_{i \in b} |z_i| / q_{max}, \qquad
    n_i = \mathrm{clamp}(\mathrm{round\_half\_even}(z_i / s_b), -q_{max}, q_{max}), \qquad
    n_i = 0 \text{ where } s_b = 0

with blocks of ``block_size`` consecutive elements starting afresh in each chunk (the last block
may be shorter), ``q_max = 2^{bits-1} - 1`` (127 for int8, 7 for int4). The wire holds ``n`` (one
byte each for int8; two per byte for int4, ``n + 8`` in each nibble, low nibble first) and then one
scale per block, in the compute dtype (float32, or float64 for float64 tensors). ``decode`` is
``n * s``. A zero block has scale 0 and decodes to 0: nothing divides by zero.

:class:`ChunkCompressor` is the base class to subclass for a low-bit or sparse compressor of your
own (exported as ``lightning_delayed.ChunkCompressor``); hand it to the reduction with
``comm_hook=LowBitHook(MyCompressor())``. Writing one takes three methods;
``examples/topk_compression.py`` is top-k sparsification with error feedback in a few dozen lines.
(:class:`~lightning_delayed.comm.compression.Compressor`, the older name, is something else: the
fp16/bf16 cast of ``compression="fp16"``/``"bf16"``, which needs no chunks since a sum of casts
can be all-reduced in the wire dtype.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

QUANTIZED_BITS: dict[str, int] = {"int8": 8, "int4": 4}
"""The low-bit ``compression`` names and their bits per element."""

DEFAULT_BLOCK_SIZE = 64
"""Elements per scale block (the ``block_size`` default)."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a low-bit reduction computes in: float64 for float64 tensors, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_bytes(t: Tensor) -> Tensor:
    """The bytes of a contiguous tensor, as a 1-D uint8 view."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def from_bytes(wire: Tensor, dtype: torch.dtype) -> Tensor:
    """``wire`` (1-D uint8) read as ``dtype`` (a copy, so the view is aligned)."""
    return wire.clone().view(dtype)


class ChunkCompressor(ABC):
    """How one chunk travels in a low-bit reduction: subclass it to write your own compressor.

    Contract (the reduction relies on it):

    * :meth:`encode` returns a fresh 1-D ``torch.uint8`` tensor of exactly
      :meth:`wire_bytes` ``(chunk.numel(), chunk.dtype)`` bytes; ``chunk`` is 1-D, finite, in the
      compute dtype (float32 or float64), possibly empty.
    * :meth:`decode` of those bytes returns the 1-D chunk the receiver uses, in ``dtype``. The
      sender's error feedback keeps ``chunk - decode(encode(chunk))``; it must be deterministic,
      the same on every rank.
    * The same instance may be used for many chunks; keep no per-chunk state in it.
    """

    name: str = "custom"
    """What the compressor is called in reprs and messages."""

    @abstractmethod
    def wire_bytes(self, numel: int, dtype: torch.dtype) -> int:
        """Bytes :meth:`encode` sends for a chunk of ``numel`` elements of ``dtype``."""

    @abstractmethod
    def encode(self, chunk: Tensor) -> Tensor:
        """The wire bytes of ``chunk`` (1-D uint8, :meth:`wire_bytes` long)."""

    @abstractmethod
    def decode(self, wire: Tensor, numel: int, dtype: torch.dtype) -> Tensor:
        """The chunk of ``numel`` elements of ``dtype`` that ``wire`` stands for."""

    def roundtrip(self, chunk: Tensor) -> tuple[Tensor, Tensor]:
        """``(wire, decode(wire))`` for ``chunk``: what is sent and what the receiver gets."""
        wire = self.encode(chunk)
        return wire, self.decode(wire, chunk.numel(), chunk.dtype)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class BlockQuantizer(ChunkCompressor):
    """Block-wise absmax quantization to ``bits`` bits (int8 or int4), see the module docstring.

    Args:
        bits: 8 (``"int8"``) or 4 (``"int4"``, two values a byte on the wire).
        block_size: B, elements per scale block (default 64); blocks restart in every chunk.
    """

    def __init__(self, bits: int = 8, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if bits not in (4, 8) or isinstance(bits, bool):
            raise ValueError(f"bits must be 8 (int8) or 4 (int4), got {bits!r}")
        self.bits = bits
        self.block_size = _check_int("block_size", block_size, 1)
        self.qmax = 2 ** (bits - 1) - 1
        self.name = f"int{bits}"

    def num_blocks(self, numel: int) -> int:
        return -(-numel // self.block_size)

    def value_bytes(self, numel: int) -> int:
        return numel if self.bits == 8 else -(-numel // 2)

    def wire_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return self.value_bytes(numel) + self.num_blocks(numel) * compute_dtype(dtype).itemsize

    def quantize(self, chunk: Tensor) -> tuple[Tensor, Tensor]:
        """``(n, s)``: the integers (int8, one per element) and the scale of every block."""
        numel, size = chunk.numel(), self.block_size
        blocks = self.num_blocks(numel)
        padded = chunk.new_zeros(blocks * size)
        padded[:numel] = chunk  # padding is zero: it never raises a block's absmax and is never sent
        z = padded.view(blocks, size)
        scales = z.abs().amax(dim=1) / self.qmax if blocks else chunk.new_zeros(0)
        zero = scales == 0
        divisor = torch.where(zero, torch.ones_like(scales), scales)
        n = torch.round(z / divisor[:, None]).clamp_(-self.qmax, self.qmax)
        n[zero] = 0
        return n.reshape(-1)[:numel].to(torch.int8), scales

    def dequantize(self, n: Tensor, scales: Tensor) -> Tensor:
        """``n * s`` per block, in the dtype of ``scales``."""
        numel, size = n.numel(), self.block_size
        padded = scales.new_zeros(scales.numel() * size)
        padded[:numel] = n.to(scales.dtype)
        return (padded.view(-1, size) * scales[:, None]).reshape(-1)[:numel]

    def encode(self, chunk: Tensor) -> Tensor:
        n, scales = self.quantize(chunk)
        values = as_bytes(n) if self.bits == 8 else pack_int4(n)
        return torch.cat([values, as_bytes(scales)])

    def decode(self, wire: Tensor, numel: int, dtype: torch.dtype) -> Tensor:
        split = self.value_bytes(numel)
        values = wire[:split]
        n = from_bytes(values, torch.int8) if self.bits == 8 else unpack_int4(values, numel)
        return self.dequantize(n, from_bytes(wire[split:], compute_dtype(dtype)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, block_size={self.block_size})"


def pack_int4(n: Tensor) -> Tensor:
    """Two values in [-7, 7] a byte: ``n + 8`` in the low nibble (even index), then the high one."""
    biased = (n.to(torch.int16) + 8).to(torch.uint8)
    if biased.numel() % 2:
        biased = torch.cat([biased, biased.new_full((1,), 8)])  # half a byte of padding: decodes to 0, dropped
    pairs = biased.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: Tensor, numel: int) -> Tensor:
    """The ``numel`` int8 values that :func:`pack_int4` packed."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=1).reshape(-1)[:numel]
