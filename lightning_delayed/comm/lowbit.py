r"""The low-bit reduction: a reduce-scatter of compressed chunks, then an all-gather, with error feedback.

A sum of int8 values cannot be all-reduced in int8, and an all-gather of every rank's whole
tensor costs N times the payload. :class:`LowBitHook` averages like this instead
(``docs/algorithms/index.md``, "Low-bit reductions"), on the flat concatenation ``v`` of a bucket,
in float32 (float64 for float64 buckets), with N ranks and a
:class:`~lightning_delayed.comm.quantized.ChunkCompressor` ``q`` / ``deq``::

    u   <- v + e                                  # e: this rank's residual, zero at start
    u_0 .. u_{N-1} <- torch.tensor_split(u, N)    # chunk j is owned by rank j
    all-to-all: rank r sends q(u_j) to rank j
    rank j: m_j <- (sum over r = 0..N-1, in that order, of deq(q(u_j) of rank r)) / N + f_j
            sends q(m_j) to every rank;  f_j <- m_j - deq(q(m_j))      # owner residual
    every rank: mean <- concat over j of deq(q(m_j))
    e   <- u - concat over j of deq(q(u_j))       # error feedback of this rank's own send

With ``error_feedback=False`` ``e`` and ``f`` stay zero. Per rank per call the wire carries
``2 (N - 1) / N`` of the compressed payload: the N - 1 chunks sent to their owners, and this rank's
own chunk to the N - 1 others. :mod:`~lightning_delayed.comm.stats` counts exactly those bytes
(what leaves the rank; the chunk a rank keeps is not counted), so
:class:`~lightning_delayed.CommMonitor` shows the wire as sent.

Choices:

* **Transport.** Both phases are ``torch.distributed.all_to_all_single`` with uneven splits of
  one uint8 buffer (gloo and NCCL both implement it). The second phase is an all-gather in
  effect; ``all_gather_into_tensor`` needs equal sizes, and padding the shorter chunks would send
  bytes that carry nothing.
* **Order.** The chunks of a call are cut from the tensors sorted by key, so a bucket's layout is
  the same whatever order DDP hands its gradients in (DDP reorders its buckets after the first
  step) and a resumed run quantizes the same blocks as an uninterrupted one.
* **One thread.** Every collective of the hook runs on one helper thread, in launch order (the
  second phase needs the first one's result, and a second thread on the same group could
  interleave its collectives differently on different ranks). ``launch`` quantizes on the calling
  thread and returns; training goes on while both phases run.
* **NaN or inf** in ``u`` raises :class:`~lightning_delayed.comm.buckets.NonFiniteReductionError`
  on that rank at ``launch``, before any value is sent: a scale would hide it. The rank still
  takes part in the exchange with a flag byte per chunk (its values are zeros), so that every
  other rank raises at ``wait()`` instead of waiting for it until the timeout.
* **One-off averages** (``keys=None``: validation consensus, final average) go through ``inner``
  at full precision, as with fp16/bf16: their rounding error could never be fed back.
* **Weighted averages** send ``w_r t_r + e``; the owner divides the sum by the sum of weights
  (an extra 8-byte all-reduce) instead of N.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_delayed.comm import stats as comm_stats
from lightning_delayed.comm.buckets import (
    DEFAULT_BUCKET_CAP_MB,
    NonFiniteReductionError,
    all_finite,
    communication_errors,
    plan_buckets,
    world_size_of,
)
from lightning_delayed.comm.communicator import AllReduceHook, CommHook
from lightning_delayed.comm.quantized import ChunkCompressor, compute_dtype

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from lightning_delayed.comm.buckets import Pending

_OK, _BAD = 1, 0


class _FuturePending:
    """A result computed on the hook's thread; ``wait()`` blocks for it and counts the time as blocked."""

    def __init__(self, future: Future[list[Tensor]]) -> None:
        self._future = future
        self._result: list[Tensor] | None = None

    def wait(self) -> list[Tensor]:
        if self._result is None:
            with comm_stats.blocked():
                self._result = self._future.result()
        return self._result


