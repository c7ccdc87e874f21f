"""Plain-loop reference of the low-bit reduction (docs/algorithms/index.md, "Low-bit reductions").

Written from the rule, not from the package: every rank all-gathers every rank's ``u`` at full
precision and computes every rank's rounding and every owner's mean itself, element by element of
the rule, with the residuals carried by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

BITS = {"int8": 8, "int4": 4}
"""Bits per element of the low-bit ``compression`` names."""


def ref_quantize(z: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """deq(q(z)) block by block, written out: s = max|z_b| / qmax, n = round-half-even(z / s) clamped, 0 if s = 0."""
    qmax = 2 ** (bits - 1) - 1
    out = torch.empty_like(z)
    for start in range(0, z.numel(), block):
        zb = z[start : start + block]
        s = zb.abs().max() / qmax
        if s == 0:
            out[start : start + block] = 0.0
            continue
        n = torch.round(zb / s).clamp(-qmax, qmax)
        out[start : start + block] = n * s
    return out


def reference_rounds(
    inputs: list[list[list[torch.Tensor]]],
    key_order: list[int],
    roundtrip: Callable[[torch.Tensor], torch.Tensor],
    feedback: bool,
) -> dict[str, Any]:
    """The rule over rounds, from every rank's inputs: ``inputs[step][rank]`` is that rank's tensors.

    ``roundtrip(z)`` is ``deq(q(z))`` of one chunk. Returns ``means`` (the flat mean of every
    step), ``sent[step][rank]`` (the flat ``deq(q(u_j))`` of that rank's chunks) and
    ``meant[step][rank]`` (its ``u = v + e``), all in the sorted-key order ``key_order``.
    """
    ranks = len(inputs[0])
    e: list[torch.Tensor | None] = [None] * ranks
    f: list[torch.Tensor | None] = [None] * ranks
    means, sent_log, meant_log = [], [], []
    for step in inputs:
        sent, meant = [], []
        for r, tensors in enumerate(step):
            wide = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
            v = torch.cat([tensors[i].reshape(-1).to(wide) for i in key_order])
            u = v if e[r] is None else v + e[r]
            chunks = [roundtrip(c) for c in torch.tensor_split(u, ranks)]
            sent.append(chunks)
            meant.append(u)
            if feedback:
                e[r] = u - torch.cat(chunks)
        owned = []
        for j in range(ranks):
            acc = sent[0][j]
            for r in range(1, ranks):
                acc = acc + sent[r][j]
            m = acc / ranks
            if f[j] is not None:
                m = m + f[j]
            q = roundtrip(m)
            if feedback:
                f[j] = m - q
            owned.append(q)
        means.append(torch.cat(owned))
        sent_log.append([torch.cat(chunks) for chunks in sent])
        meant_log.append(meant)
    return {"means": means, "sent": sent_log, "meant": meant_log}


class LowBitReference:
    """The low-bit mean of ``bits`` / ``block`` with both residuals, on the default process group.

    ``e`` is kept per key (this rank's own send), ``f`` per set of keys launched together (every
    owner's, identical on every rank since every rank computes it).
    """

    def __init__(self, bits: int, block: int, error_feedback: bool = True) -> None:
        self.bits, self.block, self.error_feedback = bits, block, error_feedback
        self.e: dict[str, torch.Tensor] = {}
        self.f: dict[tuple[str, ...], list[torch.Tensor]] = {}

    def mean(self, tensors: list[torch.Tensor], keys: list[str]) -> list[torch.Tensor]:
        ranks = dist.get_world_size() if dist.is_initialized() else 1
        order = sorted(range(len(tensors)), key=lambda i: keys[i])
        wide = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
        parts = []
        for i in order:
            part = tensors[i].detach().reshape(-1).to(wide)
            if self.error_feedback and keys[i] in self.e:
                part = part + self.e[keys[i]]
            parts.append(part)
        u = torch.cat(parts)
        everyone = [torch.empty_like(u) for _ in range(ranks)]
        if ranks > 1:
            dist.all_gather(everyone, u)
        else:
            everyone = [u]
        sent = [[ref_quantize(c, self.bits, self.block) for c in torch.tensor_split(ur, ranks)] for ur in everyone]
        me = dist.get_rank() if ranks > 1 else 0
        if self.error_feedback:
            e = u - torch.cat(sent[me])
            offset = 0
            for i in order:
                n = tensors[i].numel()
                self.e[keys[i]] = e[offset : offset + n].clone()
                offset += n
        name = tuple(sorted(keys))
        f = self.f.get(name)
        owned, new_f = [], []
        for j in range(ranks):
            acc = sent[0][j]
            for r in range(1, ranks):
                acc = acc + sent[r][j]
            m = acc / ranks
            if self.error_feedback and f is not None:
                m = m + f[j]
            q = ref_quantize(m, self.bits, self.block)
            new_f.append(m - q)
            owned.append(q)
        if self.error_feedback:
            self.f[name] = new_f
        flat = torch.cat(owned)
        out: list[torch.Tensor | None] = [None] * len(tensors)
        offset = 0
        for i in order:
            n = tensors[i].numel()
            out[i] = flat[offset : offset + n].view(tensors[i].shape).to(tensors[i].dtype)
            offset += n
        return [t for t in out if t is not None]


def lowbit_wire_bytes(numel: int, ranks: int, rank: int, bits: int, block: int, scale_bytes: int) -> int:
    """Bytes one rank sends for one low-bit call of ``numel`` elements (one bucket).

    Phase 1: a flag byte and the compressed chunk j for every other rank j; phase 2: its own
    chunk of the mean, to every other rank. A chunk of n elements is n * bits / 8 bytes (rounded
    up) plus one scale per block.
    """
    sizes = [c.numel() for c in torch.tensor_split(torch.empty(numel), ranks)]

    def chunk(n: int) -> int:
        return -(-n * bits // 8) + -(-n // block) * scale_bytes

    first = sum(1 + chunk(n) for j, n in enumerate(sizes) if j != rank)
    second = (ranks - 1) * chunk(sizes[rank])
    return first + second
