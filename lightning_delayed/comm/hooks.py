"""DDP communication hooks.

:class:`DelayedAllReduceHook` is the hook of the gradient algorithms that hide the gradient
all-reduce behind the next step (OD-SGD). DDP calls it once per bucket, during backward, as soon as
the bucket's gradients are ready. In delayed mode it

1. copies the bucket into a buffer of its own and starts ``all_reduce(async_op=True)`` on the copy,
2. hands DDP the *local* gradient at once (a completed future), so backward never waits,
3. keeps the in-flight reduction, keyed by parameter, until the algorithm takes it
   (:meth:`take_launched`) and waits for it one step later.

In synchronous mode (OD-SGD's warm-up) it is the plain averaging hook.

Why per-parameter slots and not bucket indices: DDP rebuilds its buckets after the first
iteration, so a reduction launched with the old layout is consumed under the new one. Slots are
positions in the module's parameter list, which never change.

This module deliberately has no ``from __future__ import annotations``: DDP checks the hook's
``bucket`` annotation against ``dist.GradBucket`` without evaluating string annotations.
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_delayed.comm.buckets import PendingAverage, _Bucket, launch_flat_all_reduce, world_size_of


class DelayedAllReduceHook:
    """State and hook for one-step-delayed gradient averaging.

    Register with ``ddp.register_comm_hook(state=None, hook=instance.hook)``.

    Args:
        params: the module's parameters in a fixed order (the slots of the result list).
        group: process group to average over (default: the world).
        check_finite: raise when the averaged gradient has NaN or Inf.

    Attributes:
        delayed: ``True`` launches and returns the local gradient; ``False`` averages synchronously.
        calls: number of buckets the hook has handled (tests use it to prove the hook is attached).
    """

    def __init__(
        self, params: Sequence[Tensor], group: dist.ProcessGroup | None = None, check_finite: bool = True
    ) -> None:
        self._slot_of = {id(p): i for i, p in enumerate(params)}
        self._num_slots = len(params)
        self.group = group
        self.check_finite = check_finite
        self.delayed = False
        self.calls = 0
        self._launched: PendingAverage | None = None

    def _new_pending(self) -> PendingAverage:
        return PendingAverage(
            num_slots=self._num_slots,
            world_size=world_size_of(self.group),
            check_finite=self.check_finite,
            what="gradients",
        )

    def hook(self, state: Any, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:  # type: ignore[name-defined]
        self.calls += 1
        buffer = bucket.buffer()
        if not self.delayed:
            world = world_size_of(self.group)
            work = launch_flat_all_reduce(buffer, self.group)
            if work is None:
                done: torch.futures.Future[Tensor] = torch.futures.Future()
                done.set_result(buffer)
                return done
            averaged: torch.futures.Future[Tensor] = work.get_future().then(lambda fut: fut.value()[0].div_(world))
            return averaged

        params = bucket.parameters()
        # The bucket buffer is reused by DDP on the next backward, so reduce a copy of it.
        flat = buffer.detach().clone()
        slots = [self._slot_of[id(p)] for p in params]
        shapes = [p.shape for p in params]
        if self._launched is None:
            self._launched = self._new_pending()
        self._launched.add_bucket(
            _Bucket(flat=flat, slots=slots, shapes=shapes, work=launch_flat_all_reduce(flat, self.group))
        )
        local: torch.futures.Future[Tensor] = torch.futures.Future()
        local.set_result(buffer)
        return local

    def take_launched(self) -> PendingAverage | None:
        """Everything launched since the last call, as one pending average over all slots."""
        launched, self._launched = self._launched, None
        return launched


class LocalGradientHook:
    """DDP hook of the model-averaging strategies: no gradient is ever communicated.

    Each rank steps on its own gradient, so the hook hands DDP the local bucket buffer at once in
    a completed future, with no collective. (With a custom hook DDP does not pre-divide the
    gradient by the world size, so ``p.grad`` is exactly the rank's own gradient.)

    Attributes:
        calls: number of buckets handled (tests use it to prove the hook is attached).
    """

    def __init__(self) -> None:
        self.calls = 0

    def hook(self, state: Any, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:  # type: ignore[name-defined]
        self.calls += 1
        local: torch.futures.Future[Tensor] = torch.futures.Future()
        local.set_result(bucket.buffer())
        return local