class LowBitHook(CommHook):
    """Averages through a compressor on a reduce-scatter shape (module docstring), with error feedback.

    ``compression="int8"`` / ``"int4"`` builds one around a
    :class:`~lightning_delayed.comm.quantized.BlockQuantizer`; give your own
    :class:`~lightning_delayed.comm.quantized.ChunkCompressor` with
    ``comm_hook=LowBitHook(MyCompressor())``.

    Args:
        compressor: how each chunk travels.
        error_feedback: keep the sender residual ``e`` (per key) and the owner residual ``f`` (per
            bucket) and add them to the next call; both are in :meth:`state_dict`.
        inner: the hook of the one-off full-precision averages (default :class:`AllReduceHook`).
        bucket_cap_mb: cap of each flat bucket, in MiB.

    Attributes:
        residuals: ``e`` per tensor key, in the compute dtype.
        owner_residuals: ``f`` per bucket (this rank's chunk only), in the compute dtype.
    """

    def __init__(
        self,
        compressor: ChunkCompressor,
        error_feedback: bool = True,
        inner: CommHook | None = None,
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
    ) -> None:
        if not isinstance(compressor, ChunkCompressor):
            raise TypeError(f"compressor must be a lightning_delayed.ChunkCompressor, got {compressor!r}")
        if not isinstance(error_feedback, bool):
            raise ValueError(f"error_feedback must be True or False, got {error_feedback!r}")
        if inner is not None and not isinstance(inner, CommHook):
            raise TypeError(f"inner must be a lightning_delayed.CommHook or None, got {inner!r}")
        self.compressor = compressor
        self.error_feedback = error_feedback
        self.inner: CommHook = inner if inner is not None else AllReduceHook(bucket_cap_mb)
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.residuals: dict[str, Tensor] = {}
        self.owner_residuals: dict[str, Tensor] = {}
        self._executor: ThreadPoolExecutor | None = None

    def set_group(self, group: dist.ProcessGroup | None) -> None:
        if group is None:
            self.close()  # the group is being released (teardown): nothing may communicate on it any more
        super().set_group(group)
        self.inner.set_group(group)

    def close(self) -> None:
        """Stop the helper thread; what is in flight completes first."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _submit(self, job: Callable[[], list[Tensor]]) -> Pending:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightning_delayed-lowbit")
        return _FuturePending(self._executor.submit(job))

    def _drain(self) -> None:
        """Wait for every call in flight (their owner residuals are written on the helper thread)."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        if keys is None:  # one-off average: full precision, on the helper thread to keep the order
            copies = [t.detach().clone() for t in tensors]
            return self._submit(lambda: self.inner.launch(copies, weight=weight, keys=None, what=what).wait())
        if len(keys) != len(tensors):
            raise ValueError(f"keys must name every tensor: got {len(keys)} keys for {len(tensors)} tensors")
        for t in tensors:
            if not t.is_floating_point():
                raise TypeError(f"{self!r} averages floating-point tensors only, got one of dtype {t.dtype}")
        order = sorted(range(len(tensors)), key=lambda i: keys[i])
        ranks, me = world_size_of(self.group), dist.get_rank(self.group) if world_size_of(self.group) > 1 else 0
        prepared = []
        with torch.no_grad():
            for planned in plan_buckets([tensors[i] for i in order], self.bucket_cap_mb):
                idx = [order[p] for p in planned]
                prepared.append(self._prepare([tensors[i] for i in idx], [keys[i] for i in idx], idx, weight, ranks))
        finite = all(ok for *_, ok in prepared)
        futures = []
        for idx, name, dtype, sizes, wires, _ in prepared:
            job = self._job(wires, sizes, dtype, name, finite, weight, ranks, me, what)
            futures.append((idx, self._submit(job)))
        if not finite:
            raise NonFiniteReductionError(
                f"the {what} to send contain NaN or Inf on this rank, so no {self.compressor.name} scale can "
                "represent them: lower the learning rate or enable gradient clipping "
                "(Trainer(gradient_clip_val=...)). Nothing was sent; the other ranks raise too."
            )
        return _Gathered(tensors, futures)

    def _prepare(
        self, tensors: list[Tensor], keys: list[str], idx: list[int], weight: float | None, ranks: int
    ) -> tuple[list[int], str, torch.dtype, list[int], list[Tensor], bool]:
        """Quantize one bucket on the calling thread: ``u``, its chunks on the wire, and the new ``e``."""
        dtype = compute_dtype(tensors[0].dtype)
        parts = []
        for t, key in zip(tensors, keys, strict=True):
            part = t.detach().reshape(-1).to(dtype)
            if weight is not None:
                part = part * weight
            residual = self.residuals.get(key) if self.error_feedback else None
            if residual is not None:
                if residual.numel() != part.numel():
                    raise RuntimeError(
                        f"error-feedback key {key!r} was used for a tensor of {residual.numel()} elements and now for "
                        f"one of {part.numel()}: every key must always name the same tensor"
                    )
                part = part + residual.to(part.device)
            parts.append(part)
        u = torch.cat(parts)
        chunks = torch.tensor_split(u, ranks)
        sizes = [c.numel() for c in chunks]
        name = f"{keys[0]}..{keys[-1]}/{len(keys)}"
        if not all_finite([u]):
            return idx, name, dtype, sizes, [], False
        wires, sent = [], []
        for chunk in chunks:
            wire, decoded = self.compressor.roundtrip(chunk)
            wires.append(wire)
            sent.append(decoded)
        if self.error_feedback:
            e = u - torch.cat(sent)
            offset = 0
            for t, key in zip(tensors, keys, strict=True):
                self.residuals[key] = e[offset : offset + t.numel()].clone()
                offset += t.numel()
        return idx, name, dtype, sizes, wires, True

    def _job(
        self,
        wires: list[Tensor],
        sizes: list[int],
        dtype: torch.dtype,
        name: str,
        finite: bool,
        weight: float | None,
        ranks: int,
        me: int,
        what: str,
    ) -> Callable[[], list[Tensor]]:
        """The two phases of one bucket, run on the helper thread; returns the flat mean in ``dtype``."""
        comp, group = self.compressor, self.group
        lengths = [comp.wire_bytes(n, dtype) for n in sizes]

        def exchange(send: Tensor, out_splits: list[int], in_splits: list[int]) -> Tensor:
            recv = torch.empty(sum(out_splits), dtype=torch.uint8, device=send.device)
            if ranks == 1:
                return send.clone()
            comm_stats.record_sent(sum(n for j, n in enumerate(in_splits) if j != me))
            with communication_errors(f"{what} ({comp.name})", "all-to-all"):
                dist.all_to_all_single(recv, send, out_splits, in_splits, group=group)
            return recv

        def run() -> list[Tensor]:
            with comm_stats.background(), torch.no_grad():
                total = float(ranks)
                if weight is not None and ranks > 1:
                    w = torch.tensor([float(weight)], dtype=torch.float64)
                    comm_stats.record_sent(w.element_size())
                    with communication_errors(f"{what} (weight)"):
                        dist.all_reduce(w, group=group)
                    total = float(w)
                elif weight is not None:
                    total = float(weight)
                flag = torch.full((1,), _OK if finite else _BAD, dtype=torch.uint8)
                pieces = wires if finite else [torch.zeros(n, dtype=torch.uint8) for n in lengths]
                send = torch.cat([t for piece in pieces for t in (flag, piece)])
                own = 1 + lengths[me]
                recv = exchange(send, [own] * ranks, [1 + n for n in lengths]).view(ranks, own)
                bad = [r for r in range(ranks) if int(recv[r, 0]) != _OK]
                if bad:
                    raise NonFiniteReductionError(
                        f"the {what} to send contained NaN or Inf on rank(s) {bad} (see that rank's error): "
                        f"nothing was averaged with {comp.name}"
                    )
                acc = comp.decode(recv[0, 1:], sizes[me], dtype)
                for r in range(1, ranks):
                    acc = acc + comp.decode(recv[r, 1:], sizes[me], dtype)
                mean = acc / total
                f = self.owner_residuals.get(name) if self.error_feedback else None
                if f is not None and f.numel() == mean.numel():
                    mean = mean + f.to(mean.device)
                wire, decoded = comp.roundtrip(mean)
                if self.error_feedback:
                    self.owner_residuals[name] = mean - decoded
                gathered = exchange(wire.repeat(ranks), lengths, [lengths[me]] * ranks)
                out, offset = [], 0
                for j, (n, size) in enumerate(zip(lengths, sizes, strict=True)):
                    out.append(decoded if j == me else comp.decode(gathered[offset : offset + n], size, dtype))
                    offset += n
                return [torch.cat(out)]

        return run

    def state_dict(self) -> dict[str, Any]:
        self._drain()
        return {
            "residuals": {k: v.detach().clone() for k, v in self.residuals.items()},
            "owner_residuals": {k: v.detach().clone() for k, v in self.owner_residuals.items()},
            "inner": self.inner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._drain()
        self.residuals = {k: v.detach().clone() for k, v in state.get("residuals", {}).items()}
        self.owner_residuals = {k: v.detach().clone() for k, v in state.get("owner_residuals", {}).items()}
        self.inner.load_state_dict(state.get("inner", {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(compressor={self.compressor!r}, error_feedback={self.error_feedback})"


class _Gathered:
    """The buckets of one keyed launch: their flat means cut back into the caller's tensors, in its order."""

    def __init__(self, tensors: Sequence[Tensor], buckets: list[tuple[list[int], Pending]]) -> None:
        self._shapes = [(t.shape, t.dtype) for t in tensors]
        self._buckets = buckets
        self._result: list[Tensor] | None = None

    def wait(self) -> list[Tensor]:
        if self._result is not None:
            return self._result
        result: list[Tensor | None] = [None] * len(self._shapes)
        for idx, pending in self._buckets:
            flat = pending.wait()[0]
            offset = 0
            for i in idx:
                shape, dtype = self._shapes[i]
                numel = math.prod(shape)
                result[i] = flat[offset : offset + numel].view(shape).to(dtype)
                offset += numel
        self._result = [t for t in result if t is not None]
        return self._result
