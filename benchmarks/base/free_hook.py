"""A communication hook that makes communication free: the benchmarks' way to time an algorithm's own work."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_delayed.comm.buckets import Completed, pack_buckets
from lightning_delayed.comm.communicator import CommHook

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

    from lightning_delayed.comm.buckets import Pending


class FreeHook(CommHook):
    """Communication made free: ``launch`` completes at once with this rank's own values.

    The average of one contribution is that contribution (weighted or not), so the result is what
    an all-reduce would give if every rank held the same values. It returns *copies*: the contract
    lets the caller change its tensors as soon as ``launch`` returns (DDP reuses its bucket buffers,
    the optimizer steps the weights) and modify what ``wait()`` gives back, so handing out the
    inputs themselves would let an algorithm read its own later writes. It copies exactly as
    :class:`~lightning_delayed.comm.communicator.AllReduceHook` does, into the same flat buckets
    (:func:`~lightning_delayed.comm.buckets.pack_buckets`), so the own cost measured with it counts
    the copy the default hook pays, and no other. (A copy per tensor instead, ``t.clone()``, costs
    up to twice as much on a CPU: 62 fresh allocations whose pages fault in on every launch.)

    Benchmark-only: with no collective the ranks drift apart, which no user wants.
    """

    def __init__(self) -> None:
        self.launches = 0

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        self.launches += 1
        result: list[Tensor | None] = [None] * len(tensors)
        for bucket in pack_buckets(tensors):  # unweighted: one contribution is its own (weighted) mean
            for slot, view in bucket.views():
                result[slot] = view
        return Completed([t for t in result if t is not None])
