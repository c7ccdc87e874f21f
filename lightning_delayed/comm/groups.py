"""Worker groups: G ranks train as one synchronous replica; the algorithm runs between the replicas.

With ``group_size`` G the N ranks form W = N / G *workers* of G consecutive global ranks
(``docs/scaling.md``). Two kinds of process group carry the traffic:

* the worker's **intra group** (its G ranks, normally one node): DDP all-reduces the gradients over
  it every step, and the shards of every average are all-gathered over it;
* the **cross groups** (rank i of every worker, W ranks each, one per i): the algorithm's averages
  run over them, each on one shard of the tensors.

Worker w = 0 .. W-1, position i = 0 .. G-1; global rank ``r = w * G + i``::

    worker 0: ranks 0 .. G-1        intra group 0 = {0, ..., G-1}
    worker 1: ranks G .. 2G-1       intra group 1 = {G, ..., 2G-1}
    cross group i = {i, G + i, 2G + i, ...}

:class:`ShardedHook` wraps the :class:`~lightning_delayed.comm.communicator.CommHook` that averages
over a cross group (with its compression, so only what crosses workers is compressed): rank i of a
worker averages shard i of each flat bucket with rank i of every other worker, then the worker
all-gathers the shards. Each byte crosses between workers once, whatever G is; the result is the
plain average of the workers' tensors, bit-identical on the G ranks of a worker.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_delayed.comm import stats as comm_stats
from lightning_delayed.comm.buckets import DEFAULT_BUCKET_CAP_MB, plan_buckets, wait_work
from lightning_delayed.comm.communicator import CommHook

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import timedelta

    from lightning_delayed.comm.buckets import Pending

GroupSize = int | Literal["node"]
"""The values of the strategies' ``group_size`` argument."""


def check_group_size(value: object) -> GroupSize:
    """Return ``value`` if it is a valid ``group_size`` (an int >= 1 or ``"node"``), else raise naming it."""
    if value == "node" and isinstance(value, str):
        return "node"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"group_size must be an int >= 1 (ranks per worker) or 'node' (the devices of one node), got {value!r}"
        )
    return value


def resolve_group_size(group_size: GroupSize, world_size: int, devices_per_node: int) -> int:
    """The number of ranks per worker; raises ``ValueError`` unless it divides ``world_size``.

    Every rank computes the same answer from the same launch settings, so a refusal happens on
    every rank, before any collective.
    """
    size = devices_per_node if group_size == "node" else int(group_size)
    if size < 1 or world_size % size != 0:
        shown = f"'node' = {size} devices per node" if group_size == "node" else str(size)
        raise ValueError(
            f"group_size={shown} must divide the world size {world_size} (the ranks form world_size / group_size "
            f"workers of group_size ranks each). Choose a divisor of {world_size}, or change the number of devices "
            "or nodes."
        )
    return size


@dataclass(frozen=True)
class WorkerLayout:
    """Which ranks form which worker (pure arithmetic, no process group).

    Args:
        world_size: N, the number of ranks.
        group_size: G, ranks per worker (divides N).
    """

    world_size: int
    group_size: int

    def __post_init__(self) -> None:
        resolve_group_size(self.group_size, self.world_size, self.group_size)

    @property
    def num_workers(self) -> int:
        return self.world_size // self.group_size

    def worker_of(self, rank: int) -> int:
        return rank // self.group_size

    def position_of(self, rank: int) -> int:
        """Index i of ``rank`` inside its worker: the shard it averages across workers."""
        return rank % self.group_size

    def intra_ranks(self, worker: int) -> list[int]:
        return list(range(worker * self.group_size, (worker + 1) * self.group_size))

    def cross_ranks(self, position: int) -> list[int]:
        return list(range(position, self.world_size, self.group_size))


