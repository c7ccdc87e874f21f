"""Elastic snapshots: a recent consistent state on every rank's local disk, for torchrun restarts.

Under ``torchrun --nnodes=MIN:MAX --max-restarts=K`` a lost worker restarts every survivor, and
the job resumes from whatever state it can find. :class:`ElasticSnapshots` keeps that state recent:

* **save** every ``every_n_steps`` optimizer steps, at the end of the training batch (a matched
  collective): the Trainer's checkpoint (with the strategy's per-rank states gathered, checksummed,
  as ``Trainer.save_checkpoint`` writes it) goes to *every* rank, and every rank writes it to its
  own ``dirpath`` (a node-local disk: a node that dies takes only its own copy with it). It is
  *committed* (the marker ``step-<k>.ok`` written) only when every rank has written it, so a
  committed snapshot exists on every node that survived the step.
* **resume** at the start of ``fit``, before Lightning restores anything: the ranks exchange the
  committed steps they hold and take the newest one any rank holds; a rank without it (a new or
  restarted node, whose disk is empty) receives it from the lowest rank that has it. Every rank
  then resumes from the same step ``k``, on any number of ranks (the strategy's resize rule,
  ``docs/algorithms/<name>.md``). Used when ``fit`` gets no ``ckpt_path``.

A fault therefore loses at most ``every_n_steps`` optimizer steps (plus the steps of the batch in
progress). Cost: every ``every_n_steps`` steps one gather of the per-rank states to rank 0, one
broadcast of the checkpoint and one write per rank. See ``docs/elastic.md``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_delayed._compat import checkpoint_connector

if TYPE_CHECKING:
    import lightning.pytorch as pl

_COMMITTED = re.compile(r"step-(\d+)\.ok")


def snapshot_path(dirpath: Path, step: int) -> Path:
    """The snapshot of optimizer step ``step`` in ``dirpath``."""
    return dirpath / f"step-{step}.ckpt"


def committed_steps(dirpath: Path) -> list[int]:
    """The steps whose snapshot in ``dirpath`` is committed (its marker and its file exist), oldest first."""
    if not dirpath.is_dir():
        return []
    steps = []
    for entry in dirpath.iterdir():
        match = _COMMITTED.fullmatch(entry.name)
        if match and snapshot_path(dirpath, int(match.group(1))).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _write_atomic(path: Path, data: bytes, rank: int) -> None:
    tmp = path.with_name(f".{path.name}.rank{rank}.tmp")  # ranks sharing a disk never share a temporary
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ElasticSnapshots(Callback):
    """Keep a consistent snapshot every ``every_n_steps`` steps on each rank's disk; resume from the newest.

    Args:
        every_n_steps: ``N >= 1``: a snapshot after every optimizer step ``k`` with ``k % N == 0``. A
            fault loses at most ``N`` steps; smaller ``N`` costs more (one broadcast of the checkpoint
            and one write per rank per snapshot).
        dirpath: a directory on a local disk of each node (created if missing). Use a fresh one per
            run: ``fit`` without ``ckpt_path`` resumes from any committed snapshot in it.
        keep: how many committed snapshots to keep (``>= 1``; older ones are deleted).
    """

    def __init__(self, every_n_steps: int, dirpath: str | os.PathLike[str], keep: int = 2) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(
                f"every_n_steps must be an integer >= 1 (optimizer steps between snapshots), got {every_n_steps!r}"
            )
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1 (committed snapshots kept), got {keep!r}")
        if not isinstance(dirpath, (str, os.PathLike)):
            raise TypeError(f"dirpath must be a path (str or os.PathLike), got {type(dirpath).__name__}: {dirpath!r}")
        self.every_n_steps = every_n_steps
        self.dirpath = Path(dirpath)
        self.keep = keep
        self.resumed_step: int | None = None
        """The step this ``fit`` resumed from (``None``: it started afresh or from the user's ``ckpt_path``)."""
        self._last_saved = -1

    # ------------------------------------------------------------------ resume

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Runs after the process group exists and before Lightning restores the checkpoint.
        self.dirpath.mkdir(parents=True, exist_ok=True)
        rank, world = trainer.global_rank, _world()
        mine = committed_steps(self.dirpath)
        held: list[list[int]] = [mine]
        if world > 1:
            held = [[] for _ in range(world)]
            dist.all_gather_object(held, mine)
        every = [k for steps in held for k in steps]
        self.resumed_step = None
        if not every:
            return
        newest = max(every)
        holders = [r for r, steps in enumerate(held) if newest in steps]
        if len(holders) < world:
            src = holders[0]
            payload: list[Any] = [snapshot_path(self.dirpath, newest).read_bytes() if rank == src else None]
            dist.broadcast_object_list(payload, src=src)
            if newest not in mine:
                _write_atomic(snapshot_path(self.dirpath, newest), payload[0], rank)
                _write_atomic(self.dirpath / f"step-{newest}.ok", b"", rank)
        self.resumed_step = newest
        self._last_saved = newest
        path = str(snapshot_path(self.dirpath, newest))
        connector = checkpoint_connector(trainer)
        original = connector.resume_start

        def resume_start(checkpoint_path: Any = None, weights_only: bool | None = None) -> None:
            connector.resume_start = original  # type: ignore[method-assign]  # once: a later fit looks again
            original(path if checkpoint_path is None else checkpoint_path, weights_only=weights_only)

        connector.resume_start = resume_start  # type: ignore[method-assign]

    # ------------------------------------------------------------------ save

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps != 0 or step == self._last_saved:
            return  # the same decision on every rank: global_step is the same everywhere
        self._last_saved = step
        self.save(trainer, step)

    def save(self, trainer: pl.Trainer, step: int) -> bool:
        """Write and commit the snapshot of ``step`` on every rank (a matched collective); whether it committed."""
        rank, world = trainer.global_rank, _world()
        final = snapshot_path(self.dirpath, step)
        staged = final.with_name(f".{final.name}.rank{rank}.staged")
        trainer.save_checkpoint(staged)  # rank 0 writes it: the strategy's state is gathered there
        ok = True
        try:
            data = staged.read_bytes() if rank == 0 else b""
        except OSError:
            ok, data = False, b""
        if world > 1:
            payload: list[Any] = [data if ok else None]
            dist.broadcast_object_list(payload, src=0)
            ok, data = payload[0] is not None, payload[0] or b""
        try:
            if ok:
                _write_atomic(final, data, rank)
        except OSError as e:
            rank_zero_warn(f"ElasticSnapshots: rank {rank} could not write {final}: {e}")
            ok = False
        finally:
            staged.unlink(missing_ok=True)
        flag = torch.tensor([1 if ok else 0])
        if world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if int(flag.item()) != 1:
            rank_zero_warn(
                f"ElasticSnapshots: the snapshot of step {step} was not written on every rank; not committed"
            )
            return False
        # Committed only now: every rank holds the file, so any survivor can serve it.
        _write_atomic(self.dirpath / f"step-{step}.ok", b"", rank)
        for old in committed_steps(self.dirpath)[: -self.keep]:
            (self.dirpath / f"step-{old}.ok").unlink(missing_ok=True)  # the marker first: never a marker without file
            snapshot_path(self.dirpath, old).unlink(missing_ok=True)
        return True


__all__ = ["ElasticSnapshots", "committed_steps", "snapshot_path"]
