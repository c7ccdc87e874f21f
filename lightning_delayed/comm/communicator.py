"""The communication interface every algorithm talks to: :class:`CommHook`.

A :class:`CommHook` averages a list of tensors over the ranks *asynchronously*: :meth:`CommHook.launch`
starts the average and returns a :class:`~lightning_delayed.comm.buckets.Pending` whose ``wait()``
gives the averages back. Both families use it:

* gradient algorithms (``odsgd``, ``ssgd`` with a hook or compression, your own): the DDP
  communication hook :class:`~lightning_delayed.comm.hooks.DDPGradientHook` calls ``launch`` once
  per DDP gradient bucket during backward, with keys ``"grad/<parameter index>"``;
* model-averaging algorithms (``local_sgd``, ``dasgd``, ``cocodsgd``, ``overlap_local_sgd``):
  :class:`~lightning_delayed.core.averaging.AveragingAlgorithm` calls ``launch`` at every
  synchronisation point with keys ``"model/<tensor index>"``, and with ``keys=None`` for the one-off
  averages (validation consensus, final average).

:class:`AllReduceHook` is the default: bucketed ``all_reduce(async_op=True)`` of private copies.
:class:`~lightning_delayed.comm.compression.CompressedHook` wraps any hook with fp16/bf16 wire
compression and error feedback; :class:`~lightning_delayed.comm.lowbit.LowBitHook` averages
int8/int4 (or any :class:`~lightning_delayed.comm.quantized.ChunkCompressor`'s) chunks through a
reduce-scatter and an all-gather. A custom hook subclasses :class:`CommHook` (or wraps another one);
give it typed ``__init__`` arguments and LightningCLI can build it from ``class_path``/``init_args``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from math import inf
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch import Tensor

from lightning_delayed.comm.buckets import DEFAULT_BUCKET_CAP_MB, Pending, launch_average

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch.distributed as dist
    from torch import Tensor


class CommHook(ABC):
    """How an algorithm averages tensors over the ranks. Subclass it to change the communication.

    Contract of :meth:`launch` (every implementation must keep it; the algorithms rely on it):

    * **Asynchronous.** It starts the average and returns at once; the algorithm calls
      ``wait()`` on the result exactly when its rule consumes the average (one step or one period
      later for the delayed algorithms).
    * **Copies.** It communicates private copies: the caller may change the tensors it passed as
      soon as ``launch`` returns (the optimizer keeps stepping them, DDP reuses its bucket buffers).
    * **Same order on every rank.** Every rank calls ``launch`` with tensors of the same shapes and
      dtypes in the same order; collectives must be issued in that order too.
    * **Result.** ``wait()`` returns one tensor per input, same shape, dtype and device, holding the
      average over the ranks (``sum_i w_i t_i / sum_i w_i`` when ``weight`` is given). It may be
      called several times and must return the same tensors. The caller may keep and modify them.

    Per-rank state (for example error-feedback residuals) goes into :meth:`state_dict`; the
    strategy stores it in checkpoints, one entry per rank, and restores it on resume.

    Attributes:
        group: the process group to communicate over, set by the strategy with :meth:`set_group`
            before the first launch (``None``: the world group). The strategies give their hooks
            a group of their own, so that Lightning's collectives on the default group (it
            broadcasts a SIGTERM flag before every training batch) never queue behind an average
            in flight: on gloo (and on one NCCL stream) the collectives of one group run in order.
    """

    group: dist.ProcessGroup | None = None

    def set_group(self, group: dist.ProcessGroup | None) -> None:
        """Communicate over ``group``. Wrapping hooks must pass it on to the hooks they wrap."""
        self.group = group

    @abstractmethod
    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        """Start averaging ``tensors`` over the ranks; return the average in flight.

        Called by the algorithms during training: by the DDP gradient hook once per DDP bucket
        while backward runs, by the model-averaging rules at their synchronisation points.

        Args:
            tensors: what to average. Never modify them; copy what you send.
            weight: this rank's weight for a weighted average (``None``: uniform mean).
            keys: one stable name per tensor when the launch is part of a recurring stream
                (``"grad/3"``: parameter 3's gradient, every step; ``"model/0"``: the first
                model tensor, every synchronisation). Hooks with per-tensor state (error
                feedback) key it by these names. ``None`` marks a one-off average (validation
                consensus, final average) that must not touch such state.
            what: what is averaged ("gradients", "parameters"), for error messages.
        """

    def state_dict(self) -> dict[str, Any]:
        """This rank's hook state for checkpoints (default: none). Called when a checkpoint is saved."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook, empty by design
        """Restore :meth:`state_dict` of this rank (called on resume, before the first step)."""


class AllReduceHook(CommHook):
    """The default hook: bucketed asynchronous all-reduce of private copies (SUM, then divide).

    Tensors are copied into flat buckets of one dtype and device (at most ``bucket_cap_mb`` MiB
    each) and one ``all_reduce(async_op=True)`` per bucket is started over :attr:`group`
    (see :func:`~lightning_delayed.comm.buckets.launch_average`). Averages are exact: the sum of
    the same contributions divided by the world size, identical on every rank.

    Args:
        bucket_cap_mb: bucket cap in MiB (DDP's default, 25). A strategy built without a
            ``comm_hook`` creates this hook with its own ``bucket_cap_mb``.
        check_finite: raise :class:`~lightning_delayed.comm.buckets.NonFiniteReductionError`
            when an average contains NaN or Inf.
    """

    def __init__(self, bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, check_finite: bool = True) -> None:
        # `not 0 < x < inf` also refuses NaN, which would otherwise fail at the first launch.
        number = isinstance(bucket_cap_mb, (int, float)) and not isinstance(bucket_cap_mb, bool)
        if not number or not 0 < bucket_cap_mb < inf:
            raise ValueError(
                f"bucket_cap_mb must be a number of MiB > 0, got {bucket_cap_mb!r} (NaN and infinity are refused)"
            )
        if not isinstance(check_finite, bool):
            raise ValueError(f"check_finite must be True or False, got {check_finite!r}")
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.check_finite = check_finite

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        return launch_average(
            tensors,
            group=self.group,
            bucket_cap_mb=self.bucket_cap_mb,
            weight=weight,
            check_finite=self.check_finite,
            what=what,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bucket_cap_mb={self.bucket_cap_mb}, check_finite={self.check_finite})"
