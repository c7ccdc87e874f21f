"""Worker groups in the Lightning glue: ``group_size`` for the model-averaging family.

:class:`GroupedStrategy` is the base of the model-averaging strategies (``local_sgd``, ``dasgd``,
``cocodsgd``, ``overlap_local_sgd``, ``diloco``, ``streaming_diloco``). With ``group_size`` G > 1
(``docs/scaling.md``) it

* creates the worker groups (:class:`~lightning_delayed.comm.groups.WorkerGroups`) on every rank,
  in the same order, with the strategy's backend and timeout, and destroys them at teardown;
* gives DDP the worker's intra group as ``process_group``: DDP all-reduces the gradients inside the
  worker every step, overlapping backward (no ``LocalGradientHook``);
* broadcasts rank 0's module to every rank before DDP wraps it (DDP alone would broadcast only
  inside each worker), and after every backward the worker's first rank's floating-point buffers to
  its other ranks (DDP's buffer rule, at the point where the algorithm reads them), so the ranks of
  a worker hold bit-identical weights and buffers at every step;
* wraps the communicator in a :class:`~lightning_delayed.comm.groups.ShardedHook`, so every
  average the algorithm makes is a shard-then-gather average over the workers;
* stores G in checkpoints and refuses to resume with another G or (G > 1) another world size.

The algorithms never learn about it. G = 1 changes nothing at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from typing_extensions import override

from lightning_delayed._compat import collective_timeout, ddp_kwargs, process_group_backend
from lightning_delayed.comm.groups import GroupSize, ShardedHook, WorkerGroups, WorkerLayout, check_group_size
from lightning_delayed.comm.groups import resolve_group_size as _resolve
from lightning_delayed.strategies.base import DelayedStrategy

if TYPE_CHECKING:
    from torch import Tensor

    from lightning_delayed.comm.communicator import CommHook

GROUP_SIZE_KEY = "group_size"


def refuse_group_size(strategy_cls: type, kwargs: dict[str, Any], why: str) -> None:
    """Pop ``group_size`` from ``kwargs``; raise ``ValueError`` unless it is 1 (strategies without worker groups)."""
    if GROUP_SIZE_KEY not in kwargs:
        return
    value = kwargs.pop(GROUP_SIZE_KEY)
    if value == 1 and not isinstance(value, bool):
        return
    try:
        check_group_size(value)
    except ValueError as invalid:
        # An invalid value is named as such first: "does not support group_size=0" reads as a feature limit.
        raise ValueError(
            f"{strategy_cls.__name__}: {invalid}; {strategy_cls.__name__} takes only group_size=1 (the default): "
            f"{why}"
        ) from None
    raise ValueError(
        f"{strategy_cls.__name__} does not support group_size={value!r}: {why} Worker groups are available for "
        "local_sgd, dasgd, cocodsgd, overlap_local_sgd, diloco and streaming_diloco (docs/scaling.md)."
    )


class GroupedStrategy(DelayedStrategy):
    """A :class:`DelayedStrategy` whose ranks may form workers of ``group_size`` ranks (not registered itself).

    Args:
        group_size: G, ranks per worker: an int >= 1 (default 1: every rank is a worker) or
            ``"node"`` (the devices of one node). Must divide the world size (checked at set-up,
            on every rank). See ``docs/scaling.md``.
        **kwargs: :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments.
    """

    def __init__(self, *, group_size: GroupSize = 1, **kwargs: Any) -> None:
        check_group_size(group_size)
        if group_size != 1 and kwargs.get("process_group") is not None:
            raise ValueError(
                f"process_group={kwargs['process_group']!r} and group_size={group_size!r} both choose DDP's "
                "process group: with worker groups DDP runs on each worker's own group. Remove process_group."
            )
        super().__init__(**kwargs)
        self.group_size: GroupSize = group_size
        self.worker_groups: WorkerGroups | None = None

    @property
    def resolved_group_size(self) -> int:
        """G as an int (``"node"`` resolved): 1 until set-up."""
        return 1 if self.worker_groups is None else self.worker_groups.layout.group_size

    @property
    def grouped(self) -> bool:
        """Whether this fit runs with worker groups (G > 1)."""
        return self.worker_groups is not None

    # ------------------------------------------------------------------ set-up

    @override
    def setup_distributed(self) -> None:
        # Before the process group exists: every rank refuses alike, and no collective is left waiting.
        size = _resolve(self.group_size, self.num_nodes * self.num_processes, self.num_processes)
        super().setup_distributed()
        if size == 1:
            return  # today's behaviour, bit for bit
        layout = WorkerLayout(dist.get_world_size(), size)
        self.worker_groups = WorkerGroups.create(
            layout, dist.get_rank(), process_group_backend(self), collective_timeout(self)
        )
        ddp_kwargs(self)["process_group"] = self.worker_groups.intra

    @override
    def build_communicator(self) -> CommHook:
        hook = super().build_communicator()
        if self.worker_groups is None:
            return hook
        return ShardedHook(hook, self.worker_groups, self.bucket_cap_mb)

    def local_gradients(self) -> bool:
        """Whether the DDP hook must hand back each rank's own gradient (G = 1) or DDP averages over the worker."""
        return self.worker_groups is None

    @override
    def configure_ddp(self) -> None:
        if self.worker_groups is not None and self.model is not None:
            # DDP broadcasts its module only inside its (worker) group; x0 must be the same everywhere.
            with torch.no_grad():
                for tensor in self.model.state_dict().values():
                    dist.broadcast(tensor, src=0, group=self.comm_group)
        super().configure_ddp()

    @override
    def post_backward(self, closure_loss: Tensor) -> None:
        super().post_backward(closure_loss)
        if self.worker_groups is None or self.lightning_module is None:
            return
        first = self.worker_groups.layout.intra_ranks(self.worker_groups.layout.worker_of(self.global_rank))[0]
        buffers = [b for b in self.lightning_module.buffers() if b.is_floating_point()]
        broadcast_coalesced(buffers, first, self.worker_groups.intra)

    @override
    def teardown(self) -> None:
        communicator = self.communicator
        super().teardown()
        if isinstance(communicator, ShardedHook):
            communicator.close()
        if self.worker_groups is not None:
            if dist.is_initialized():
                self.worker_groups.destroy()
            self.worker_groups = None
            ddp_kwargs(self).pop("process_group", None)

    # ------------------------------------------------------------------ checkpoints

    @override
    def _algorithm_checkpoint(self) -> dict[str, Any]:
        saved = super()._algorithm_checkpoint()
        saved[GROUP_SIZE_KEY] = self.resolved_group_size
        return saved

    @override
    def _load_algorithm_state(self, saved: dict[str, Any]) -> None:
        # The checkpoint is the same file on every rank, so every rank refuses alike.
        old_size, new_size = int(saved.get(GROUP_SIZE_KEY, 1)), self.resolved_group_size
        old_world = saved.get("world_size")
        new_world = dist.get_world_size() if dist.is_initialized() else 1
        if old_size != new_size or (max(old_size, new_size) > 1 and old_world != new_world):
            raise ValueError(
                f"cannot resume: the checkpoint was written by {old_world} ranks with group_size={old_size} "
                f"({_workers(old_world, old_size)}), and this run has {new_world} ranks with group_size={new_size} "
                f"({_workers(new_world, new_size)}). Resuming with worker groups needs the same number of ranks and "
                "the same group_size."
            )
        super()._load_algorithm_state(saved)


def broadcast_coalesced(tensors: list[Tensor], src: int, group: dist.ProcessGroup | None) -> None:
    """Broadcast ``tensors`` from ``src`` in place: one collective per dtype and device, not one per tensor.

    Every rank must pass tensors of the same shapes, dtypes and devices in the same order. A broadcast
    copies bits, so the result is exactly that of broadcasting each tensor on its own.
    """
    by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    with torch.no_grad():
        for same in by_kind.values():
            if len(same) == 1:
                dist.broadcast(same[0], src=src, group=group)
                continue
            flat = torch.cat([t.reshape(-1) for t in same])
            dist.broadcast(flat, src=src, group=group)
            offset = 0
            for t in same:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def _workers(world: object, size: int) -> str:
    return f"{world // size} workers" if isinstance(world, int) and size > 0 else "unknown workers"