@dataclass
class WorkerGroups:
    """This rank's process groups (see the module docstring). Build with :meth:`create`.

    Attributes:
        layout: the worker layout.
        rank: this process's global rank.
        intra: the worker's group for DDP's gradient all-reduce and the weight sums (main thread).
        gather: the worker's group for the shard all-gathers (run by :class:`ShardedHook`'s helper
            thread; a group of its own, so its collectives never interleave with DDP's).
        cross: the group of rank ``position`` of every worker (the algorithm's averages).
    """

    layout: WorkerLayout
    rank: int
    intra: dist.ProcessGroup
    gather: dist.ProcessGroup
    cross: dist.ProcessGroup
    _all: list[dist.ProcessGroup] = field(default_factory=list)

    @classmethod
    def create(cls, layout: WorkerLayout, rank: int, backend: str | None, timeout: timedelta | None) -> WorkerGroups:
        """Create every group on every rank, in the same order (``dist.new_group`` is collective)."""
        created: dict[tuple[str, int], dist.ProcessGroup] = {}
        kinds = (
            ("intra", layout.intra_ranks, layout.num_workers),
            ("gather", layout.intra_ranks, layout.num_workers),
            ("cross", layout.cross_ranks, layout.group_size),
        )
        mine: list[dist.ProcessGroup] = []
        for kind, ranks_of, count in kinds:
            for index in range(count):
                ranks = ranks_of(index)
                group = dist.new_group(ranks=ranks, backend=backend, timeout=timeout)
                if rank in ranks:
                    assert isinstance(group, dist.ProcessGroup)
                    created[(kind, index)] = group
                    mine.append(group)
        worker, position = layout.worker_of(rank), layout.position_of(rank)
        return cls(
            layout=layout,
            rank=rank,
            intra=created[("intra", worker)],
            gather=created[("gather", worker)],
            cross=created[("cross", position)],
            _all=mine,
        )

    @property
    def position(self) -> int:
        return self.layout.position_of(self.rank)

    def destroy(self) -> None:
        """Destroy this rank's groups (at teardown)."""
        for group in self._all:
            dist.destroy_process_group(group)
        self._all = []


class _ShardFailed(RuntimeError):
    """The cross-worker average of a shard failed on another rank of this worker."""


@dataclass
class _GatherJob:
    """What the helper thread hands back for one bucket: the gather in flight, and any error of phase 1."""

    outputs: list[Tensor]
    work: Any
    error: BaseException | None


@dataclass
class _ShardedBucket:
    slots: list[int]
    shapes: list[torch.Size]
    numel: int
    job: Future[_GatherJob]


class ShardedPending:
    """A sharded average in flight: ``wait()`` joins the gathers and cuts the flat buckets back into tensors."""

    def __init__(self, num_slots: int, what: str) -> None:
        self.num_slots, self.what = num_slots, what
        self.buckets: list[_ShardedBucket] = []
        self._result: list[Tensor] | None = None

    def wait(self) -> list[Tensor]:
        if self._result is not None:
            return self._result
        result: list[Tensor | None] = [None] * self.num_slots
        for bucket in self.buckets:
            job = bucket.job.result()
            if job.work is not None:
                wait_work(job.work, f"{self.what} (all-gather of the shards inside the worker)")
            if job.error is not None:
                raise job.error
            # The last element of every shard says whether its cross-worker average succeeded, so
            # that every rank of the worker raises when one of them failed (instead of using NaN).
            failed = [i for i, out in enumerate(job.outputs) if float(out[-1]) != 1.0]
            if failed:
                raise _ShardFailed(
                    f"the cross-worker average of the {self.what} failed on the rank(s) at positions {failed} of "
                    "this worker; see that rank's error"
                )
            flat = torch.cat([out[:-1] for out in job.outputs])[: bucket.numel]
            offset = 0
            for slot, shape in zip(bucket.slots, bucket.shapes, strict=True):
                numel = math.prod(shape)
                result[slot] = flat[offset : offset + numel].view(shape)
                offset += numel
        self._result = [t for t in result if t is not None]
        assert len(self._result) == self.num_slots
        return self._result


