r"""The shared piece of the model-averaging family (Local SGD, DaSGD, CoCoD-SGD, Overlap Local-SGD).

What is averaged (the "model state" ``x``): the module's trainable parameters plus, when
``average_buffers=True``, its floating-point buffers (BatchNorm running statistics). Integer
buffers (``num_batches_tracked``) are never averaged.

Every average is of a *copy*: :meth:`AveragingAlgorithm.launch` hands the tensors to a
:class:`~lightning_delayed.comm.communicator.CommHook` (default: bucketed asynchronous all-reduce)
that copies them and starts the average; the live weights keep training while it is in flight.
The rule's averages form one recurring stream with keys ``"model/<i>"`` (so a compressing hook
can keep error feedback per tensor); the one-off averages of ``finish()`` and ``consensus()``
are launched with ``keys=None``. The merge rules
are small pure functions (:func:`merge_delayed_`, :func:`pull_back_`), shared by the algorithms
and by the single-process tests.

The common parts of the life cycle live in :class:`AveragingAlgorithm`:

* ``finish()``: the algorithm merges whatever is pending by its own rule
  (:meth:`AveragingAlgorithm.finish_pending`), then one *synchronous* average of ``x`` makes all
  ranks bit-identical (the sum of the same contributions, divided by the same number).
* ``consensus()``: a synchronous average of a temporary copy is swapped into ``x`` for validation;
  each rank's own ``x`` comes back afterwards, pending communication is not touched.
* checkpoints: the rank's own ``x`` and its optimizer state are rank-local (Lightning saves only
  rank 0's optimizer), so they go into :meth:`local_state_dict`.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from lightning_delayed.comm.communicator import AllReduceHook
from lightning_delayed.core.base import DelayedAlgorithm, clone_all, copy_all_

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from torch.optim import Optimizer

    from lightning_delayed.comm.buckets import Pending

WEIGHTINGS = ("uniform", "samples")


def check_sync_every(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"sync_every (tau) must be an integer >= 1, got {value!r}")
    return value


def check_average_buffers(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"average_buffers must be True or False, got {value!r}")
    return value


def model_state(module: nn.Module, params: Sequence[Tensor], average_buffers: bool) -> list[Tensor]:
    """``x``: the given parameters, then the module's floating-point buffers if ``average_buffers``."""
    tensors = list(params)
    if average_buffers:
        tensors += [b for b in module.buffers() if b.is_floating_point()]
    return tensors


class ParameterCommunicator(Protocol):
    """What the averaging rules need: :meth:`CommHook.launch <lightning_delayed.comm.communicator.CommHook.launch>`.

    Every :class:`~lightning_delayed.comm.communicator.CommHook` is one; a test may pass a fake.
    """

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending: ...


def merge_delayed_(x: Sequence[Tensor], average: Sequence[Tensor], snapshot: Sequence[Tensor]) -> None:
    """DaSGD's merge ``x <- cbar + (x - s)`` in place: the stale own part is replaced by the average.

    Computed as ``(x - s) + cbar`` in ``x`` itself: the same roundings (addition commutes), no temporary.
    """
    with torch.no_grad():
        for xi, ci, si in zip(x, average, snapshot, strict=True):
            xi.sub_(si).add_(ci)


def pull_back_(x: Sequence[Tensor], anchor: Sequence[Tensor], alpha: float) -> None:
    """Overlap Local-SGD's pull-back ``x <- (1 - alpha) * x + alpha * z`` in place.

    ``(1 - alpha) * x`` is computed in ``x`` itself (same roundings, one temporary instead of three).
    """
    with torch.no_grad():
        for xi, zi in zip(x, anchor, strict=True):
            xi.mul_(1 - alpha).add_(alpha * zi)


