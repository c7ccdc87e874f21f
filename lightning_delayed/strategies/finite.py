"""Refuse to write a checkpoint that holds NaN or Inf weights (``docs/index.md#checkpoints``).

A diverged run must not overwrite the last good checkpoint (``last.ckpt``, a top-k file) with
non-finite weights. :meth:`DelayedStrategy.save_checkpoint
<lightning_delayed.strategies.base.DelayedStrategy.save_checkpoint>` calls
:func:`refuse_non_finite_checkpoint` on every rank, before anything is written. Rank 0 holds the
whole checkpoint (the consensus ``state_dict``, identical on every rank, and every rank's
algorithm state, gathered to it), so it checks and broadcasts its verdict: every rank then raises
the same error together, and no rank is left waiting in a later collective.

Checked: the module's parameters in ``checkpoint["state_dict"]`` (buffers are not: a causal mask
of ``-inf`` is a legitimate buffer) and every floating tensor of the algorithm state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_delayed.comm.buckets import all_finite, communication_errors

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_NAMED = 8
"""How many non-finite entries the error names."""


class NonFiniteCheckpointError(FloatingPointError):
    """A checkpoint was about to be written with NaN or Inf weights or algorithm state."""


def _floating(obj: Any, path: str) -> Iterable[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _floating(value, f"{path}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _floating(value, f"{path}[{i}]")


def non_finite_entries(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the tensors holding NaN or Inf; one fused check when all are finite (the usual case)."""
    named = list(named)
    if not named:
        return []
    with torch.no_grad():
        if all_finite([t for _, t in named]):
            return []
        return [name for name, t in named if not all_finite([t])]


def checkpoint_tensors(
    checkpoint: dict[str, Any], param_names: set[str], algorithm_key: str
) -> list[tuple[str, Tensor]]:
    """The tensors of ``checkpoint`` that must be finite: parameters of the state_dict, the algorithm state."""
    named = [
        (f"state_dict[{name!r}]", t)
        for name, t in checkpoint.get("state_dict", {}).items()
        if name in param_names and isinstance(t, Tensor) and t.is_floating_point()
    ]
    named += list(_floating(checkpoint.get(algorithm_key), algorithm_key))
    return named


def refuse_non_finite_checkpoint(
    checkpoint: dict[str, Any], param_names: set[str], algorithm_key: str, filepath: Any, rank: int
) -> None:
    """Raise :class:`NonFiniteCheckpointError` on every rank if rank 0's checkpoint holds NaN or Inf.

    A collective on the default group when the world has more than one rank: call it on every rank.
    """
    bad = non_finite_entries(checkpoint_tensors(checkpoint, param_names, algorithm_key)) if rank == 0 else []
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        verdict: list[Any] = [bad]
        with communication_errors("checkpoint's finiteness verdict from rank 0", operation="broadcast"):
            dist.broadcast_object_list(verdict, src=0)
        bad = verdict[0]
    if bad:
        named = ", ".join(bad[:MAX_NAMED]) + (f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else "")
        raise NonFiniteCheckpointError(
            f"refusing to write the checkpoint {filepath}: NaN or Inf in {len(bad)} tensor(s): {named}. Training has "
            "diverged, and nothing was written, so an existing file at that path (for example the last good "
            "last.ckpt) is kept. Resume from the last good checkpoint with a lower learning rate or gradient "
            "clipping (Trainer(gradient_clip_val=...))."
        )