class ShardedHook(CommHook):
    """Shard-then-gather average over worker groups, wrapping the cross-worker hook ``inner``.

    :meth:`launch` flattens the tensors into buckets (one dtype and device each), cuts every bucket
    into G equal shards (zero-padded to ``ceil(numel / G)``), starts the average of shard i (this
    rank's position in its worker) through ``inner`` over the cross group, and hands a helper
    thread the second phase: wait for that average and start the all-gather of the shards over
    the worker's gather group. Training goes on meanwhile; ``wait()`` blocks only for what is
    still in flight. The helper thread is the only user of the gather group and takes buckets in
    launch order, so every rank issues the gathers in the same order.

    Weighted averages (``weight``) use the worker's weight, the sum of its ranks' weights (one
    blocking scalar all-reduce over the worker's intra group, the fast link).

    Args:
        inner: the hook that averages over the cross group (its ``group`` is set here).
        groups: this rank's :class:`WorkerGroups`.
        bucket_cap_mb: cap of each flat bucket before sharding, in MiB.
    """

    def __init__(self, inner: CommHook, groups: WorkerGroups, bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB) -> None:
        if not isinstance(inner, CommHook):
            raise TypeError(f"inner must be a lightning_delayed.CommHook, got {inner!r}")
        self.inner = inner
        self.groups = groups
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.inner.set_group(groups.cross)
        self._executor: ThreadPoolExecutor | None = None

    def set_group(self, group: dist.ProcessGroup | None) -> None:
        # The groups are the worker groups given at construction; the world group is not used.
        self.group = group

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        if keys is not None and len(keys) != len(tensors):
            raise ValueError(f"keys must name every tensor: got {len(keys)} keys for {len(tensors)} tensors")
        size, position = self.groups.layout.group_size, self.groups.position
        worker_weight = None if weight is None else self._worker_weight(weight)
        pending = ShardedPending(len(tensors), what)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lightning_delayed-gather")
        with torch.no_grad():
            for idx in plan_buckets(tensors, self.bucket_cap_mb):
                flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
                numel = flat.numel()
                shard_len = -(-numel // size)
                if shard_len * size != numel:
                    flat = torch.cat([flat, flat.new_zeros(shard_len * size - numel)])
                shard = flat[position * shard_len : (position + 1) * shard_len].clone()
                # A stable name per shard of a recurring bucket, for error feedback in `inner`.
                shard_keys = None if keys is None else [f"{keys[idx[0]]}..{keys[idx[-1]]}/shard{position}of{size}"]
                cross = self.inner.launch([shard], weight=worker_weight, keys=shard_keys, what=what)
                job = self._executor.submit(self._gather, cross, shard)
                shapes = [tensors[i].shape for i in idx]
                pending.buckets.append(_ShardedBucket(slots=list(idx), shapes=shapes, numel=numel, job=job))
        return pending

    def _worker_weight(self, weight: float) -> float:
        total = torch.tensor([float(weight)], dtype=torch.float64)
        if self.groups.layout.group_size > 1:
            # Main thread, like DDP's all-reduces on this group, so the order is the same on every rank.
            dist.all_reduce(total, group=self.groups.intra)
        return float(total)

    def _gather(self, cross: Pending, shard: Tensor) -> _GatherJob:
        """Helper thread: wait for the cross-worker average of this shard, start the all-gather of the shards."""
        error: BaseException | None = None
        with comm_stats.background():
            try:
                averaged = cross.wait()[0]
                ok = 1.0
            except Exception as e:  # re-raised by wait(); the gather must still run, or the worker hangs
                error, averaged, ok = e, torch.full_like(shard, math.nan), 0.0
        send = torch.cat([averaged.reshape(-1), averaged.new_full((1,), ok)])
        outputs = [torch.empty_like(send) for _ in range(self.groups.layout.group_size)]
        if self.groups.layout.group_size == 1:
            outputs[0].copy_(send)
            return _GatherJob(outputs, None, error)
        comm_stats.record_sent(send.numel() * send.element_size())
        work = dist.all_gather(outputs, send, group=self.groups.gather, async_op=True)
        return _GatherJob(outputs, work, error)

    def close(self) -> None:
        """Stop the helper thread (at teardown), and ``inner``'s if it has one; what is in flight completes first."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        close_inner = getattr(self.inner, "close", None)
        if callable(close_inner):
            close_inner()  # e.g. LowBitHook's helper thread (compression="int8"/"int4")

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))

    def __repr__(self) -> str:
        layout = self.groups.layout
        return (
            f"{type(self).__name__}(inner={self.inner!r}, workers={layout.num_workers}, group_size={layout.group_size})"
        )
