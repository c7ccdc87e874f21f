"""What both front doors (the Trainer strategies and the Fabric glue) share about communication.

* :func:`check_comm_arguments`: the communication arguments every strategy accepts, checked at
  construction time with an error naming the argument, the value and what is allowed.
* :func:`make_communicator`: the :class:`~lightning_delayed.comm.communicator.CommHook` those
  arguments describe, bound to the algorithm's own process group.
* :func:`open_comm_group` / :func:`release_comm_group`: that group's life cycle, one per fit.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from lightning.fabric.utilities import rank_zero_warn

from lightning_delayed._compat import collective_timeout, process_group_backend
from lightning_delayed.comm.communicator import AllReduceHook, CommHook
from lightning_delayed.comm.compression import CompressedHook, check_block_size, check_compression
from lightning_delayed.comm.lowbit import LowBitHook
from lightning_delayed.comm.process_groups import destroy_comm_group, new_comm_group
from lightning_delayed.comm.quantized import DEFAULT_BLOCK_SIZE, QUANTIZED_BITS, BlockQuantizer
from lightning_delayed.core.checks import check_real, positive
from lightning_delayed.strategies.checks import check_timeout

SUPPORTED_BACKENDS = ("gloo", "nccl")


def check_comm_arguments(
    owner: str,
    *,
    bucket_cap_mb: float,
    check_finite: bool,
    compression: str,
    error_feedback: bool,
    comm_hook: CommHook | None,
    process_group_backend: str | None,
    timeout: object,
    block_size: object = DEFAULT_BLOCK_SIZE,
) -> None:
    """Raise a ``ValueError``/``TypeError`` for a communication argument ``owner`` (a class name) cannot take."""
    check_real("bucket_cap_mb", bucket_cap_mb, "a number of MiB > 0", positive)
    check_timeout(timeout)
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    check_compression(compression)
    check_block_size(block_size)
    if block_size != DEFAULT_BLOCK_SIZE and compression not in QUANTIZED_BITS:
        rank_zero_warn(
            f"{owner}: block_size={block_size} is ignored with compression={compression!r}; it sets the scale "
            "blocks of compression='int8'/'int4' only"
        )
    if not isinstance(error_feedback, bool):
        raise ValueError(f"error_feedback must be True or False, got {error_feedback!r}")
    if comm_hook is not None and not isinstance(comm_hook, CommHook):
        raise TypeError(
            f"comm_hook must be a lightning_delayed.CommHook (or None for the default all-reduce), got {comm_hook!r}"
        )
    if isinstance(comm_hook, (CompressedHook, LowBitHook)) and compression != "none":
        raise ValueError(
            f"compression={compression!r} and comm_hook={comm_hook!r} both compress: set compression='none' "
            "or give an uncompressed comm_hook"
        )
    if process_group_backend is not None and process_group_backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"process_group_backend={process_group_backend!r} is not supported by {owner}: "
            f"use one of {SUPPORTED_BACKENDS} (or None for NCCL on GPU, gloo on CPU)"
        )


def make_communicator(
    comm_hook: CommHook | None,
    *,
    bucket_cap_mb: float,
    check_finite: bool,
    compression: str,
    error_feedback: bool,
    group: dist.ProcessGroup | None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> CommHook:
    """``comm_hook`` (or the default bucketed all-reduce), wrapped for ``compression``, on ``group``.

    ``"fp16"``/``"bf16"``: a :class:`CompressedHook` around the hook. ``"int8"``/``"int4"``: a
    :class:`LowBitHook` with a :class:`BlockQuantizer` of ``block_size``; the hook then carries
    the one-off full-precision averages (``keys=None``) only.
    """
    hook = comm_hook if comm_hook is not None else AllReduceHook(bucket_cap_mb, check_finite)
    if compression in QUANTIZED_BITS:
        hook = LowBitHook(BlockQuantizer(QUANTIZED_BITS[compression], block_size), error_feedback, hook, bucket_cap_mb)
    elif compression != "none":
        hook = CompressedHook(hook, compression, error_feedback)  # type: ignore[arg-type]
    hook.set_group(group)
    return hook


def open_comm_group(strategy: Any) -> dist.ProcessGroup | None:
    """The algorithm's own process group (every rank), with the strategy's backend and timeout; ``None`` alone.

    The averages run on a group of their own: Lightning broadcasts a SIGTERM flag on the default
    group before every training batch, and on gloo (and on one NCCL stream) that broadcast, or any
    collective of the user's loop, would wait behind an average in flight, so nothing would overlap.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    return new_comm_group(process_group_backend(strategy), collective_timeout(strategy))


def release_comm_group(group: dist.ProcessGroup | None, communicator: CommHook | None) -> None:
    """Destroy ``group`` and drop the communicator's reference to it (teardown of every fit).

    A group's threads and sockets end only with its last reference, and a trainer (or Fabric) the
    user keeps holds the strategy, its communicator and the algorithm; nothing communicates after
    teardown.
    """
    destroy_comm_group(group)
    if communicator is not None:
        communicator.set_group(None)
