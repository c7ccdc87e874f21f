"""DDP communication hooks: where DDP's gradient buckets meet a :class:`~lightning_delayed.comm.communicator.CommHook`.

:class:`DDPGradientHook` is the hook of the gradient algorithms (``odsgd``, ``ssgd`` with a custom
hook or compression, Pipe-SGD in ``examples/custom_algorithm.py``). DDP calls it once per bucket,
during backward, as soon as the bucket's gradients are ready. It

1. starts the average of the bucket's gradients through the ``CommHook`` (which copies them),
2. hands DDP the *local* gradient at once (a completed future), so backward never waits and
   ``p.grad`` holds this rank's own gradient after backward,
3. keeps the in-flight average, keyed by parameter, until the algorithm takes it
   (:meth:`DDPGradientHook.take_launched`). The algorithm decides when to wait: OD-SGD's warm-up
   and synchronous SGD right after backward, OD-SGD's delayed steps one step later.

Why per-parameter slots and not bucket indices: DDP rebuilds its buckets after the first
iteration, so a reduction launched with the old layout is consumed under the new one. Slots are
positions in the module's parameter list, which never change; so are the error-feedback keys
``"grad/<slot>"`` the hook passes to the ``CommHook``.

This module deliberately has no ``from __future__ import annotations``: DDP checks the hook's
``bucket`` annotation against ``dist.GradBucket`` without evaluating string annotations.
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_delayed.comm.buckets import Pending
from lightning_delayed.comm.communicator import AllReduceHook, CommHook


class SlottedPending:
    """Several pending averages, each covering some slots, gathered into one result list by slot."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self.parts: list[tuple[list[int], Pending]] = []
        self._result: list[Tensor] | None = None

    def add(self, slots: list[int], pending: Pending) -> None:
        if self._result is not None:
            raise RuntimeError("cannot add to a SlottedPending that was already waited for")
        self.parts.append((slots, pending))

    def wait(self) -> list[Tensor]:
        if self._result is not None:
            return self._result
        result: list[Tensor | None] = [None] * self.num_slots
        # Wait in launch order: the collectives complete in that order anyway.
        for slots, pending in self.parts:
            for slot, tensor in zip(slots, pending.wait(), strict=True):
                result[slot] = tensor
        missing = [i for i, t in enumerate(result) if t is None]
        if missing:
            raise RuntimeError(
                f"no gradient average was launched for the parameters at positions {missing}: DDP never reduced "
                f"their bucket. {_UNUSED_CAUSE}"
            )
        self._result = [t for t in result if t is not None]
        return self._result


_UNUSED_CAUSE = (
    "DDP reduces a gradient bucket only once every parameter in it has a gradient, so this happens when some "
    "trainable parameters were not used to compute the loss. If that is intentional, pass "
    "find_unused_parameters=True to the strategy (for example ODSGDStrategy(find_unused_parameters=True)); "
    "otherwise remove the unused parameters from the module or freeze them (requires_grad=False)."
)


def no_launch_error(who: str, params: Sequence[Tensor]) -> RuntimeError:
    """The error for a backward that launched no gradient average, naming its likely cause.

    Args:
        who: the algorithm, as the message should name it ("OD-SGD").
        params: the parameters whose gradients the hook should have averaged, in slot order.
    """
    missing = [i for i, p in enumerate(params) if p.grad is None]
    if missing:
        shapes = [tuple(params[i].shape) for i in missing]
        return RuntimeError(
            f"{who} found no gradient average launched during this step's backward: the trainable parameters at "
            f"positions {missing} (shapes {shapes}) of the module got no gradient. {_UNUSED_CAUSE}"
        )
    return RuntimeError(
        f"{who} found no gradient average launched during this step's backward although every parameter has a "
        "gradient: the DDP communication hook is not attached, or backward did not run through "
        "DistributedDataParallel"
    )


class DDPGradientHook:
    """DDP communication hook that launches gradient averages through a :class:`CommHook`.

    Register with ``ddp.register_comm_hook(state=None, hook=instance.hook)`` (the strategies do it
    on every device). After backward, :meth:`take_launched` returns the mean gradient of every
    parameter, in flight.

    Args:
        params: the module's trainable parameters in a fixed order (the slots of the result list).
        comm: the communication (default: :class:`AllReduceHook`).

    Attributes:
        calls: number of buckets the hook has handled (tests use it to prove the hook is attached).
    """

    def __init__(self, params: Sequence[Tensor], comm: CommHook | None = None) -> None:
        self._slot_of = {id(p): i for i, p in enumerate(params)}
        self._num_slots = len(params)
        self.comm: CommHook = comm if comm is not None else AllReduceHook()
        self.calls = 0
        self._launched: SlottedPending | None = None

    def hook(self, state: Any, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:  # type: ignore[name-defined]
        self.calls += 1
        slots = [self._slot_of[id(p)] for p in bucket.parameters()]
        # The gradients are views into DDP's bucket buffer, which DDP reuses: the CommHook copies them.
        pending = self.comm.launch(bucket.gradients(), keys=[f"grad/{s}" for s in slots], what="gradients")
        if self._launched is None:
            self._launched = SlottedPending(self._num_slots)
        self._launched.add(slots, pending)
        local: torch.futures.Future[Tensor] = torch.futures.Future()
        local.set_result(bucket.buffer())
        return local

    def take_launched(self) -> SlottedPending | None:
        """Everything launched since the last call, as one pending average over all parameters."""
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
