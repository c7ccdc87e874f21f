"""Rank-side code of the dead-peer tests: the last rank dies, then a Lightning collective notices first."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_delayed
from tests.helpers.models import RegressionModule, trainer, world_size

STEP = 2  # diloco with H = 4: nothing of the algorithm is in flight after step 2


def _barrier(trainer: L.Trainer, module: L.LightningModule) -> None:
    trainer.strategy.barrier("probe")


def _broadcast(trainer: L.Trainer, module: L.LightningModule) -> None:
    trainer.strategy.broadcast({"probe": 1}, src=0)


def _log_sync_dist(trainer: L.Trainer, module: L.LightningModule) -> None:
    module.log("probe", torch.tensor(1.0, dtype=torch.float64), sync_dist=True)  # strategy.reduce, now


def _all_gather(trainer: L.Trainer, module: L.LightningModule) -> None:
    module.all_gather(torch.ones(3))


COLLECTIVES = {"barrier": _barrier, "broadcast": _broadcast, "reduce": _log_sync_dist, "all_gather": _all_gather}


class _LastRankDies(L.Callback):
    """After step ``STEP`` the last rank exits without a word; the others then run ``collective``."""

    def __init__(self, collective: str | None) -> None:
        self.collective = collective

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step != STEP:
            return
        if trainer.global_rank == world_size() - 1:
            os._exit(3)  # like a SIGKILL: no exception, no goodbye to the process group
        if self.collective is not None:
            COLLECTIVES[self.collective](trainer, pl_module)


def peer_dies_before(collective: str, tmp: str) -> None:
    """``collective``, or ``"checkpoint"``: ModelCheckpoint's file-exists reduce at step ``STEP``."""
    callbacks: list[L.Callback] = [_LastRankDies(None if collective == "checkpoint" else collective)]
    if collective == "checkpoint":  # Lightning runs ModelCheckpoint after the user's callbacks
        callbacks.append(ModelCheckpoint(dirpath=tmp, every_n_train_steps=STEP, save_top_k=-1))
    module = RegressionModule(n_batches=20, opt={"kind": "sgd", "lr": 0.01})
    strategy = lightning_delayed.DiLoCoStrategy(sync_every=4)
    trainer(strategy, max_steps=10, callbacks=callbacks, enable_checkpointing=collective == "checkpoint").fit(module)