class AveragingAlgorithm(DelayedAlgorithm):
    """Base of the model-averaging algorithms: ``x``, the communicator, finish/consensus/checkpoints.

    Args:
        tensors: ``x``, see :func:`model_state` (parameters first, then float buffers).
        optimizer: the user's optimizer; only its rank-local state is checkpointed here.
        comm: the communication (default: :class:`~lightning_delayed.comm.communicator.AllReduceHook`).

    Attributes:
        keys: ``"model/<i>"``, the stable name of each tensor of ``x`` in the rule's averages.
    """

    def __init__(
        self, tensors: Sequence[Tensor], optimizer: Optimizer, comm: ParameterCommunicator | None = None
    ) -> None:
        super().__init__()
        self.tensors = list(tensors)
        self.optimizer = optimizer
        self.comm: ParameterCommunicator = comm if comm is not None else AllReduceHook()
        self.keys = [f"model/{i}" for i in range(len(self.tensors))]

    # -------------------------------------------------------------- helpers for the rules

    def launch(self, send: Sequence[Tensor], weight: float | None = None) -> Pending:
        """Start the rule's ``mean(send)`` (``send`` is shaped like ``x``); the hook copies ``send``."""
        return self.comm.launch(send, weight=weight, keys=self.keys, what="parameters")

    def average_now_(self) -> None:
        """The rule's ``x <- mean(x)``, blocking."""
        copy_all_(self.tensors, self.launch(self.tensors).wait())

    def consensus_average(self) -> list[Tensor]:
        """A one-off, blocking ``mean(x)`` (``keys=None``: no per-stream state such as error feedback)."""
        return self.comm.launch(self.tensors, keys=None, what="parameters").wait()

    def is_sync_step(self, sync_every: int) -> bool:
        return (self.step + 1) % sync_every == 0

    # -------------------------------------------------------------- life cycle

    def finish_pending(self) -> None:
        """Wait for and merge the pending average by the algorithm's own rule (end of training)."""

    def finish(self) -> None:
        self.finish_pending()
        copy_all_(self.tensors, self.consensus_average())

    @contextlib.contextmanager
    def consensus(self) -> Iterator[None]:
        own = clone_all(self.tensors)
        copy_all_(self.tensors, self.consensus_average())
        try:
            yield
        finally:
            copy_all_(self.tensors, own)

    # -------------------------------------------------------------- checkpoints

    def local_state_dict(self) -> dict[str, Any]:
        return {
            "tensors": clone_all(self.tensors),
            # Each rank's momentum / Adam moments are its own; Lightning saves only rank 0's.
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        super().load_state_dict(state, local_state)
        tensors = local_state.get("tensors")
        if tensors is not None:
            copy_all_(self.tensors, self.to_tensors(tensors))
        optimizer_state = local_state.get("optimizer")
        if optimizer_state is not None:
            # Called after Lightning restored rank 0's optimizer state: overwrite it with this rank's.
            self.optimizer.load_state_dict(copy.deepcopy(optimizer_state))

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]], *, rank: int) -> None:
        """Resume on another number of ranks from the consensus of the saved ranks.

        Each saved rank's ``x`` is first merged with what was pending by the algorithm's end-of-fit
        rule (:meth:`merged_local_tensors`); every new rank then starts from the mean of those, with
        the mean of the saved optimizer states (:func:`mean_optimizer_state`), nothing pending, and
        the step counter of the checkpoint, so the schedule (``(k + 1) % tau``) continues.
        """
        merged = [self.merged_local_tensors(state, local) for local in local_states]
        self.step = int(state["step"])
        copy_all_(self.tensors, self.to_tensors(mean_tensors(merged)))
        optimizer_states = [local["optimizer"] for local in local_states if local.get("optimizer") is not None]
        if optimizer_states:
            self.optimizer.load_state_dict(mean_optimizer_state(optimizer_states))

    def merged_local_tensors(self, state: dict[str, Any], local_state: dict[str, Any]) -> list[Tensor]:
        """A saved rank's ``x`` after merging the pending average by the end-of-fit rule (default: as saved)."""
        return clone_all(local_state["tensors"])

    def to_tensors(self, saved: Sequence[Tensor]) -> list[Tensor]:
        """Saved tensors moved to the device and dtype of ``x`` (fresh storage, never aliased)."""
        return [
            t.detach().to(device=x.device, dtype=x.dtype, copy=True) for t, x in zip(saved, self.tensors, strict=True)
        ]

    def maybe_tensors(self, saved: Sequence[Tensor] | None) -> list[Tensor] | None:
        return None if saved is None else self.to_tensors(saved)


def mean_tensors(per_rank: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """The elementwise mean over ranks of same-shaped tensor lists (summed in rank order: deterministic)."""
    out = []
    for ts in zip(*per_rank, strict=True):
        total = ts[0].detach().clone()
        for t in ts[1:]:
            total += t
        out.append(total / len(ts))
    return out


def mean_optimizer_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Optimizer ``state_dict`` whose floating-point state tensors are the mean over ``states``.

    Momentum buffers and Adam moments are averaged (a synchronous run's momentum is that of the
    mean gradient); everything else (step counts, param groups with the scheduled LR) is the first's.
    """
    result = copy.deepcopy(states[0])
    for param_id, entry in result["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.is_floating_point() and value.dim() > 0:
                entry[name] = mean_tensors([[s["state"][param_id][name]] for s in states])[0]
    return result
